//! Raw baselines for `scripts/bench`: what PostgreSQL and JetStream do on this machine with
//! nsready's own data shapes, and no nsready in between (not a test).
//!
//! - **binary COPY** of `--rows` rows of the `ingest_events` shape into a fresh, logged table
//!   with the same columns and only the primary key (`bench_copy`, dropped afterwards);
//! - **bulk upsert** of the same rows into `ingest_events` itself (platform schema: primary key,
//!   both foreign keys, the `(device_id, parameter_key, time DESC)` index), with nsready's
//!   statement (`INSERT ... SELECT FROM UNNEST(...) ON CONFLICT DO UPDATE`), batches of
//!   `--batch-rows`, on 1 and on 2 connections; `ingest_events` is truncated before and after;
//! - **JetStream**: `--messages` envelopes of ~600 bytes (an event with 3 metrics, as the
//!   collector publishes it, with `Nats-Msg-Id`) into a work-queue file stream like `INGRESS`:
//!   async publish with `--in-flight` acks outstanding; then pull-consume + ack them with 4
//!   consumers fetching 500 at a time (nsready's default pool and batch); then both at once,
//!   with that fetch pattern and with continuous pull streams (`messages()`).
//!
//! Needs a migrated database with the demo registry (`nsready migrate`, `registry demo`): the
//! rows use its devices and parameter keys so the foreign keys hold. Prints one JSON object.
//!
//! `cargo run --release --example bench_baseline -- --database-url URL --nats-url URL`

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::{Value, json};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser, Debug)]
struct Args {
    /// PostgreSQL URL of the migrated database with the demo registry.
    #[arg(long)]
    database_url: Option<String>,
    /// NATS URL (JetStream enabled).
    #[arg(long)]
    nats_url: Option<String>,
    /// Rows for COPY and bulk upsert.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Rows per upsert statement.
    #[arg(long, default_value_t = 1_500)]
    batch_rows: usize,
    /// JetStream messages.
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// Publish acks outstanding at most.
    #[arg(long, default_value_t = 4_096)]
    in_flight: usize,
    /// A second migrated database with the demo registry where `ingest_events` is a
    /// TimescaleDB hypertable: the same bulk upsert there, and the size before and after
    /// compressing its chunks.
    #[arg(long)]
    timescale_url: Option<String>,
    /// Only the bulk upsert on 2 connections (no COPY, no 1-connection or no-FK runs, no
    /// TimescaleDB or JetStream): the anchor `scripts/bench` measures right before the
    /// backlog drain, with the drain's own row count and the server in the drain's state.
    #[arg(long)]
    upsert_only: bool,
}

/// nsready's upsert statement (src/store/postgres/mod.rs), verbatim.
const UPSERT_SQL: &str = "\
INSERT INTO ingest_events (time, device_id, parameter_key, value, quality, source, event_id, attributes)
SELECT * FROM UNNEST($1::timestamptz[], $2::uuid[], $3::text[], $4::float8[], $5::int2[],
                     $6::text[], $7::text[], $8::jsonb[])
ON CONFLICT (time, device_id, parameter_key) DO UPDATE SET
    value = EXCLUDED.value, quality = EXCLUDED.quality, source = EXCLUDED.source,
    event_id = EXCLUDED.event_id, attributes = EXCLUDED.attributes";

/// Devices whose project has parameter templates, with those keys: the FK-valid row space.
const TARGETS_SQL: &str = "\
SELECT d.id, t.key FROM devices d
  JOIN sites s ON s.id = d.site_id
  JOIN parameter_templates t ON t.key LIKE 'project:' || s.project_id::text || ':%'
 WHERE d.status = 'active'
 ORDER BY d.id, t.key";

/// One batch's columns, built before the clock starts.
struct Columns {
    time: Vec<DateTime<Utc>>,
    device: Vec<Uuid>,
    key: Vec<String>,
    value: Vec<f64>,
    quality: Vec<i16>,
    source: Vec<String>,
    event_id: Vec<String>,
    attributes: Vec<Value>,
}

