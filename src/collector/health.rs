//! `GET /v1/health`, `GET /v1/ready` and `GET /metrics`.
//!
//! Health always answers 200 while the process runs and says what is wrong in its body;
//! readiness answers 503 when this process cannot do its job (shutting down, queue
//! unreachable, or, for roles with workers, the database down). Queue state is read fresh,
//! at most [`MAX_AGE`] old, so probes cannot hammer NATS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Collector;
use crate::queue::{Queue, QueueStats};
use crate::store::Store;

/// Oldest health reading served from the cache.
pub const MAX_AGE: Duration = Duration::from_secs(1);
/// Longest wait for one probe (queue or database).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One reading of the world.
#[derive(Clone, Debug)]
pub struct Reading {
    pub stats: Option<QueueStats>,
    pub db_ok: bool,
    pub stalled: bool,
    pub at: Instant,
}

impl<Q: Queue, S: Store> Collector<Q, S> {
    /// A reading at most `MAX_AGE` old.
    pub async fn reading(&self) -> Reading {
        let mut cache = self.health_cache.lock().await;
        if let Some(r) = cache.as_ref().filter(|r| r.at.elapsed() < MAX_AGE) {
            return r.clone();
        }
        let (stats, db) = tokio::join!(
            tokio::time::timeout(PROBE_TIMEOUT, self.queue.stats()),
            tokio::time::timeout(PROBE_TIMEOUT, self.store.ping()),
        );
        let stats = match stats {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "queue stats unavailable");
                None
            }
            Err(_) => None,
        };
        let db_ok = matches!(db, Ok(Ok(())));
        let stalled = match (&self.pool, stats) {
            (Some(pool), Some(s)) => s.depth() > 0 && pool.since_last_commit() > self.stall_after,
            _ => false,
        };
        if let Some(s) = &stats {
            self.metrics.queue_stats(s);
        }
        self.metrics.stalled(stalled);
        let r = Reading {
            stats,
            db_ok,
            stalled,
            at: Instant::now(),
        };
        *cache = Some(r.clone());
        r
    }
}

/// The health document of DESIGN.md §4, plus `reasons` when degraded.
pub async fn health<Q: Queue, S: Store>(State(app): State<Arc<Collector<Q, S>>>) -> Response {
    let r = app.reading().await;
    let mut reasons = Vec::new();
    if r.stats.is_none() {
        reasons.push("queue unreachable".to_string());
    }
    if !r.db_ok {
        reasons.push("database disconnected".to_string());
    }
    if r.stalled {
        reasons.push(format!(
            "stalled: queue not empty and nothing committed for more than {} s",
            app.stall_after.as_secs()
        ));
    }
    let s = r.stats.unwrap_or_default();
    let body = json!({
        "service": if reasons.is_empty() { "ok" } else { "degraded" },
        "queue_depth": s.depth(),
        "db": if r.db_ok { "connected" } else { "disconnected" },
        "queue": {
            "consumer": app.consumer_name,
            "pending": s.pending,
            "ack_pending": s.ack_pending,
            "redelivered": s.redelivered,
            "waiting_pulls": s.waiting_pulls,
        },
        "dlq_depth": s.dlq_depth,
        "role": app.role,
        "reasons": reasons,
    });
    (StatusCode::OK, Json(body)).into_response()
}

/// 200 when this process can do its job, else 503 with the reason.
pub async fn ready<Q: Queue, S: Store>(State(app): State<Arc<Collector<Q, S>>>) -> Response {
    if app.shutdown.is_triggered() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": "shutting down"})),
        )
            .into_response();
    }
    let r = app.reading().await;
    let reason = if r.stats.is_none() {
        Some("queue unreachable")
    } else if app.pool.is_some() && !r.db_ok {
        Some("database disconnected")
    } else {
        None
    };
    match reason {
        None => (StatusCode::OK, Json(json!({"ready": true}))).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": why})),
        )
            .into_response(),
    }
}

/// Prometheus text format, with queue gauges refreshed first.
pub async fn metrics<Q: Queue, S: Store>(State(app): State<Arc<Collector<Q, S>>>) -> Response {
    app.reading().await;
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}
