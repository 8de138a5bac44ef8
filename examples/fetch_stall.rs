//! Evidence for BENCHMARKS.md ("Where the time goes"): how long nsready's JetStream `fetch`
//! takes when messages trickle in while several workers pull (not a test).
//!
//! Publishes `--rate` messages/s for 3 s to a scratch stream (`FETCH_STALL`, deleted at the
//! end) while 4 tasks loop on `JetStreamQueue::fetch(500, 100 ms)` + ack, as the worker pool
//! does, and prints every fetch that took longer than 300 ms. With nats-server 2.9.10 and
//! async-nats 0.42 some pulls that received part of a batch are not ended at their 100 ms
//! expiry; they end at nsready's own fallback deadline (batch timeout + 2 s).
//!
//! `cargo run --release --example fetch_stall -- --nats-url nats://127.0.0.1:4222 --rate 1000`

use std::time::{Duration, Instant};

use clap::Parser;
use nsready::queue::jetstream::{self, JetStreamOptions};
use nsready::queue::{JetStreamQueue, Outgoing, Queue};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser)]
struct Args {
    /// nsready's settings (`--nats-url` is the one that matters).
    #[command(flatten)]
    settings: nsready::config::Settings,
    /// Messages per second during the 3 s of publishing.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let nats = &args.settings.nats;
    let url = nats.nats_url.clone().ok_or("--nats-url is required")?;
    let client = jetstream::connect(&url, nats).await?;
    let mut o = JetStreamOptions::from_settings(&args.settings);
    o.ack_wait = Duration::from_secs(30);
    o.stream = "FETCH_STALL".into();
    o.subject = "fetch_stall.x".into();
    o.consumer = "fetch_stall".into();
    o.dlq_stream = "FETCH_STALL_DLQ".into();
    o.dlq_subject = "fetch_stall.dlq".into();
    o.max_msgs = 1_000_000;
    o.max_bytes = 1 << 28;
    let q = JetStreamQueue::provision(client.clone(), o).await?;
    let t0 = Instant::now();
    let publisher = {
        let (q, rate) = (q.clone(), args.rate.max(1));
        tokio::spawn(async move {
            let mut i = 0u64;
            while t0.elapsed() < Duration::from_secs(3) {
                let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                q.publish(Outgoing {
                    msg_id: format!("stall-{i}"),
                    trace_id: i.to_string(),
                    payload: bytes::Bytes::from_static(b"{}"),
                })
                .await?;
                i += 1;
            }
            Ok::<u64, nsready::queue::QueueError>(i)
        })
    };
    let mut workers = Vec::new();
    for w in 0..4 {
        let q = q.clone();
        workers.push(tokio::spawn(async move {
            let (mut got, mut fetches, mut stalls) = (0usize, 0usize, 0usize);
            while t0.elapsed() < Duration::from_secs(6) {
                let start = Instant::now();
                let batch = q.fetch(500, Duration::from_millis(100)).await?;
                let took = start.elapsed();
                fetches += 1;
                if took > Duration::from_millis(300) {
                    stalls += 1;
                    println!(
                        "worker {w}: fetch started at {:.2} s returned {} messages after {:.2} s",
                        start.duration_since(t0).as_secs_f64(),
                        batch.len(),
                        took.as_secs_f64()
                    );
                }
                got += batch.len();
                q.ack(batch).await?;
            }
            Ok::<_, nsready::queue::QueueError>((got, fetches, stalls))
        }));
    }
    let sent = publisher.await??;
    let (mut got, mut fetches, mut stalls) = (0, 0, 0);
    for w in workers {
        let (g, f, s) = w.await??;
        got += g;
        fetches += f;
        stalls += s;
    }
    println!(
        "rate {} msgs/s: sent {sent}, consumed {got}; {stalls} of {fetches} fetches took > 300 ms",
        args.rate
    );
    let _ = async_nats::jetstream::new(client.clone())
        .delete_stream("FETCH_STALL")
        .await;
    let _ = async_nats::jetstream::new(client)
        .delete_stream("FETCH_STALL_DLQ")
        .await;
    Ok(())
}
