//! The HTTP side of every role: ingest (roles with a collector), health, readiness, metrics.
//!
//! [`Collector`] holds what the handlers share; [`router`] builds the axum router. Ingest
//! routes exist only when the role has a collector; `/v1/health`, `/v1/ready` and `/metrics`
//! exist for every role so probes and scrapes work the same everywhere.

pub mod error;
pub mod health;
pub mod ingest;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, header};
use axum::routing::{get, post};

use crate::config::Secret;
use crate::event::TimeWindow;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::worker::PoolState;
use error::ApiError;

/// State shared by the HTTP handlers.
pub struct Collector<Q, S> {
    pub(crate) queue: Q,
    pub(crate) store: S,
    pub(crate) metrics: Metrics,
    /// Largest single-event body.
    pub(crate) max_body: usize,
    /// Largest (decompressed) batch body.
    pub(crate) max_batch: usize,
    /// How far from the clock a reading's timestamp may be.
    pub(crate) window: TimeWindow,
    /// Bearer token required for ingest, when set.
    pub(crate) auth_token: Option<Secret>,
    /// The worker pool's state, for roles that run workers (stall and readiness checks).
    pub(crate) pool: Option<Arc<PoolState>>,
    pub(crate) stall_after: Duration,
    pub(crate) consumer_name: String,
    pub(crate) role: &'static str,
    /// Readiness goes 503 once shutdown starts.
    pub(crate) shutdown: Shutdown,
    /// Last health reading (see `health::MAX_AGE`).
    pub(crate) health_cache: tokio::sync::Mutex<Option<health::Reading>>,
    /// Last DLQ count by reason (see `health::DLQ_BY_REASON_MAX_AGE`).
    pub(crate) dlq_cache: tokio::sync::Mutex<health::DlqByReason>,
}

/// Settings of the HTTP side, besides queue and store.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub max_body: usize,
    pub max_batch: usize,
    pub window: TimeWindow,
    pub auth_token: Option<Secret>,
    pub stall_after: Duration,
    pub consumer_name: String,
    pub role: &'static str,
}

impl<Q: Queue, S: Store> Collector<Q, S> {
    /// Shared handler state.
    pub fn new(
        queue: Q,
        store: S,
        metrics: Metrics,
        settings: HttpSettings,
        pool: Option<Arc<PoolState>>,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        Arc::new(Collector {
            queue,
            store,
            metrics,
            max_body: settings.max_body,
            max_batch: settings.max_batch,
            window: settings.window,
            auth_token: settings.auth_token,
            pool,
            stall_after: settings.stall_after,
            consumer_name: settings.consumer_name,
            role: settings.role,
            shutdown,
            health_cache: tokio::sync::Mutex::new(None),
            dlq_cache: tokio::sync::Mutex::new(health::DlqByReason::default()),
        })
    }

    /// Checks the bearer token when auth is on.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(want) = &self.auth_token else {
            return Ok(());
        };
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if constant_time_eq(got.as_bytes(), want.expose().as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The router; `with_ingest` adds the ingest routes (roles with a collector).
pub fn router<Q: Queue, S: Store>(app: Arc<Collector<Q, S>>, with_ingest: bool) -> Router {
    let mut r = Router::new()
        .route("/v1/health", get(health::health::<Q, S>))
        .route("/v1/ready", get(health::ready::<Q, S>))
        .route("/metrics", get(health::metrics::<Q, S>));
    if with_ingest {
        r = r
            .route("/v1/ingest", post(ingest::ingest::<Q, S>))
            .route("/v1/ingest/batch", post(ingest::ingest_batch::<Q, S>));
    }
    r.with_state(app)
}
