//! loadgen, step 2: the load. `--concurrency` sender tasks (a `JoinSet` this step owns and
//! joins) post until `--duration` or `--events`; a progress line each second on stderr.
//! Request latencies go into one HDR histogram (microseconds, 3 significant digits).

use hdrhistogram::Histogram;

use super::prepare::Prepared;
use super::*;

/// What the load produced.
pub(super) struct Load {
    /// Request latencies, microseconds.
    pub(super) latencies: Histogram<u64>,
    /// Seconds from the first request to the last answer.
    pub(super) secs: f64,
    /// When the load began and ended.
    pub(super) started: Instant,
    pub(super) ended: Instant,
}

/// A latency histogram from 1 µs to an hour (requests time out long before).
pub(super) fn latency_histogram() -> Histogram<u64> {
    // Constant bounds inside hdrhistogram's range: this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid constant histogram bounds")
}

/// Step 2 of `run`.
pub(super) async fn drive(run: &Prepared) -> Load {
    let shared = &run.shared;
    let start = tokio::time::Instant::now();
    let started = Instant::now();
    let deadline = start + run.args.duration;
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..run.args.concurrency {
        senders.spawn(sender(
            Arc::clone(shared),
            run.endpoint.clone(),
            Arc::clone(&run.args),
            start,
            deadline,
        ));
    }
    let mut latencies = latency_histogram();
    let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last_sent = 0;
    let mut second = 0u64;
    loop {
        tokio::select! {
            joined = senders.join_next() => match joined {
                None => break,
                Some(Ok(h)) => {
                    if let Err(e) = latencies.add(&h) {
                        shared.note_error(format!("latency histogram: {e}"));
                    }
                }
                Some(Err(e)) => shared.note_error(format!("sender task failed: {e}")),
            },
            _ = tokio::time::sleep_until(deadline), if !shared.stop.load(Ordering::Relaxed) => {
                shared.stop.store(true, Ordering::Relaxed);
            }
            _ = tick.tick() => {
                second += 1;
                let sent = shared.sent_events.load(Ordering::Relaxed);
                if !run.args.quiet {
                    eprintln!(
                        "[{second:>4}s] sent {:>8} ev/s  accepted {:>10}  503 {:>7}  errors {:>5}  in-flight {:>4}",
                        group(sent - last_sent),
                        group(shared.accepted_events.load(Ordering::Relaxed)),
                        group(shared.refused_events.load(Ordering::Relaxed)),
                        group(shared.rejected_events.load(Ordering::Relaxed)
                            + shared.failed_events.load(Ordering::Relaxed)),
                        shared.in_flight.load(Ordering::Relaxed),
                    );
                }
                last_sent = sent;
            }
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    Load {
        latencies,
        secs: started.elapsed().as_secs_f64(),
        started,
        ended: Instant::now(),
    }
}
