//! loadgen, step 3: wait until the queue is empty. Health proves it (after its 1 s cache
//! has passed the end of the load); the workers' rows counter says when the last commit
//! happened, which is when the drain ended.

use super::drive::Load;
use super::prepare::Prepared;
use super::*;

/// How the drain wait ended.
pub(super) enum Drained {
    /// Seconds from the first request to the last commit.
    After(f64),
    /// The queue did not empty within `--drain-timeout`.
    TimedOut(Duration),
}

/// Step 3 of `run`.
pub(super) async fn drain(run: &Prepared, load: &Load) -> Drained {
    if !run.args.quiet {
        eprintln!("load done; waiting for the queue to drain ...");
    }
    let rows_now = || async {
        scrape(&run.probe, &run.metrics_urls)
            .await
            .and_then(|s| s.rows_total)
    };
    let mut last_rows = rows_now().await;
    let mut last_change = load.ended;
    loop {
        let now = Instant::now();
        if let Some(r) = rows_now().await
            && Some(r) != last_rows
        {
            last_rows = Some(r);
            last_change = now;
        }
        let trusted = now.duration_since(load.ended) >= HEALTH_MAX_AGE;
        if trusted && queue_depth(&run.probe, &run.base).await == Some(0) {
            let end = if last_rows.is_some() {
                last_change
            } else {
                now
            };
            return Drained::After(end.duration_since(load.started).as_secs_f64());
        }
        if now.duration_since(load.ended) > run.args.drain_timeout {
            return Drained::TimedOut(run.args.drain_timeout);
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}
