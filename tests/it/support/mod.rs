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

/// A child nsready process, killed (SIGKILL) and reaped on drop.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
