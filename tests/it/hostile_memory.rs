//! Memory is bounded by the limits, not by content (DESIGN.md §3.8): a real `nsready serve`
//! child process, on both deployments with the default limits, gets the worst inputs we can
//! build within them — events of the largest body with the most metrics, concurrent
//! batches of the largest size made of such events, a gzip body that inflates past the
//! limit, 10,000 invalid items — and its peak RSS (`VmHWM`) stays a small multiple of the
//! limits. The figures are printed (`--no-capture`) and recorded in BENCHMARKS.md; the
//! assertion's margin is wide on purpose (a bound on a blow-up, not a measurement).

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use chrono::SecondsFormat;
use nsready::registry::demo_ids;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::app::{Kind, TestEnv, wait_until};
use crate::support::servers::free_port;
use crate::support::{Proc, key};

const MIB: u64 = 1 << 20;
/// Defaults of INGEST_MAX_BODY_BYTES and INGEST_MAX_BATCH_BYTES.
const MAX_BODY: usize = 1 << 20;
const MAX_BATCH: usize = 16 << 20;

/// `VmHWM` (peak RSS) and `VmRSS` of a process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The largest single event within the limits: as many metrics as fit in MAX_BODY (up to
/// the 10,000 allowed), each with attributes, all for one key (so the rows deduplicate
/// to one, after the worker built them all).
fn largest_event(n: i64) -> String {
    let ts = (chrono::DateTime::parse_from_rfc3339("2025-11-14T12:00:00Z")
        .expect("base")
        .to_utc()
        + chrono::Duration::seconds(n))
    .to_rfc3339_opts(SecondsFormat::Secs, true);
    let metric = json!({"parameter_key": key("voltage"), "value": 1.5, "quality": 192,
        "attributes": {"u": "V"}})
    .to_string();
    let head = json!({
        "project_id": demo_ids::PROJECT_01, "site_id": demo_ids::SITE_01,
        "device_id": demo_ids::DEVICE_01_1, "protocol": "GPRS", "source_timestamp": ts,
        "event_id": format!("mem-{n}"), "metadata": {"pad": "m".repeat(16_000)},
    })
    .to_string();
    // 8 KiB below the body limit: the queue message (envelope, canonical form) and the
    // dead-letter headroom must still fit NATS's default max_payload of 1 MiB.
    let room = MAX_BODY - 8 * 1024 - head.len();
    let count = (room / (metric.len() + 1)).min(nsready::event::MAX_METRICS);
    let metrics = vec![metric; count].join(",");
    let body = format!(r#"{},"metrics":[{metrics}]}}"#, &head[..head.len() - 1]);
    assert!(body.len() <= MAX_BODY, "{} bytes", body.len());
    body
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).expect("gzip into memory");
    enc.finish().expect("gzip finish")
}

async fn post(http: &reqwest::Client, url: String, body: Vec<u8>, gz: bool) -> (StatusCode, Value) {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if gz {
        req = req.header("content-encoding", "gzip");
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn peak_memory_is_bounded_by_the_limits(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let port = free_port().to_string();
    let child = Proc(
        env.command("serve", &["--service-port", &port, "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn serve"),
    );
    let pid = child.0.id();
    let base = format!("http://127.0.0.1:{port}");
    crate::support::app::wait_ready(&base).await;
    let (_, baseline) = memory(pid);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client");
    let mut accepted = 0u64;

    // 1. Four of the largest single events at once.
    let singles: Vec<_> = (0..4)
        .map(|n| {
            let http = http.clone();
            let url = format!("{base}/v1/ingest");
            tokio::spawn(
                async move { post(&http, url, largest_event(n).into_bytes(), false).await },
            )
        })
        .collect();
    for s in singles {
        let (status, body) = s.await.expect("task");
        assert_eq!(status, StatusCode::OK, "{body}");
        accepted += 1;
    }

    // 2. Two batches of the largest size at once, each made of the largest events.
    let per_batch = MAX_BATCH / (MAX_BODY + 1);
    let batches: Vec<_> = (0..2)
        .map(|b| {
            let http = http.clone();
            let url = format!("{base}/v1/ingest/batch");
            let items: Vec<String> = (0..per_batch as i64)
                .map(|i| largest_event(100 + b * 100 + i))
                .collect();
            let body = format!("[{}]", items.join(","));
            assert!(body.len() <= MAX_BATCH);
            tokio::spawn(async move { post(&http, url, body.into_bytes(), false).await })
        })
        .collect();
    for b in batches {
        let (status, body) = b.await.expect("task");
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["accepted"], per_batch, "{}", body["results"][0]);
        accepted += per_batch as u64;
    }

    let (after_batches, _) = memory(pid);
    // 3. A gzip body that inflates past the batch limit: 413, and nothing kept.
    let bomb = gzip(&vec![b' '; MAX_BATCH * 4]);
    let (status, _) = post(&http, format!("{base}/v1/ingest/batch"), bomb, true).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // 4. 10,000 invalid items of 200 errors each, gzipped.
    let item = format!(r#"{{"metrics":[{}1]}}"#, "1,".repeat(199));
    let body = format!("[{}{item}]", format!("{item},").repeat(9_999));
    let (status, report) = post(
        &http,
        format!("{base}/v1/ingest/batch"),
        gzip(body.as_bytes()),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(report["rejected"], 10_000);

    // Everything accepted lands (one row per event: its metrics share one key).
    wait_until("the queue drains", Duration::from_secs(240), || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    let rows = env.row_count().await;
    let dead = env.dead_letters().await.len() as u64;
    assert_eq!(rows + dead, accepted, "rows {rows} + dead letters {dead}");
    assert_eq!(dead, 0);

    let (peak, now) = memory(pid);
    println!(
        "peak-memory {kind:?}: baseline RSS {} MiB, peak RSS {} MiB ({} MiB when the \
         batches were answered), RSS after {} MiB (limits: body {} MiB, batch {} MiB)",
        baseline / MIB,
        peak / MIB,
        after_batches / MIB,
        now / MIB,
        MAX_BODY as u64 / MIB,
        MAX_BATCH as u64 / MIB
    );
    // Wide margin: 32 × the batch limit over the baseline, about twice what was measured
    // (BENCHMARKS.md). Without the bounds one large event cost ~720 MiB (issue 8).
    let bound = 32 * MAX_BATCH as u64;
    assert!(
        peak.saturating_sub(baseline) < bound,
        "peak RSS {} MiB over a baseline of {} MiB (bound {} MiB)",
        peak / MIB,
        baseline / MIB,
        bound / MIB
    );
    // The process is alive and answers.
    let health: Value = reqwest::get(format!("{base}/v1/health"))
        .await
        .expect("health")
        .json()
        .await
        .expect("health JSON");
    assert_eq!(health["service"], "ok", "{health}");
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_memory_is_bounded_by_the_limits_embedded() {
    peak_memory_is_bounded_by_the_limits(Kind::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_memory_is_bounded_by_the_limits_scale_out() {
    peak_memory_is_bounded_by_the_limits(Kind::ScaleOut).await;
}
