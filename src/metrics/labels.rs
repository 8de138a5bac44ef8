//! Label values of the operator metrics: the fixed sets `nsready_up{component}` and
//! `nsready_http_responses_total{route,status_class,code}` take (no metric names here;
//! those stay in `metrics.rs`).

use prometheus_client::encoding::EncodeLabelSet;

/// What `nsready_up{component}` reports on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    /// The store (PostgreSQL, or the embedded database file).
    Store,
    /// The queue (NATS JetStream, or the embedded queue file).
    Queue,
}

impl Component {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Store => "store",
            Component::Queue => "queue",
        }
    }
}

/// The route template a response is counted under (`nsready_http_responses_total{route}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Ingest,
    IngestBatch,
    Health,
    Ready,
    Metrics,
    /// `GET /`, the status page.
    StatusPage,
    /// The status page's script and style.
    StatusAsset,
    /// `GET /v1/status`, the status page's JSON.
    Status,
    /// A route template this enum does not know yet (added without a variant).
    Other,
    /// No route matched (404, 405 of unknown paths): every hostile path lands here.
    Unmatched,
}

impl Route {
    /// The route of a matched template (axum's `MatchedPath`), `Unmatched` for none.
    pub fn from_template(template: Option<&str>) -> Route {
        match template {
            None => Route::Unmatched,
            Some("/v1/ingest") => Route::Ingest,
            Some("/v1/ingest/batch") => Route::IngestBatch,
            Some("/v1/health") => Route::Health,
            Some("/v1/ready") => Route::Ready,
            Some("/metrics") => Route::Metrics,
            Some("/") => Route::StatusPage,
            Some("/status.js" | "/status.css") => Route::StatusAsset,
            Some("/v1/status") => Route::Status,
            Some(_) => Route::Other,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Ingest => "/v1/ingest",
            Route::IngestBatch => "/v1/ingest/batch",
            Route::Health => "/v1/health",
            Route::Ready => "/v1/ready",
            Route::Metrics => "/metrics",
            Route::StatusPage => "/",
            Route::StatusAsset => "/status.{js,css}",
            Route::Status => "/v1/status",
            Route::Other => "other",
            Route::Unmatched => "unmatched",
        }
    }
}

/// Labels of `nsready_up`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabel {
    /// `store` or `queue`.
    pub component: &'static str,
}

/// Labels of `nsready_http_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The matched route template, `other` or `unmatched`.
    pub route: &'static str,
}

/// Labels of `nsready_http_responses_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabel {
    /// The matched route template, `other` or `unmatched`.
    pub route: &'static str,
    /// `1xx` … `5xx`.
    pub status_class: &'static str,
    /// `429` and `503` (rate limited, backpressure) spelled out; every other code `other`.
    pub code: &'static str,
}

/// Status class and code labels of an HTTP status.
pub(super) fn status_labels(code: u16) -> (&'static str, &'static str) {
    let class = match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let code = match code {
        429 => "429",
        503 => "503",
        _ => "other",
    };
    (class, code)
}