impl Columns {
    fn with_capacity(n: usize) -> Columns {
        Columns {
            time: Vec::with_capacity(n),
            device: Vec::with_capacity(n),
            key: Vec::with_capacity(n),
            value: Vec::with_capacity(n),
            quality: Vec::with_capacity(n),
            source: Vec::with_capacity(n),
            event_id: Vec::with_capacity(n),
            attributes: Vec::with_capacity(n),
        }
    }
    fn len(&self) -> usize {
        self.time.len()
    }
}

/// `rows` rows shaped like loadgen's events: event i is device i mod D at base + i µs, with
/// every key of the device's project; sorted by (time, device, key) as the worker sorts.
async fn build_rows(pg: &Client, rows: usize, batch: usize) -> Result<Vec<Columns>> {
    let mut devices: Vec<(Uuid, Vec<String>)> = Vec::new();
    for r in pg.query(TARGETS_SQL, &[]).await? {
        let (d, k): (Uuid, String) = (r.try_get(0)?, r.try_get(1)?);
        match devices.last_mut() {
            Some((last, keys)) if *last == d => keys.push(k),
            _ => devices.push((d, vec![k])),
        }
    }
    if devices.is_empty() {
        return Err("no device with parameter templates: run `nsready registry demo` first".into());
    }
    let base = Utc::now().timestamp_micros();
    let mut out = Vec::new();
    let mut cur = Columns::with_capacity(batch);
    let mut made = 0usize;
    let mut i = 0i64;
    while made < rows {
        let (device, keys) = &devices[usize::try_from(i).unwrap_or(0) % devices.len()];
        let t = DateTime::from_timestamp_micros(base + i).ok_or("time out of range")?;
        let ts = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        for k in keys {
            if made == rows {
                break;
            }
            cur.time.push(t);
            cur.device.push(*device);
            cur.key.push(k.clone());
            cur.value.push(200.0 + (i % 4_000) as f64 / 100.0);
            cur.quality.push(192);
            cur.source.push("GPRS".into());
            cur.event_id.push(format!("{device}:{ts}:{k}"));
            cur.attributes.push(json!({"unit": "V"}));
            made += 1;
            if cur.len() == batch {
                out.push(std::mem::replace(&mut cur, Columns::with_capacity(batch)));
            }
        }
        i += 1;
    }
    if cur.len() > 0 {
        out.push(cur);
    }
    Ok(out)
}

async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("postgres connection: {e}");
        }
    });
    Ok(client)
}

/// Binary COPY of every row into a fresh PK-only table; rows/s.
async fn copy_baseline(pg: &Client, batches: &[Columns]) -> Result<f64> {
    pg.batch_execute(
        "DROP TABLE IF EXISTS bench_copy;
         CREATE TABLE bench_copy (LIKE ingest_events INCLUDING DEFAULTS);
         ALTER TABLE bench_copy ADD PRIMARY KEY (time, device_id, parameter_key);",
    )
    .await?;
    let types = [
        Type::TIMESTAMPTZ,
        Type::UUID,
        Type::TEXT,
        Type::FLOAT8,
        Type::INT2,
        Type::TEXT,
        Type::TEXT,
        Type::JSONB,
    ];
    let started = Instant::now();
    let sink = pg
        .copy_in(
            "COPY bench_copy (time, device_id, parameter_key, value, quality, source, event_id, \
             attributes) FROM STDIN BINARY",
        )
        .await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    for b in batches {
        for r in 0..b.len() {
            let row: [&(dyn ToSql + Sync); 8] = [
                &b.time[r],
                &b.device[r],
                &b.key[r],
                &b.value[r],
                &b.quality[r],
                &b.source[r],
                &b.event_id[r],
                &b.attributes[r],
            ];
            writer.as_mut().write(&row).await?;
        }
    }
    let n = writer.as_mut().finish().await?;
    let secs = started.elapsed().as_secs_f64();
    pg.batch_execute("DROP TABLE bench_copy").await?;
    Ok(n as f64 / secs)
}

