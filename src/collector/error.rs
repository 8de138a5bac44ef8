//! HTTP answers of the collector: the one place that maps outcomes to status codes.
//! [`ApiError`] covers every refusal (with its body); [`Reply`] every other answer (queued,
//! a batch report, health, readiness, metrics). Handlers return one of the two and never
//! spell a status code (`scripts/check` greps for it).
//!
//! Bodies are `{"detail": "...", "errors": [...]}`; they name the field and the rule and never
//! carry SQL, driver names, stack traces or internal paths (the cause goes to the log).

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::event::Rejection;
use crate::queue::QueueError;

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u32 = 1;

/// Why an ingest request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Schema violation or malformed JSON: 400, naming each field.
    #[error("invalid event: {}", .0.detail())]
    Invalid(Rejection),
    /// Body larger than the configured limit: 413.
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// Content type other than JSON (or NDJSON for batches): 415.
    #[error("unsupported content type `{0}`")]
    UnsupportedType(String),
    /// Content encoding other than gzip or identity: 415.
    #[error("unsupported content encoding `{0}`")]
    UnsupportedEncoding(String),
    /// The whole body did not arrive within `HTTP_BODY_TIMEOUT`: 408, connection closed.
    #[error("body not received within {} ms", .timeout.as_millis())]
    BodyTimeout { timeout: Duration },
    /// The body could not be read (connection reset or closed half-way, malformed chunked
    /// encoding): 400, connection closed. Not 413: that is only for the length limit.
    #[error("body could not be read: {0}")]
    BodyRead(#[source] axum::Error),
    /// More than `HTTP_MAX_INFLIGHT` ingest requests in progress: 503 with Retry-After.
    #[error("more ingest requests in progress than HTTP_MAX_INFLIGHT allows")]
    Overloaded,
    /// The bodies in progress hold `INGEST_MAX_INFLIGHT_BYTES`: 503 with Retry-After.
    #[error("request bodies in progress hold the byte budget")]
    OverBudget,
    /// Auth is on and the bearer token is missing or wrong: 401.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The request's token authorizes another device than the event's: 403 (the device id
    /// is the event's own, never the token or the device the token belongs to).
    #[error("the token does not authorize device {device_id}")]
    Forbidden { device_id: uuid::Uuid },
    /// The device is over INGEST_RATE_LIMIT: 429 with Retry-After (whole seconds).
    #[error("device over INGEST_RATE_LIMIT; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    /// The queue is full or unreachable: 503 with Retry-After.
    #[error("queue unavailable: {0}")]
    Unavailable(QueueError),
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            // The event is too large for the queue: no retry can help, so 413, not 503.
            QueueError::TooLarge { limit, .. } => ApiError::TooLarge { limit },
            other => ApiError::Unavailable(other),
        }
    }
}

