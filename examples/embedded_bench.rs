//! Quick throughput measurement of the embedded queue and SQLite store (not a test).
//!
//! Run with `cargo run --release --example embedded_bench`. It publishes 50,000 messages
//! from 64 concurrent tasks (one message per publish, so group commit does the batching),
//! drains them with fetch/ack, runs publishers and consumers together, and upserts
//! 100,000 rows in batches of 1,500. Files go to a temporary directory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use nsready::queue::embedded::EmbeddedQueueOptions;
use nsready::queue::{EmbeddedQueue, Outgoing, Queue};
use nsready::registry;
use nsready::store::{Row, SqliteStore, Store};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MESSAGES: usize = 50_000;
const PUBLISHERS: usize = 64;
const ROWS: usize = 100_000;
const BATCH: usize = 1_500;

/// An envelope-sized payload (~450 bytes, like one event with two metrics).
fn payload(i: usize) -> Bytes {
    let body = format!(
        "{{\"trace_id\":\"{i:032}\",\"event\":{{\"project_id\":\"8212caa2-b928-4213-b64e-9f5b86f4cad1\",\
         \"site_id\":\"89a66770-bdcc-4c95-ac97-e1829cb7a960\",\"device_id\":\"bc2c5e47-f17e-46f0-b5e7-76b214f4f6ad\",\
         \"protocol\":\"GPRS\",\"source_timestamp\":\"2025-11-14T12:00:00Z\",\"metrics\":[\
         {{\"parameter_key\":\"project:8212caa2-b928-4213-b64e-9f5b86f4cad1:voltage\",\"value\":230.5,\"quality\":192}},\
         {{\"parameter_key\":\"project:8212caa2-b928-4213-b64e-9f5b86f4cad1:current\",\"value\":10.2,\"quality\":192}}]}},\
         \"config_version\":\"v1.0\"}}"
    );
    Bytes::from(body)
}

fn outgoing(prefix: &str, i: usize) -> Outgoing {
    Outgoing {
        msg_id: format!("{prefix}-{i}"),
        trace_id: format!("{i:032}"),
        payload: payload(i),
    }
}

async fn publish_all(q: &EmbeddedQueue, prefix: &'static str) -> Result<()> {
    let per_task = MESSAGES / PUBLISHERS;
    let mut tasks = Vec::new();
    for t in 0..PUBLISHERS {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            for i in t * per_task..(t + 1) * per_task {
                q.publish(outgoing(prefix, i)).await?;
            }
            Ok::<_, nsready::queue::QueueError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Fetches and acks until `target` messages were consumed, with `consumers` tasks.
async fn drain(q: &EmbeddedQueue, target: u64, consumers: usize) -> Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let (q, done) = (q.clone(), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < target {
                let got = q.fetch(500, Duration::from_millis(50)).await?;
                done.fetch_add(got.len() as u64, Ordering::Relaxed);
                q.ack(got).await?;
            }
            Ok::<_, nsready::queue::QueueError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn rate(n: usize, since: Instant) -> String {
    let secs = since.elapsed().as_secs_f64();
    format!("{n} in {secs:.2} s = {:.0}/s", n as f64 / secs)
}

async fn bench_queue(dir: &std::path::Path) -> Result<()> {
    let q = EmbeddedQueue::open(&dir.join("queue.db"), EmbeddedQueueOptions::default())?;
    let n = (MESSAGES / PUBLISHERS) * PUBLISHERS;

    let start = Instant::now();
    publish_all(&q, "a").await?;
    println!(
        "queue publish ({PUBLISHERS} tasks, 1 msg/publish): {}",
        rate(n, start)
    );

    let start = Instant::now();
    drain(&q, n as u64, 4).await?;
    println!(
        "queue fetch(500)+ack (4 consumers):        {}",
        rate(n, start)
    );

    let start = Instant::now();
    let (p, c) = tokio::join!(publish_all(&q, "b"), drain(&q, n as u64, 4));
    p?;
    c?;
    println!(
        "queue publish and consume together:        {}",
        rate(n, start)
    );

    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..(MESSAGES / 100) {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let msgs = (t * 100..(t + 1) * 100).map(|i| outgoing("c", i)).collect();
            q.publish_many(msgs).await
        }));
    }
    for t in tasks {
        for r in t.await? {
            r?;
        }
    }
    println!(
        "queue publish_many (100 per call):         {}",
        rate(MESSAGES, start)
    );
    let stats = q.stats().await?;
    println!("queue stats after: {stats:?}");
    Ok(())
}

async fn bench_store(dir: &std::path::Path) -> Result<()> {
    let store = SqliteStore::open(&dir.join("nsready.db"))?;
    store.migrate().await?;
    let demo = registry::demo();
    store.import_registry(&demo).await?;
    let devices: Vec<_> = demo.devices.iter().map(|d| d.id).collect();
    let keys: Vec<_> = demo
        .parameter_templates
        .iter()
        .map(|t| t.key.clone())
        .collect();
    let base = Utc.timestamp_opt(1_763_121_600, 0).single().ok_or("time")?;
    let per_second = devices.len() * keys.len();
    let rows: Vec<Row> = (0..ROWS)
        .map(|i| {
            let (sec, rest) = (i / per_second, i % per_second);
            let device_id = devices[rest / keys.len()];
            let parameter_key = keys[rest % keys.len()].clone();
            let time = base + chrono::Duration::seconds(sec as i64);
            Row {
                time,
                device_id,
                event_id: format!("{device_id}:{}:{parameter_key}", time.to_rfc3339()),
                parameter_key,
                value: Some(i as f64),
                quality: 192,
                source: "GPRS".into(),
                attributes: serde_json::json!({"unit": "V"}),
            }
        })
        .collect();

    let start = Instant::now();
    for chunk in rows.chunks(BATCH) {
        let mut batch = chunk.to_vec();
        batch.sort_by(|a, b| a.key().cmp(&b.key()));
        store.upsert(&batch).await?;
    }
    println!(
        "store upsert, new rows (batches of {BATCH}):   {}",
        rate(ROWS, start)
    );

    let start = Instant::now();
    for chunk in rows.chunks(BATCH) {
        let mut batch = chunk.to_vec();
        batch.sort_by(|a, b| a.key().cmp(&b.key()));
        store.upsert(&batch).await?;
    }
    println!(
        "store upsert, same keys again (updates):   {}",
        rate(ROWS, start)
    );

    // Two writers at once, as two workers would: the mutex serialises them.
    let start = Instant::now();
    let later = base + chrono::Duration::days(1);
    let mut tasks = Vec::new();
    for w in 0..2 {
        let store = store.clone();
        let mine: Vec<Row> = rows
            .iter()
            .skip(w)
            .step_by(2)
            .map(|r| Row {
                time: r.time + (later - base),
                ..r.clone()
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            for chunk in mine.chunks(BATCH) {
                let mut batch = chunk.to_vec();
                batch.sort_by(|a, b| a.key().cmp(&b.key()));
                store.upsert(&batch).await?;
            }
            Ok::<_, nsready::store::StoreError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "store upsert, 2 concurrent writers:        {}",
        rate(ROWS, start)
    );
    println!("rows in ingest_events: {}", store.count_rows().await?);
    let start = Instant::now();
    let latest = store.latest(None).await?;
    println!(
        "latest() over {} rows: {} values in {:.1} ms",
        store.count_rows().await?,
        latest.len(),
        start.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    runtime.block_on(async {
        bench_queue(dir.path()).await?;
        bench_store(dir.path()).await
    })
}