/// nsready's bulk upsert into `ingest_events` on `conns` connections; rows/s.
async fn upsert_baseline(url: &str, batches: &Arc<Vec<Columns>>, conns: usize) -> Result<f64> {
    let admin = connect(url).await?;
    admin.batch_execute("TRUNCATE ingest_events").await?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..conns {
        let c = connect(url).await?;
        let st = c.prepare(UPSERT_SQL).await?;
        clients.push((c, st));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, st) in clients {
        let (batches, next) = (Arc::clone(batches), Arc::clone(&next));
        tasks.push(tokio::spawn(async move {
            let mut rows = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = batches.get(i) else { break };
                rows += c
                    .execute(
                        &st,
                        &[
                            &b.time,
                            &b.device,
                            &b.key,
                            &b.value,
                            &b.quality,
                            &b.source,
                            &b.event_id,
                            &b.attributes,
                        ],
                    )
                    .await?;
            }
            Ok::<u64, tokio_postgres::Error>(rows)
        }));
    }
    let mut rows = 0;
    for t in tasks {
        rows += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    admin.batch_execute("TRUNCATE ingest_events").await?;
    Ok(rows as f64 / secs)
}

/// A collector-shaped envelope: trace id, an event with 3 metrics, config version (~600 B).
fn envelope(i: usize) -> (String, Bytes) {
    let p = "8212caa2-b928-4213-b64e-9f5b86f4cad1";
    let body = format!(
        "{{\"trace_id\":\"{:08x}-0000-4000-8000-{i:012x}\",\"event\":{{\"project_id\":\"{p}\",\
         \"site_id\":\"89a66770-bdcc-4c95-ac97-e1829cb7a960\",\"device_id\":\"bc2c5e47-f17e-46f0-b5e7-76b214f4f6ad\",\
         \"protocol\":\"GPRS\",\"source_timestamp\":\"2025-11-14T12:00:00.{:06}Z\",\"metrics\":[\
         {{\"parameter_key\":\"project:{p}:voltage\",\"value\":230.5,\"quality\":192,\"attributes\":{{\"unit\":\"V\"}}}},\
         {{\"parameter_key\":\"project:{p}:current\",\"value\":10.25,\"quality\":192,\"attributes\":{{\"unit\":\"A\"}}}},\
         {{\"parameter_key\":\"project:{p}:power\",\"value\":2.5,\"quality\":192,\"attributes\":{{\"unit\":\"kW\"}}}}],\
         \"config_version\":\"v1.0\",\"metadata\":{{}}}},\"config_version\":\"v1.0\"}}",
        i >> 48,
        i % 1_000_000
    );
    (format!("{i:064x}"), Bytes::from(body))
}

const SUBJECT: &str = "bench.msgs";
const STREAM: &str = "BENCH";
const CONSUMERS: usize = 4;
const FETCH: usize = 500;

