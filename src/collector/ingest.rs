//! `POST /v1/ingest` and `POST /v1/ingest/batch`: check shape, publish, answer.
//!
//! The collector checks shape only (registry checks belong to the worker, so ingest never
//! waits on the database). It answers 200 only after the queue has durably stored the
//! message; a full or unreachable queue gives 503 with Retry-After. Batch items are
//! independent: valid ones are queued, invalid ones reported by index.
//!
//! Authentication comes first (401 before the body is read); then, per event, the token's
//! device must be the event's (403 for a single event, a per-item error in a batch) and
//! the device must be within the rate limit (429 + Retry-After for a single event; in a
//! batch a per-item error marked retryable, and 429 + Retry-After for the whole answer when
//! nothing was queued because of it).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use super::Collector;
use super::accept::{Refusal, outgoing};
use super::body::{media_type, read_body};
use super::error::{ApiError, BatchStatus, Reply};
use super::rate::retry_after_secs;
use crate::event::envelope::Transport;
use crate::event::{BatchFormat, BatchRules, NormalizedEvent};
use crate::metrics::{ErrorType, EventStatus, RefusalReason};
use crate::queue::{Queue, QueueError};
use crate::store::Store;
use tracing::Instrument;

/// One event: 200 `{"status":"queued","trace_id":..}` once the queue holds it. Runs in a
/// `collector.ingest{trace_id}` span, so every log line of the request carries the id the
/// client gets back.
pub async fn ingest<Q: Queue, S: Store>(
    State(app): State<Arc<Collector<Q, S>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let trace_id = Uuid::new_v4().to_string();
    let span = tracing::info_span!("collector.ingest", trace_id = %trace_id);
    ingest_one(app, headers, body, trace_id)
        .instrument(span)
        .await
}

