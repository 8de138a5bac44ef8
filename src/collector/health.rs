//! `GET /v1/health`, `GET /v1/ready` and `GET /metrics`.
//!
//! Health always answers 200 while the process runs and says what is wrong in its body;
//! readiness answers 503 when this process cannot do its job (shutting down, queue
//! unreachable, or, for roles with workers, the database down). Queue state is read fresh,
//! at most [`MAX_AGE`] old, so probes cannot hammer NATS. Health also carries the DLQ
//! depth by error type, recomputed at most every [`DLQ_BY_REASON_MAX_AGE`] (see
//! [`Collector::dlq_by_reason`] for why here), this process's worker count and its
//! committed events per second over the last minute.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;

use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Collector;
use super::error::Reply;
use crate::metrics::{Component, QueueGauges};
use crate::queue::{Queue, QueueStats};
use crate::store::Store;

/// Oldest health reading served from the cache.
pub const MAX_AGE: Duration = Duration::from_secs(1);
/// Longest wait for one probe (queue or database).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Oldest DLQ-by-reason count served.
pub const DLQ_BY_REASON_MAX_AGE: Duration = Duration::from_secs(5);
/// Oldest DLQ-by-reason count served while the DLQ depth has not changed.
const DLQ_BY_REASON_UNCHANGED_MAX_AGE: Duration = Duration::from_secs(60);
/// Most dead letters whose headers are read to count them by reason (JetStream; the
/// embedded queue counts with one GROUP BY); beyond it the counts cover the oldest ones
/// only and health says `dlq_by_reason_complete: false`. No payload is ever read.
const DLQ_BY_REASON_SCAN: usize = 10_000;

/// Dead letters counted by error type.
#[derive(Clone, Debug, Default)]
pub struct DlqByReason {
    /// Error type → dead letters.
    pub counts: BTreeMap<String, u64>,
    /// False when the DLQ held more than the scan reads.
    pub complete: bool,
    /// DLQ depth when counted.
    depth: u64,
    at: Option<Instant>,
}

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
            (Some(pool), Some(s)) => pool.observe_depth(s.depth(), self.stall_after),
            _ => false,
        };
        if let Some(s) = &stats {
            self.metrics.queue_stats(QueueGauges {
                depth: s.depth(),
                pending: s.pending,
                ack_pending: s.ack_pending,
                redelivered: s.redelivered,
                dlq_depth: s.dlq_depth,
                oldest_age_ms: s.oldest_age_ms,
            });
        }
        self.metrics.up(Component::Queue, stats.is_some());
        self.metrics.up(Component::Store, db_ok);
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

impl<Q: Queue, S: Store> Collector<Q, S> {
    /// The DLQ counted by error type, for `nsready status`.
    ///
    /// Why here and not in `status`: `status` must work on both deployments while the
    /// service runs, and in embedded mode only the running process may open the queue file
    /// (the DATA_DIR lock), so the count has to come from the service. On JetStream, which
    /// has no cheap group-by, it costs reading every letter's headers, so it is bounded: nothing is read while the DLQ is empty; a count is recomputed at most every
    /// [`DLQ_BY_REASON_MAX_AGE`], and only once a minute while the DLQ depth is unchanged
    /// (a DLQ that waits for an operator costs almost nothing); a scan reads at most
    /// [`DLQ_BY_REASON_SCAN`] letters within [`PROBE_TIMEOUT`]. Only `/v1/health` asks;
    /// readiness and metrics never wait for it. (Counting in `status` instead would need
    /// the queue's own connection settings there, and would not work in embedded mode.)
    /// The count never reads a payload ([`Queue::dlq_counts`]): embedded, a GROUP BY on the
    /// error type column; JetStream, an ephemeral headers-only consumer.
    pub async fn dlq_by_reason(&self, depth: u64) -> DlqByReason {
        let mut cache = self.dlq_cache.lock().await;
        if depth == 0 {
            self.metrics.dlq_by_reason([]);
            *cache = DlqByReason {
                complete: true,
                ..DlqByReason::default()
            };
            return cache.clone();
        }
        let fresh = cache.at.is_some_and(|at| {
            at.elapsed() < DLQ_BY_REASON_MAX_AGE
                || (cache.depth == depth && at.elapsed() < DLQ_BY_REASON_UNCHANGED_MAX_AGE)
        });
        if fresh {
            return cache.clone();
        }
        match tokio::time::timeout(PROBE_TIMEOUT, self.queue.dlq_counts(DLQ_BY_REASON_SCAN)).await {
            Ok(Ok(counted)) => {
                self.metrics
                    .dlq_by_reason(counted.counts.iter().map(|(k, v)| (k.as_str(), *v)));
                *cache = DlqByReason {
                    complete: counted.complete,
                    counts: counted.counts,
                    depth,
                    at: Some(Instant::now()),
                };
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "DLQ unreadable; keeping the last count"),
            Err(_) => tracing::debug!("DLQ count timed out; keeping the last count"),
        }
        cache.clone()
    }
}

