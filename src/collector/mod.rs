//! The HTTP side of every role: ingest (roles with a collector), health, readiness, metrics.
//!
//! [`Collector`] holds what the handlers share; [`router`] builds the axum router. Ingest
//! routes exist only when the role has a collector; `/v1/health`, `/v1/ready` and `/metrics`
//! exist for every role so probes and scrapes work the same everywhere. The ingest routes
//! share one in-flight cap (`HTTP_MAX_INFLIGHT`): past it a request is shed at once with 503
//! and `Retry-After` instead of queueing in memory; probes and scrapes are not capped (health
//! must answer while ingest is saturated). The server around the router (accept loop,
//! connection cap, header and idle timeouts, shutdown) is [`serve`]; bodies are read by
//! [`body`]. Every role also serves the status page ([`page`], `GET /`), and every response
//! is counted by route and status class ([`observe`]).

pub mod accept;
pub mod auth;
pub mod body;
pub mod error;
pub mod health;
pub mod ingest;
pub mod mqtt;
pub mod observe;
pub mod page;
pub mod rate;
pub mod serve;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;

use crate::event::TimeWindow;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::store::Store;
use error::ApiError;

/// What health and readiness need to know of the worker pool of a role that runs one:
/// the collector's own small interface, so it does not depend on the worker module.
pub trait WorkerHealth: Send + Sync {
    /// Worker loops in this process.
    fn workers(&self) -> usize;
    /// True while the workers pause because the store is unavailable.
    fn store_down(&self) -> bool;
    /// Events committed per second over the last [`WorkerHealth::window_secs`].
    fn committed_per_sec(&self) -> f64;
    /// Width of the throughput window, in seconds.
    fn window_secs(&self) -> i64;
    /// Feeds one reading of the queue depth to the stall clock; true when stalled.
    fn observe_depth(&self, depth: u64, after: Duration) -> bool;
}

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
    /// Longest time to receive a whole body (`HTTP_BODY_TIMEOUT`).
    pub(crate) body_timeout: Duration,
    /// Most ingest requests handled at once (`HTTP_MAX_INFLIGHT`).
    pub(crate) max_inflight: usize,
    /// Bytes of bodies all ingest requests may hold at once (`INGEST_MAX_INFLIGHT_BYTES`).
    pub(crate) body_budget: body::BodyBudget,
    /// Who may ingest for which device (`INGEST_AUTH`).
    pub(crate) auth: auth::Auth,
    /// Per-device rate limit, when on (`INGEST_RATE_LIMIT`).
    pub(crate) rate: Option<Arc<rate::DeviceLimiter>>,
    /// The worker pool's state, for roles that run workers (stall and readiness checks).
    pub(crate) pool: Option<Arc<dyn WorkerHealth>>,
    pub(crate) stall_after: Duration,
    pub(crate) consumer_name: String,
    pub(crate) role: &'static str,
    /// Readiness goes 503 once shutdown starts.
    pub(crate) shutdown: Shutdown,
    /// Last health reading (see `health::MAX_AGE`).
    pub(crate) health_cache: tokio::sync::Mutex<Option<health::Reading>>,
    /// Last DLQ count by reason (see `health::DLQ_BY_REASON_MAX_AGE`).
    pub(crate) dlq_cache: tokio::sync::Mutex<health::DlqByReason>,
    /// Last list of the newest dead letters (the status page).
    pub(crate) letters_cache: tokio::sync::Mutex<page::LettersCache>,
    /// The MQTT listener, once bound (health and the status page show it).
    pub(crate) mqtt: std::sync::OnceLock<mqtt::Listening>,
}

/// Settings of the HTTP side, besides queue and store.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub max_body: usize,
    pub max_batch: usize,
    pub window: TimeWindow,
    /// Longest time to receive a whole request body; past it 408.
    pub body_timeout: Duration,
    /// Most ingest requests handled at once; past it 503 with Retry-After.
    pub max_inflight: usize,
    /// Bytes of bodies all ingest requests may hold at once; past it 503 with Retry-After.
    pub max_inflight_bytes: usize,
    /// The authentication in force (the token cache is loaded and refreshed by the caller).
    pub auth: auth::Auth,
    /// The per-device rate limit, when on.
    pub rate: Option<Arc<rate::DeviceLimiter>>,
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
        pool: Option<Arc<dyn WorkerHealth>>,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        Arc::new(Collector {
            queue,
            store,
            metrics,
            max_body: settings.max_body,
            max_batch: settings.max_batch,
            window: settings.window,
            body_timeout: settings.body_timeout,
            max_inflight: settings.max_inflight,
            body_budget: body::BodyBudget::new(settings.max_inflight_bytes),
            auth: settings.auth,
            rate: settings.rate,
            pool,
            stall_after: settings.stall_after,
            consumer_name: settings.consumer_name,
            role: settings.role,
            shutdown,
            health_cache: tokio::sync::Mutex::new(None),
            dlq_cache: tokio::sync::Mutex::new(health::DlqByReason::default()),
            letters_cache: tokio::sync::Mutex::new(page::LettersCache::default()),
            mqtt: std::sync::OnceLock::new(),
        })
    }

    /// Checks the request's credential: who it may write for, or 401 (counted).
    fn authorize(&self, headers: &HeaderMap) -> Result<auth::Principal, ApiError> {
        self.auth
            .check(headers, chrono::Utc::now())
            .inspect_err(|_| {
                self.metrics
                    .refused(crate::metrics::RefusalReason::Unauthorized, 1);
            })
    }

    /// Takes the rate limit's place for one event of `device`; the wait when over it.
    fn rate_check(&self, device: &uuid::Uuid) -> Result<(), std::time::Duration> {
        match &self.rate {
            Some(l) => l.check(device),
            None => Ok(()),
        }
    }
}

/// The router; `with_ingest` adds the ingest routes (roles with a collector), behind the
/// in-flight cap.
pub fn router<Q: Queue, S: Store>(app: Arc<Collector<Q, S>>, with_ingest: bool) -> Router {
    let mut r = Router::new()
        .route("/v1/health", get(health::health::<Q, S>))
        .route("/v1/ready", get(health::ready::<Q, S>))
        .route("/metrics", get(health::metrics::<Q, S>))
        .route("/", get(page::index))
        .route("/status.js", get(page::script))
        .route("/status.css", get(page::style))
        .route("/v1/status", get(page::status::<Q, S>));
    if with_ingest {
        // One semaphore for both routes: the cap is on requests, whichever route they take.
        let permits = Arc::new(tokio::sync::Semaphore::new(
            app.max_inflight.min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        let cap = ServiceBuilder::new()
            .layer(HandleErrorLayer::new(shed))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(permits));
        let ingest = Router::new()
            .route("/v1/ingest", post(ingest::ingest::<Q, S>))
            .route("/v1/ingest/batch", post(ingest::ingest_batch::<Q, S>))
            .route_layer(cap);
        r = r.merge(ingest);
    }
    // Outermost: every response is counted, the in-flight cap's 503s and 404s included.
    let metrics = app.metrics.clone();
    r.with_state(app)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            observe::count_responses,
        ))
}

/// The answer when the in-flight cap sheds a request (the only error of the cap's layers).
async fn shed(e: tower::BoxError) -> ApiError {
    if !e.is::<tower::load_shed::error::Overloaded>() {
        tracing::warn!(error = %e, "unexpected error from the in-flight cap; answered 503");
    }
    ApiError::Overloaded
}