async fn ingest_one<Q: Queue, S: Store>(
    app: Arc<Collector<Q, S>>,
    headers: HeaderMap,
    body: Body,
    trace_id: String,
) -> Result<Response, ApiError> {
    let principal = app.authorize(&headers)?;
    match media_type(&headers).as_deref() {
        None | Some("application/json") => {}
        Some(t) if t.ends_with("+json") => {}
        Some(t) => return Err(ApiError::UnsupportedType(t.to_string())),
    }
    // Held until the answer: the body, the event and its queue message live that long.
    let mut held = app.body_budget.reservation();
    let bytes = read_body(&headers, body, app.max_body, app.body_timeout, &mut held).await?;
    let event = NormalizedEvent::parse_with(&bytes, app.window).map_err(|r| {
        app.metrics.error(ErrorType::ValidationError, 1);
        ApiError::Invalid(r)
    })?;
    app.accept_one(principal, &event, trace_id.clone(), Transport::Http)
        .await
        .map_err(|r| match r {
            Refusal::Forbidden { device_id } => ApiError::Forbidden { device_id },
            Refusal::RateLimited(wait) => ApiError::RateLimited {
                retry_after: retry_after_secs(wait),
            },
            Refusal::Queue(e) => ApiError::from(e),
        })?;
    // `status` first, compact, one line (DESIGN.md §4).
    Ok(Reply::Queued(format!(r#"{{"status":"queued","trace_id":"{trace_id}"}}"#)).into_response())
}

/// Rejected batch items reported with their full error list; later ones get only their
/// one-sentence `detail`, so the report stays a small multiple of the limits whatever the
/// body holds (10,000 invalid items answer with about 1 MB, not one error list each).
pub const MAX_DETAILED_REJECTIONS: usize = 100;

/// Errors listed per detailed batch item (the `detail` counts the rest).
pub const MAX_ERRORS_PER_ITEM: usize = 10;

/// Many events: valid ones queued, invalid ones reported with their index (in a
/// `collector.ingest_batch` span; each item's trace id is in the answer).
pub async fn ingest_batch<Q: Queue, S: Store>(
    State(app): State<Arc<Collector<Q, S>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let span = tracing::info_span!("collector.ingest_batch");
    ingest_many(app, headers, body).instrument(span).await
}

async fn ingest_many<Q: Queue, S: Store>(
    app: Arc<Collector<Q, S>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let principal = app.authorize(&headers)?;
    let format = match media_type(&headers).as_deref() {
        None | Some("application/json") => BatchFormat::JsonArray,
        Some("application/x-ndjson" | "application/ndjson" | "application/jsonlines") => {
            BatchFormat::Ndjson
        }
        Some(t) if t.ends_with("+json") => BatchFormat::JsonArray,
        Some(t) => return Err(ApiError::UnsupportedType(t.to_string())),
    };
    let mut held = app.body_budget.reservation();
    let bytes = read_body(&headers, body, app.max_batch, app.body_timeout, &mut held).await?;
    let rules = BatchRules {
        window: app.window,
        max_item_bytes: app.max_body,
    };
    // Each item is encoded as soon as it is parsed: the parsed events are never all alive
    // at once, only their queue messages.
    let mut results: Vec<Value> = Vec::new();
    let mut to_publish = Vec::new();
    let mut slots = Vec::new();
    let mut rejected = 0usize;
    let mut forbidden = 0u64;
    let mut limited = 0u64;
    let mut longest_wait = std::time::Duration::ZERO;
    crate::event::parse_batch_each(&bytes, format, rules, &mut |index, item| match item {
        Ok(event) => {
            if !principal.allows(event.device_id()) {
                forbidden += 1;
                let e = ApiError::Forbidden {
                    device_id: event.device_id(),
                };
                results.push(json!({"index": index, "error": e.body()}));
                return;
            }
            if let Err(wait) = app.rate_check(&event.device_id()) {
                longest_wait = longest_wait.max(wait);
                limited += 1;
                results.push(json!({"index": index, "error": {
                    "detail": "rate limit: this device sent more than INGEST_RATE_LIMIT allows; not queued, retry later",
                    "retryable": true,
                }}));
                return;
            }
            let trace_id = Uuid::new_v4().to_string();
            let msg = outgoing(&event, trace_id.clone(), Transport::Http);
            slots.push((index, trace_id));
            to_publish.push(msg);
            results.push(Value::Null);
        }
        Err(r) => {
            let error = if rejected < MAX_DETAILED_REJECTIONS {
                let errors = &r.errors()[..r.errors().len().min(MAX_ERRORS_PER_ITEM)];
                json!({"detail": r.detail(), "errors": errors})
            } else {
                json!({"detail": r.detail()})
            };
            rejected += 1;
            results.push(json!({"index": index, "error": error}));
        }
    })
    .map_err(ApiError::Invalid)?;
    drop(bytes);
    if rejected > 0 {
        app.metrics
            .error(ErrorType::ValidationError, rejected as u64);
    }
    if forbidden > 0 {
        app.metrics.refused(RefusalReason::Forbidden, forbidden);
    }
    if limited > 0 {
        app.metrics.refused(RefusalReason::RateLimited, limited);
    }
    let started = Instant::now();
    let published = app.queue.publish_many(to_publish).await;
    app.metrics.publish_seconds(started.elapsed().as_secs_f64());
    let mut accepted = 0usize;
    let mut unavailable: Option<QueueError> = None;
    for ((index, trace_id), r) in slots.into_iter().zip(published) {
        let Some(slot) = results.get_mut(index) else {
            continue;
        };
        *slot = match r {
            Ok(_) => {
                accepted += 1;
                json!({"index": index, "trace_id": trace_id})
            }
            Err(QueueError::TooLarge { limit, .. }) => json!({"index": index, "error": {
                "detail": format!("body: the event is larger than the queue's limit of {limit} bytes"),
                "retryable": false,
            }}),
            Err(e) => {
                let detail = match e {
                    QueueError::Full => "queue is full; not queued, retry later",
                    _ => "queue is unavailable; not queued, retry later",
                };
                unavailable.get_or_insert(e);
                json!({"index": index, "error": {"detail": detail, "retryable": true}})
            }
        };
    }
    app.metrics.events(EventStatus::Queued, accepted as u64);
    let not_queued = results.len() - accepted;
    // Nothing valid: 400 with status "rejected", so a client that only looks at the HTTP
    // status learns that nothing was queued (and that retrying the same body cannot help).
    let all_rejected = accepted == 0 && unavailable.is_none();
    // Nothing queued and the rate limit is why for some: 429, so a client backs off.
    let throttled = all_rejected && limited > 0;
    let status = match (&unavailable, all_rejected) {
        (Some(_), _) => BatchStatus::Partial,
        (None, true) if throttled => BatchStatus::RateLimited(retry_after_secs(longest_wait)),
        // Every item was for a device the token does not cover.
        (None, true) if forbidden > 0 && forbidden as usize == not_queued => BatchStatus::Forbidden,
        (None, true) => BatchStatus::Rejected,
        (None, false) => BatchStatus::Queued,
    };
    let body = json!({
        "status": status.as_str(),
        "accepted": accepted,
        "rejected": not_queued,
        "results": results,
    });
    if let Some(e) = unavailable {
        tracing::warn!(error = %e, accepted, "batch partly refused by the queue: 503");
    }
    Ok(Reply::Batch(status, body).into_response())
}