/// Publishes `n` envelopes with `window` acks outstanding; msgs/s.
async fn publish(js: &jetstream::Context, n: usize, window: usize, offset: usize) -> Result<f64> {
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    for i in offset..offset + n {
        let (id, payload) = envelope(i);
        let p = PublishMessage::build()
            .payload(payload)
            .message_id(id)
            .header("Nsready-Trace-Id", "bench");
        let ack = js.send_publish(SUBJECT, p).await?.into_future();
        acks.push(ack);
        while acks.len() >= window {
            if let Some(r) = acks.next().await {
                r?;
            }
        }
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Consumes and acks `n` messages with CONSUMERS pull loops; msgs/s from `started`.
async fn consume(
    client: &async_nats::Client,
    c: &consumer::Consumer<consumer::pull::Config>,
    n: usize,
    started: Instant,
) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONSUMERS {
        let (c, client, done) = (c.clone(), client.clone(), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < n as u64 {
                let mut batch = c
                    .batch()
                    .max_messages(FETCH)
                    .expires(Duration::from_millis(100))
                    .messages()
                    .await?;
                let mut got = 0;
                while let Some(m) = batch.next().await {
                    m?.ack().await?;
                    got += 1;
                }
                client.flush().await?;
                done.fetch_add(got, Ordering::Relaxed);
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Consumes and acks `n` messages with CONSUMERS continuous pull streams (`messages()`, the
/// client's own flow control: the next pull goes out before the previous one is used up);
/// msgs/s from `started`.
async fn consume_stream(
    client: &async_nats::Client,
    c: &consumer::Consumer<consumer::pull::Config>,
    n: usize,
    started: Instant,
) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONSUMERS {
        let (c, client, done) = (c.clone(), client.clone(), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let mut msgs = c.stream().max_messages_per_batch(FETCH).messages().await?;
            while done.load(Ordering::Relaxed) < n as u64 {
                match tokio::time::timeout(Duration::from_millis(100), msgs.next()).await {
                    Ok(Some(m)) => {
                        m?.ack().await?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
            client.flush().await?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn nats_baselines(url: &str, n: usize, window: usize) -> Result<Value> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream(STREAM).await;
    let s = js
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![SUBJECT.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_messages: i64::try_from(n * 3).unwrap_or(i64::MAX),
            max_bytes: 8 << 30,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    let c = s
        .create_consumer(consumer::pull::Config {
            durable_name: Some("bench_workers".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            max_waiting: 512,
            ..Default::default()
        })
        .await?;
    let payload_bytes = envelope(0).1.len();
    let pub_rate = publish(&js, n, window, 0).await?;
    let cons_rate = consume(&client, &c, n, Instant::now()).await?;
    // Both at once, as the pipeline runs: publishers and consumers share the server. First
    // with nsready's pattern (fetch 500 / 100 ms), then with continuous pull streams.
    let started = Instant::now();
    let js2 = js.clone();
    let publisher = tokio::spawn(async move { publish(&js2, n, window, n).await });
    let both = consume(&client, &c, n, started).await?;
    publisher.await??;
    let started = Instant::now();
    let js2 = js.clone();
    let publisher = tokio::spawn(async move { publish(&js2, n, window, 2 * n).await });
    let both_stream = consume_stream(&client, &c, n, started).await?;
    publisher.await??;
    js.delete_stream(STREAM).await?;
    Ok(json!({
        "messages": n,
        "payload_bytes": payload_bytes,
        "acks_in_flight": window,
        "consumers": CONSUMERS,
        "fetch": FETCH,
        "publish_msgs_per_s": pub_rate.round(),
        "consume_msgs_per_s": cons_rate.round(),
        "publish_consume_concurrent_msgs_per_s": both.round(),
        "publish_consume_concurrent_stream_msgs_per_s": both_stream.round(),
    }))
}

/// CPU seconds (user + system) this process used: the baseline client's own share.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The bulk upsert into the hypertable (1 and 2 connections), then the rows once more and
/// the table's size before and after `compress_chunk` on every chunk, per million rows.
async fn timescale_baselines(url: &str, rows: usize, batch: usize) -> Result<Value> {
    let pg = connect(url).await?;
    let batches = Arc::new(build_rows(&pg, rows, batch).await?);
    eprintln!("baseline: bulk upsert into the hypertable, 1 connection ...");
    let up1 = upsert_baseline(url, &batches, 1).await?;
    eprintln!("baseline: bulk upsert into the hypertable, 2 connections ...");
    let up2 = upsert_baseline(url, &batches, 2).await?;
    eprintln!("baseline: compressed size ...");
    for b in batches.iter() {
        pg.execute(
            UPSERT_SQL,
            &[
                &b.time,
                &b.device,
                &b.key,
                &b.value,
                &b.quality,
                &b.source,
                &b.event_id,
                &b.attributes,
            ],
        )
        .await?;
    }
    let size = "SELECT hypertable_size('ingest_events')";
    let before: i64 = pg.query_one(size, &[]).await?.try_get(0)?;
    let started = Instant::now();
    pg.batch_execute("SELECT count(compress_chunk(c, if_not_compressed => true)) FROM show_chunks('ingest_events') c")
        .await?;
    let compress_s = started.elapsed().as_secs_f64();
    let after: i64 = pg.query_one(size, &[]).await?.try_get(0)?;
    pg.batch_execute("TRUNCATE ingest_events").await?;
    let per_million = |bytes: i64| (bytes as f64 * 1e6 / rows.max(1) as f64).round();
    Ok(json!({
        "upsert_rows_per_s_1conn": up1.round(),
        "upsert_rows_per_s_2conn": up2.round(),
        "bytes_per_million_rows_uncompressed": per_million(before),
        "bytes_per_million_rows_compressed": per_million(after),
        "compress_s": (compress_s * 100.0).round() / 100.0,
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut out = json!({});
    if let Some(url) = &args.database_url {
        let pg = connect(url).await?;
        eprintln!("baseline: building {} rows ...", args.rows);
        let batches = Arc::new(build_rows(&pg, args.rows, args.batch_rows).await?);
        if args.upsert_only {
            eprintln!("baseline: bulk upsert, 2 connections ...");
            let up2 = upsert_baseline(url, &batches, 2).await?;
            println!(
                "{}",
                json!({"postgres": {
                    "rows": args.rows,
                    "batch_rows": args.batch_rows,
                    "upsert_platform_schema_rows_per_s_2conn": up2.round(),
                }})
            );
            return Ok(());
        }
        eprintln!("baseline: binary COPY ...");
        let copy = copy_baseline(&pg, &batches).await?;
        eprintln!("baseline: bulk upsert, 1 connection ...");
        let up1 = upsert_baseline(url, &batches, 1).await?;
        eprintln!("baseline: bulk upsert, 2 connections ...");
        let up2 = upsert_baseline(url, &batches, 2).await?;
        // The cost of the two foreign keys (ARCHITECTURE.md keeps them): the same upsert with
        // them dropped, then restored (the table is empty again, so restoring is instant).
        eprintln!("baseline: bulk upsert without the foreign keys, 2 connections ...");
        pg.batch_execute(
            "ALTER TABLE ingest_events DROP CONSTRAINT ingest_events_device_id_fkey, \
             DROP CONSTRAINT ingest_events_parameter_key_fkey",
        )
        .await?;
        let up2_nofk = upsert_baseline(url, &batches, 2).await;
        pg.batch_execute(
            "ALTER TABLE ingest_events \
             ADD CONSTRAINT ingest_events_device_id_fkey FOREIGN KEY (device_id) \
                 REFERENCES devices (id) ON DELETE CASCADE, \
             ADD CONSTRAINT ingest_events_parameter_key_fkey FOREIGN KEY (parameter_key) \
                 REFERENCES parameter_templates (key) ON DELETE RESTRICT",
        )
        .await?;
        let up2_nofk = up2_nofk?;
        out["postgres"] = json!({
            "upsert_no_fk_rows_per_s_2conn": up2_nofk.round(),
            "rows": args.rows,
            "batch_rows": args.batch_rows,
            "copy_pk_only_rows_per_s": copy.round(),
            "upsert_platform_schema_rows_per_s_1conn": up1.round(),
            "upsert_platform_schema_rows_per_s_2conn": up2.round(),
        });
    }
    if let Some(url) = &args.timescale_url {
        out["timescale"] = timescale_baselines(url, args.rows, args.batch_rows).await?;
    }
    if let Some(url) = &args.nats_url {
        eprintln!("baseline: JetStream, {} messages ...", args.messages);
        out["jetstream"] = nats_baselines(url, args.messages, args.in_flight).await?;
    }
    out["client_cpu_s"] = json!((cpu_seconds() * 100.0).round() / 100.0);
    println!("{out}");
    Ok(())
}