/// The health document of DESIGN.md §4, plus `reasons` when degraded, the DLQ by error
/// type, and for roles with workers their number and recent throughput.
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
    // Unknown is not zero: while the queue cannot be read, the counts are null (and the
    // service degraded), so nobody mistakes an unreachable queue for an empty one.
    let known = |f: fn(&QueueStats) -> u64| r.stats.as_ref().map(f);
    let by_reason = match r.stats {
        Some(s) => Some(app.dlq_by_reason(s.dlq_depth).await),
        None => None,
    };
    // What the store is (TimescaleDB and its policies); null when it cannot be read now.
    let store = match tokio::time::timeout(PROBE_TIMEOUT, app.store.info()).await {
        Ok(Ok(info)) => Some(info),
        _ => None,
    };
    let throughput = app.pool.as_ref().map(|p| {
        json!({
            "committed_per_sec": (p.committed_per_sec() * 100.0).round() / 100.0,
            "window_secs": p.window_secs(),
        })
    });
    let body = json!({
        "service": if reasons.is_empty() { "ok" } else { "degraded" },
        "queue_depth": known(QueueStats::depth),
        "db": if r.db_ok { "connected" } else { "disconnected" },
        "store": store,
        "queue": {
            "consumer": app.consumer_name,
            "pending": known(|s| s.pending),
            "ack_pending": known(|s| s.ack_pending),
            "redelivered": known(|s| s.redelivered),
            "waiting_pulls": known(|s| s.waiting_pulls),
        },
        "dlq_depth": known(|s| s.dlq_depth),
        "dlq_by_reason": by_reason.as_ref().map(|b| &b.counts),
        "dlq_by_reason_complete": by_reason.as_ref().map(|b| b.complete),
        "role": app.role,
        "workers": app.pool.as_ref().map_or(0, |p| p.workers()),
        "throughput": throughput,
        "mqtt": app.mqtt_json(),
        "reasons": reasons,
    });
    Reply::Health(body).into_response()
}

/// 200 when this process can do its job, else 503 with the reason.
pub async fn ready<Q: Queue, S: Store>(State(app): State<Arc<Collector<Q, S>>>) -> Response {
    if app.shutdown.is_triggered() {
        return Reply::Ready(Err("shutting down")).into_response();
    }
    let r = app.reading().await;
    let reason = if r.stats.is_none() {
        Some("queue unreachable")
    } else if app.pool.is_some() && !r.db_ok {
        Some("database disconnected")
    } else {
        None
    };
    Reply::Ready(reason.map_or(Ok(()), Err)).into_response()
}

/// Prometheus text format, with queue gauges refreshed first.
pub async fn metrics<Q: Queue, S: Store>(State(app): State<Arc<Collector<Q, S>>>) -> Response {
    app.reading().await;
    Reply::Metrics(app.metrics.render()).into_response()
}
