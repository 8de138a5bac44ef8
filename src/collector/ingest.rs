//! `POST /v1/ingest` and `POST /v1/ingest/batch`: check shape, publish, answer.
//!
//! The collector checks shape only (registry checks belong to the worker, so ingest never
//! waits on the database). It answers 200 only after the queue has durably stored the
//! message; a full or unreachable queue gives 503 with Retry-After. Batch items are
//! independent: valid ones are queued, invalid ones reported by index.

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use uuid::Uuid;

use super::Collector;
use super::error::{ApiError, RETRY_AFTER_SECS};
use crate::event::envelope;
use crate::event::{BatchFormat, NormalizedEvent};
use crate::metrics::{ErrorType, EventStatus};
use crate::queue::{Outgoing, Queue, QueueError};
use crate::store::Store;

/// One event: 200 `{"status":"queued","trace_id":..}` once the queue holds it.
pub async fn ingest<Q: Queue, S: Store>(
    State(app): State<Arc<Collector<Q, S>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    app.authorize(&headers)?;
    match media_type(&headers).as_deref() {
        None | Some("application/json") => {}
        Some(t) if t.ends_with("+json") => {}
        Some(t) => return Err(ApiError::UnsupportedType(t.to_string())),
    }
    let bytes = read_body(&headers, body, app.max_body).await?;
    let event = NormalizedEvent::parse(&bytes).map_err(|r| {
        app.metrics.error(ErrorType::ValidationError, 1);
        ApiError::Invalid(r)
    })?;
    let (trace_id, msg) = outgoing(&event);
    let started = Instant::now();
    app.queue.publish(msg).await?;
    app.metrics.publish_seconds(started.elapsed().as_secs_f64());
    app.metrics.events(EventStatus::Queued, 1);
    // `status` first, compact, one line (DESIGN.md §4).
    let body = format!(r#"{{"status":"queued","trace_id":"{trace_id}"}}"#);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// Many events: valid ones queued, invalid ones reported with their index.
pub async fn ingest_batch<Q: Queue, S: Store>(
    State(app): State<Arc<Collector<Q, S>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    app.authorize(&headers)?;
    let format = match media_type(&headers).as_deref() {
        None | Some("application/json") => BatchFormat::JsonArray,
        Some("application/x-ndjson" | "application/ndjson" | "application/jsonlines") => {
            BatchFormat::Ndjson
        }
        Some(t) if t.ends_with("+json") => BatchFormat::JsonArray,
        Some(t) => return Err(ApiError::UnsupportedType(t.to_string())),
    };
    let bytes = read_body(&headers, body, app.max_batch).await?;
    let items = crate::event::parse_batch(&bytes, format).map_err(ApiError::Invalid)?;

    let mut results: Vec<Value> = Vec::with_capacity(items.len());
    let mut to_publish = Vec::new();
    let mut slots = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Ok(event) => {
                let (trace_id, msg) = outgoing(&event);
                slots.push((index, trace_id));
                to_publish.push(msg);
                results.push(Value::Null);
            }
            Err(r) => {
                results.push(
                    json!({"index": index, "error": {"detail": r.detail(), "errors": r.errors()}}),
                );
            }
        }
    }
    let rejected = results.len() - slots.len();
    if rejected > 0 {
        app.metrics
            .error(ErrorType::ValidationError, rejected as u64);
    }
    let started = Instant::now();
    let published = app.queue.publish_many(to_publish).await;
    app.metrics.publish_seconds(started.elapsed().as_secs_f64());
    let mut accepted = 0usize;
    let mut unavailable: Option<QueueError> = None;
    for ((index, trace_id), r) in slots.into_iter().zip(published) {
        results[index] = match r {
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
    let body = json!({
        "status": if unavailable.is_some() { "partial" } else { "queued" },
        "accepted": accepted,
        "rejected": not_queued,
        "results": results,
    });
    if let Some(e) = unavailable {
        tracing::warn!(error = %e, accepted, "batch partly refused by the queue: 503");
        let mut resp = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        resp.headers_mut()
            .insert(header::RETRY_AFTER, RETRY_AFTER_SECS.into());
        return Ok(resp);
    }
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// The queue message for one event, and its trace id.
fn outgoing(event: &NormalizedEvent) -> (String, Outgoing) {
    let trace_id = Uuid::new_v4().to_string();
    // Identical content gives the same id: a client retry inside the duplicate window is
    // stored once.
    let (payload, msg_id) = envelope::encode_with_id(&trace_id, event);
    let payload = Bytes::from(payload);
    let msg = Outgoing {
        msg_id,
        trace_id: trace_id.clone(),
        payload,
    };
    (trace_id, msg)
}

/// The media type of the request, lower-case, without parameters.
fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty())
}

/// Reads the body up to `limit` bytes, inflating gzip (also bounded by `limit`).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let raw = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge { limit })?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("" | "identity") => Ok(raw),
        Some("gzip" | "x-gzip") => {
            let mut out = Vec::with_capacity(raw.len() * 4);
            // Bounded read: a small compressed body cannot expand past the limit.
            let mut dec = flate2::read::GzDecoder::new(&raw[..]).take(limit as u64 + 1);
            dec.read_to_end(&mut out).map_err(|_| {
                ApiError::Invalid(crate::event::Rejection::new(vec![
                    crate::event::FieldError {
                        loc: vec![crate::event::Loc::Key("body".into())],
                        msg: "is not valid gzip data".into(),
                    },
                ]))
            })?;
            if out.len() > limit {
                return Err(ApiError::TooLarge { limit });
            }
            Ok(Bytes::from(out))
        }
        Some(other) => Err(ApiError::UnsupportedEncoding(other.to_string())),
    }
}
