//! Test support: real servers (`servers`), the app under test (`app`), event builders.
#![allow(dead_code)]

pub mod app;
pub mod servers;

use std::sync::Once;

use nsready::registry::demo_ids;
use serde_json::{Value, json};

/// Logs once per test process (nextest runs one test per process).
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        nsready::telemetry::init("nsready=info,warn", nsready::config::LogFormat::Pretty);
    });
}

/// Parameter key of the demo project.
pub fn key(name: &str) -> String {
    format!("project:{}:{name}", demo_ids::PROJECT_01)
}

/// A valid event for the first demo device, at `2025-11-14T12:00:00Z + secs`, with the
/// given (parameter name, value) metrics.
pub fn event(secs: i64, metrics: &[(&str, f64)]) -> Value {
    event_for(demo_ids::DEVICE_01_1, secs, metrics)
}

/// Same, for another device of Customer 01's site.
pub fn event_for(device: uuid::Uuid, secs: i64, metrics: &[(&str, f64)]) -> Value {
    let ts = chrono::DateTime::parse_from_rfc3339("2025-11-14T12:00:00Z")
        .expect("base time")
        .to_utc()
        + chrono::Duration::seconds(secs);
    json!({
        "project_id": demo_ids::PROJECT_01,
        "site_id": demo_ids::SITE_01,
        "device_id": device,
        "protocol": "GPRS",
        "source_timestamp": ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "metrics": metrics.iter().map(|(k, v)| json!({
            "parameter_key": key(k), "value": v, "quality": 192, "attributes": {"unit": "V"}
        })).collect::<Vec<_>>(),
        "config_version": "v1.0",
        "metadata": {}
    })
}

/// Runs an async behaviour test against both deployments.
#[macro_export]
macro_rules! both_deployments {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn scale_out() {
                super::$name($crate::support::app::Kind::ScaleOut).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::support::app::Kind::Embedded).await
            }
        }
    };
}

/// Runs an async behaviour test against both deployments and, on top, scale-out on a
/// PostgreSQL with TimescaleDB (fails when the extension is not installed).
#[macro_export]
macro_rules! all_stores {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn scale_out() {
                super::$name($crate::support::app::Kind::ScaleOut).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::support::app::Kind::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn timescale() {
                super::$name($crate::support::app::Kind::ScaleOutTimescale).await
            }
        }
    };
}

/// A child nsready process, killed (SIGKILL) and reaped on drop.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a load run got back.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Event numbers answered 200 (each counted once, whatever the retries).
    pub accepted: std::collections::BTreeSet<i64>,
    /// Attempts answered 503 or failed at the connection.
    pub refused: u64,
}

/// A steady load from one client task: event `i` (distinct keys) is posted to the URLs in
/// turn, and retried (next URL, 100 ms pause) until it gets a 200 or the load is stopped.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<LoadReport>,
}

impl Load {
    /// Starts posting `event_fn(i)` for i = 0, 1, … with `pause` between events.
    pub fn start(
        urls: Vec<String>,
        pause: std::time::Duration,
        event_fn: impl Fn(i64) -> Value + Send + 'static,
    ) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .expect("client");
            let mut report = LoadReport::default();
            let mut turn = 0usize;
            let mut i = 0i64;
            'events: while !flag.load(Ordering::Relaxed) {
                let body = event_fn(i).to_string();
                loop {
                    let url = &urls[turn % urls.len()];
                    let r = http
                        .post(format!("{url}/v1/ingest"))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    if r.as_ref()
                        .is_ok_and(|r| r.status() == reqwest::StatusCode::OK)
                    {
                        report.accepted.insert(i);
                        break;
                    }
                    report.refused += 1;
                    turn += 1;
                    if flag.load(Ordering::Relaxed) {
                        break 'events;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                i += 1;
                tokio::time::sleep(pause).await;
            }
            report
        });
        Load { stop, task }
    }

    /// Stops and returns what was accepted.
    pub async fn finish(self) -> LoadReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("load task")
    }
}

/// Seconds offsets (event numbers) of the rows of `device`, from `TestEnv::rows`.
pub fn landed(rows: &[app::RowView], device: uuid::Uuid) -> std::collections::BTreeSet<i64> {
    let base = chrono::DateTime::parse_from_rfc3339("2025-11-14T12:00:00Z")
        .expect("base time")
        .to_utc();
    rows.iter()
        .filter(|r| r.device_id == device.to_string())
        .map(|r| (r.time - base).num_seconds())
        .collect()
}

/// Sends a signal to a child process.
pub fn signal(child: &std::process::Child, sig: i32) {
    let pid = i32::try_from(child.id()).expect("pid fits");
    // SAFETY: kill(2) on a child we spawned and have not reaped yet.
    unsafe {
        libc::kill(pid, sig);
    }
}