impl ApiError {
    /// The answer's status code.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) | ApiError::BodyRead(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::Overloaded | ApiError::OverBudget => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedType(_) | ApiError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The answer's body: what a client may see (never driver text).
    pub fn body(&self) -> serde_json::Value {
        match self {
            ApiError::Invalid(r) => json!({"detail": r.detail(), "errors": r.errors()}),
            ApiError::TooLarge { limit } => json!({
                "detail": format!("body: larger than the limit of {limit} bytes (INGEST_MAX_BODY_BYTES / INGEST_MAX_BATCH_BYTES)"),
                "errors": [{"loc": ["body"], "msg": format!("must be at most {limit} bytes")}],
            }),
            ApiError::BodyTimeout { timeout } => {
                let secs = timeout.as_secs_f64();
                json!({
                    "detail": format!("body: not received in full within {secs} s (HTTP_BODY_TIMEOUT); nothing was queued"),
                    "errors": [{"loc": ["body"], "msg": format!("must arrive within {secs} s")}],
                })
            }
            ApiError::BodyRead(_) => json!({
                "detail": "body: could not be read (connection closed or reset, truncated or malformed chunked encoding); nothing was queued",
                "errors": [{"loc": ["body"], "msg": "must be a complete HTTP request body"}],
            }),
            ApiError::Overloaded => json!({
                "detail": "server busy: too many ingest requests in progress (HTTP_MAX_INFLIGHT); nothing was queued, retry later",
            }),
            ApiError::OverBudget => json!({
                "detail": "server busy: the request bodies in progress hold INGEST_MAX_INFLIGHT_BYTES; nothing was queued, retry later",
            }),
            ApiError::UnsupportedType(t) => json!({
                "detail": format!("content-type: `{t}` is not supported; send application/json (or application/x-ndjson to /v1/ingest/batch)"),
                "errors": [{"loc": ["headers", "content-type"], "msg": "must be application/json"}],
            }),
            ApiError::UnsupportedEncoding(e) => json!({
                "detail": format!("content-encoding: `{e}` is not supported; send gzip or no encoding"),
                "errors": [{"loc": ["headers", "content-encoding"], "msg": "must be gzip or identity"}],
            }),
            ApiError::Unauthorized => json!({
                "detail": "authorization: missing or invalid bearer token",
                "errors": [{"loc": ["headers", "authorization"], "msg": "must be `Bearer <token>` with a valid token"}],
            }),
            ApiError::Forbidden { device_id } => json!({
                "detail": format!("device_id: the bearer token does not authorize device {device_id}; nothing was queued"),
                "errors": [{"loc": ["device_id"], "msg": "must be the device the token was created for"}],
            }),
            ApiError::RateLimited { retry_after } => json!({
                "detail": format!("rate limit: this device sent more than INGEST_RATE_LIMIT allows; nothing was queued, retry after {retry_after} s"),
            }),
            ApiError::Unavailable(QueueError::Full) => json!({
                "detail": "queue is full; nothing was queued, retry later",
            }),
            ApiError::Unavailable(_) => json!({
                "detail": "queue is unavailable; nothing was queued, retry later",
            }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "ingest answered 503"),
            ApiError::Overloaded => {
                tracing::warn!("ingest answered 503: HTTP_MAX_INFLIGHT reached")
            }
            ApiError::OverBudget => {
                tracing::warn!("ingest answered 503: INGEST_MAX_INFLIGHT_BYTES reached")
            }
            ApiError::BodyRead(e) => tracing::debug!(error = %e, "ingest body unreadable"),
            other => tracing::debug!(error = %other, "ingest rejected"),
        }
        let mut resp = (self.status(), Json(self.body())).into_response();
        if matches!(
            self,
            ApiError::Unavailable(_) | ApiError::Overloaded | ApiError::OverBudget
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        match &self {
            ApiError::Unauthorized => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited { retry_after } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        if matches!(
            self,
            ApiError::BodyTimeout { .. } | ApiError::BodyRead(_) | ApiError::OverBudget
        ) {
            // The rest of the body is not read: the connection cannot carry another request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// How a batch request ended, as its `"status"` field says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchStatus {
    /// At least one item queued, none refused by the queue: 200.
    Queued,
    /// No valid item, so nothing was queued: 400 (retrying the same body cannot help).
    Rejected,
    /// The queue refused part of it (full or unreachable): 503 with Retry-After; the
    /// `results` say which items were queued.
    Partial,
    /// Nothing queued, every item for a device the request's token does not authorize:
    /// 403 (`"status":"rejected"`).
    Forbidden,
    /// Nothing queued, and the per-device rate limit is why for some items: 429 with this
    /// `Retry-After` (whole seconds).
    RateLimited(u64),
}

impl BatchStatus {
    /// The `"status"` value of the report.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStatus::Queued => "queued",
            BatchStatus::Rejected => "rejected",
            BatchStatus::Partial => "partial",
            BatchStatus::Forbidden => "rejected",
            BatchStatus::RateLimited(_) => "rate_limited",
        }
    }
}

/// Every answer of the collector that is not an [`ApiError`].
#[derive(Debug)]
pub enum Reply {
    /// One event queued: 200 with this (already serialized, one line) JSON body.
    Queued(String),
    /// A batch report.
    Batch(BatchStatus, serde_json::Value),
    /// `/v1/health`: always 200; the body says how healthy.
    Health(serde_json::Value),
    /// `/v1/ready`: 200, or 503 with the reason.
    Ready(Result<(), &'static str>),
    /// `/metrics` in the OpenMetrics text format.
    Metrics(String),
    /// A file of the status page, embedded in the binary: 200 with its content type and a
    /// strict Content-Security-Policy (same-origin scripts, styles and fetches only).
    Page {
        content_type: &'static str,
        body: &'static str,
    },
    /// `/v1/status`, the status page's JSON: always 200.
    Status(serde_json::Value),
}

/// The status page's policy: its own script, style and JSON, nothing inline, no frames.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::Queued(body) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Reply::Batch(status, body) => {
                let code = match status {
                    BatchStatus::Queued => StatusCode::OK,
                    BatchStatus::Rejected => StatusCode::BAD_REQUEST,
                    BatchStatus::Partial => StatusCode::SERVICE_UNAVAILABLE,
                    BatchStatus::Forbidden => StatusCode::FORBIDDEN,
                    BatchStatus::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
                };
                let mut resp = (code, Json(body)).into_response();
                let retry_after = match status {
                    BatchStatus::Partial => Some(u64::from(RETRY_AFTER_SECS)),
                    BatchStatus::RateLimited(secs) => Some(secs),
                    _ => None,
                };
                if let Some(secs) = retry_after {
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                resp
            }
            Reply::Health(body) => (StatusCode::OK, Json(body)).into_response(),
            Reply::Ready(Ok(())) => (StatusCode::OK, Json(json!({"ready": true}))).into_response(),
            Reply::Ready(Err(reason)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"ready": false, "reason": reason})),
            )
                .into_response(),
            Reply::Metrics(text) => (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                text,
            )
                .into_response(),
            Reply::Page { content_type, body } => (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CONTENT_SECURITY_POLICY, PAGE_CSP),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    (header::REFERRER_POLICY, "no-referrer"),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
                .into_response(),
            Reply::Status(body) => (
                StatusCode::OK,
                [(header::CACHE_CONTROL, "no-store")],
                Json(body),
            )
                .into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_problems_name_body_and_close_the_connection() {
        let timeout = ApiError::BodyTimeout {
            timeout: Duration::from_secs(30),
        };
        let unreadable = ApiError::BodyRead(axum::Error::new(std::io::Error::other(
            "tokio-postgres driver text must never show",
        )));
        for (e, status) in [
            (timeout, StatusCode::REQUEST_TIMEOUT),
            (unreadable, StatusCode::BAD_REQUEST),
        ] {
            let body = e.body();
            assert_eq!(body["errors"][0]["loc"][0], "body", "{body}");
            assert!(!body.to_string().contains("driver"), "{body}");
            let resp = e.into_response();
            assert_eq!(resp.status(), status);
            assert_eq!(
                resp.headers().get(header::CONNECTION).map(|v| v.as_bytes()),
                Some(&b"close"[..])
            );
        }
    }

    #[test]
    fn auth_refusals_carry_their_headers_and_name_the_field() {
        let resp = ApiError::Unauthorized.into_response();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            resp.headers()
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        let device_id = uuid::Uuid::new_v4();
        let e = ApiError::Forbidden { device_id };
        assert_eq!(e.body()["errors"][0]["loc"][0], "device_id");
        assert_eq!(e.into_response().status(), StatusCode::FORBIDDEN);
        let resp = ApiError::RateLimited { retry_after: 2 }.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            resp.headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"2"[..])
        );
    }

    #[test]
    fn overload_is_503_with_retry_after() {
        let resp = ApiError::Overloaded.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().get(header::RETRY_AFTER).is_some());
    }

    #[test]
    fn batch_outcomes_map_to_their_codes() {
        let cases = [
            (BatchStatus::Queued, StatusCode::OK, false),
            (BatchStatus::Rejected, StatusCode::BAD_REQUEST, false),
            (BatchStatus::Partial, StatusCode::SERVICE_UNAVAILABLE, true),
            (BatchStatus::Forbidden, StatusCode::FORBIDDEN, false),
            (
                BatchStatus::RateLimited(3),
                StatusCode::TOO_MANY_REQUESTS,
                true,
            ),
        ];
        for (status, code, retry_after) in cases {
            let resp = Reply::Batch(status, json!({"status": status.as_str()})).into_response();
            assert_eq!(resp.status(), code, "{status:?}");
            assert_eq!(
                resp.headers().contains_key(header::RETRY_AFTER),
                retry_after,
                "{status:?}"
            );
        }
        let limited = Reply::Batch(BatchStatus::RateLimited(3), json!({})).into_response();
        assert_eq!(
            limited
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        let ready = Reply::Ready(Err("queue unreachable")).into_response();
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
