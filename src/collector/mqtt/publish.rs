//! One PUBLISH: topic → parse (the HTTP parser and limits) → the shared acceptance
//! ([`crate::collector::accept`]) → the acknowledgement the connection writes.
//!
//! Acknowledgement means durable: PUBACK (QoS 1) and PUBREC (QoS 2) are answered only once
//! `Queue::publish` returned its durable ack. QoS 2 runs the whole PUBREC/PUBREL/PUBCOMP
//! flow; its exactly-once rests on the queue's content-hash dedupe, as for DUP resends.
//!
//! Refusals (decisions, see README "MQTT"):
//! - MQTT 5: invalid payload → 0x99 Payload format invalid, reason string = the validation
//!   detail (field and rule); another device's event → 0x87 Not authorized; unknown topic →
//!   0x90; queue full or over the rate limit → 0x97 Quota exceeded; queue unavailable →
//!   0x80. Nothing refused is stored.
//! - MQTT 3.1.1 has no negative ack. An invalid payload, or another device's event, is
//!   queued as a *rejected* message (the raw payload and the collector's reason; see
//!   [`crate::event::envelope::encode_rejected`]) that the worker dead-letters with that
//!   reason, then acknowledged: nothing is dropped silently, and `nsready dlq list` shows
//!   it. Queue full/unavailable, over the rate limit, unknown topic, oversized single
//!   event: no ack, the connection closes and the client resends later.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::Instrument as _;
use uuid::Uuid;

use super::MqttConfig;
use super::wire::{Ack, Out, Version};
use crate::collector::Collector;
use crate::collector::accept::{Refusal, outgoing};
use crate::collector::auth::Principal;
use crate::event::envelope::{self, Transport};
use crate::event::{BatchFormat, BatchRules, NormalizedEvent};
use crate::metrics::{ErrorType, EventStatus};
use crate::queue::{Outgoing, Published, Queue, QueueError};
use crate::store::Store;

/// What the connection does once a publish is settled.
#[derive(Debug)]
pub enum Outcome {
    /// QoS 0: nothing to answer.
    Nothing,
    Ack(Out),
    /// 3.1.1 cannot refuse: close without an ack, so the client resends.
    Close(String),
}

/// Result label of a publish (`nsready_mqtt_publishes_total{result}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Result {
    Queued,
    DeadLettered,
    Refused,
    NotStored,
}

/// Why a publish is not queued as an event, before the 3.1.1/5 mapping.
enum Fail {
    Invalid(String),
    Forbidden(String),
    Topic(String),
    Busy(String),
    Unavailable(String),
}

/// Handles one PUBLISH (in a `collector.mqtt_publish{trace_id}` span for a single event).
#[allow(clippy::too_many_arguments)]
pub async fn handle<Q: Queue, S: Store>(
    app: Arc<Collector<Q, S>>,
    cfg: Arc<MqttConfig>,
    principal: Principal,
    version: Version,
    qos: u8,
    pkid: u16,
    topic: String,
    payload: Bytes,
) -> Outcome {
    let started = Instant::now();
    let trace_id = Uuid::new_v4().to_string();
    let span = tracing::info_span!("collector.mqtt_publish", trace_id = %trace_id, qos);
    let r = async {
        if topic == cfg.topic {
            single(&app, principal, &payload, trace_id).await
        } else if topic == cfg.batch_topic {
            batch(&app, principal, &payload).await
        } else {
            Err(Fail::Topic(format!(
                "topic {topic:?} is not served: publish to {:?} or {:?}",
                cfg.topic, cfg.batch_topic
            )))
        }
    }
    .instrument(span)
    .await;
    let (result, ack) = match r {
        // 3.1.1 cannot say which batch items were refused: they go to the DLQ.
        Ok(Some(note)) if version == Version::V311 => match reject(&app, &payload, &note).await {
            Ok(_) => (Result::Queued, Ok(Ack::Success(None))),
            Err(e) => (
                Result::NotStored,
                Err(format!("{note}; and the queue: {e}")),
            ),
        },
        Ok(note) => (Result::Queued, Ok(Ack::Success(note))),
        Err(f) => settle(&app, version, &payload, f).await,
    };
    cfg.stats.publish(qos, result);
    if result == Result::Queued || result == Result::DeadLettered {
        cfg.stats.ack_seconds(started.elapsed().as_secs_f64());
    }
    match (qos, ack) {
        (0, _) => Outcome::Nothing,
        (_, Err(why)) => Outcome::Close(why),
        (1, Ok(a)) => Outcome::Ack(Out::PubAck(pkid, a)),
        (_, Ok(a)) => Outcome::Ack(Out::PubRec(pkid, a)),
    }
}

async fn single<Q: Queue, S: Store>(
    app: &Collector<Q, S>,
    principal: Principal,
    payload: &[u8],
    trace_id: String,
) -> std::result::Result<Option<String>, Fail> {
    if payload.len() > app.max_body {
        return Err(Fail::Invalid(format!(
            "payload: {} bytes is more than INGEST_MAX_BODY_BYTES ({}); publish several events to the batch topic",
            payload.len(),
            app.max_body
        )));
    }
    let event = NormalizedEvent::parse_with(payload, app.window).map_err(|r| {
        app.metrics.error(ErrorType::ValidationError, 1);
        Fail::Invalid(r.detail())
    })?;
    app.accept_one(principal, &event, trace_id, Transport::Mqtt)
        .await
        .map(|_| None)
        .map_err(refusal)
}

fn refusal(r: Refusal) -> Fail {
    match r {
        Refusal::Forbidden { device_id } => Fail::Forbidden(format!(
            "device_id: {device_id} is not the device this connection logged in as"
        )),
        Refusal::RateLimited(_) => {
            Fail::Busy("rate limit: this device sent more than INGEST_RATE_LIMIT allows".into())
        }
        Refusal::Queue(QueueError::Full) => Fail::Busy("queue is full; not stored".into()),
        Refusal::Queue(QueueError::TooLarge { limit, .. }) => Fail::Invalid(format!(
            "payload: the event is larger than the queue's limit of {limit} bytes"
        )),
        Refusal::Queue(e) => Fail::Unavailable(format!("queue is unavailable ({e}); not stored")),
    }
}

/// A batch: valid items queued (one `publish_many`), the rest reported in the reason
/// string (MQTT 5) or dead-lettered with their reasons (3.1.1). Any item the queue did not
/// store fails the whole publish (no ack); the resend stores the others once (dedupe).
async fn batch<Q: Queue, S: Store>(
    app: &Collector<Q, S>,
    principal: Principal,
    payload: &[u8],
) -> std::result::Result<Option<String>, Fail> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    let format = match first {
        Some(b'[') => BatchFormat::JsonArray,
        _ => BatchFormat::Ndjson,
    };
    let rules = BatchRules {
        window: app.window,
        max_item_bytes: app.max_body,
    };
    let mut to_publish = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut forbidden = 0usize;
    let mut throttled = 0usize;
    let total =
        crate::event::parse_batch_each(payload, format, rules, &mut |index, item| match item {
            Ok(event) => match app.admit(principal, &event) {
                Ok(()) => to_publish.push(outgoing(
                    &event,
                    Uuid::new_v4().to_string(),
                    Transport::Mqtt,
                )),
                Err(Refusal::RateLimited(_)) => throttled += 1,
                Err(r) => {
                    forbidden += 1;
                    if let Fail::Forbidden(why) = refusal(r) {
                        problems.push(format!("item {index}: {why}"));
                    }
                }
            },
            Err(r) => {
                app.metrics.error(ErrorType::ValidationError, 1);
                problems.push(format!("item {index}: {}", r.detail()));
            }
        })
        .map_err(|r| Fail::Invalid(r.detail()))?;
    if throttled > 0 {
        return Err(Fail::Busy(format!(
            "rate limit: {throttled} of {total} items over INGEST_RATE_LIMIT; nothing acknowledged"
        )));
    }
    let queued = to_publish.len();
    let started = Instant::now();
    for r in app.queue.publish_many(to_publish).await {
        r.map_err(|e| refusal(Refusal::Queue(e)))?;
    }
    app.metrics.publish_seconds(started.elapsed().as_secs_f64());
    app.metrics.events(EventStatus::Queued, queued as u64);
    if problems.is_empty() {
        return Ok(None);
    }
    let summary = format!(
        "{} of {total} items not queued: {}",
        problems.len(),
        problems
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    );
    if queued == 0 && forbidden == problems.len() {
        return Err(Fail::Forbidden(summary));
    }
    if queued == 0 {
        return Err(Fail::Invalid(summary));
    }
    // Some queued: success, with the rejected items named (5); 3.1.1 dead-letters them.
    Ok(Some(summary))
}

/// Maps a failure to the acknowledgement (5), or dead-letters it first (3.1.1); `Err`: close
/// the connection without an ack.
async fn settle<Q: Queue, S: Store>(
    app: &Collector<Q, S>,
    version: Version,
    payload: &[u8],
    f: Fail,
) -> (Result, std::result::Result<Ack, String>) {
    match (version, f) {
        (Version::V5, Fail::Invalid(s)) => (Result::Refused, Ok(Ack::PayloadFormatInvalid(s))),
        (Version::V5, Fail::Forbidden(s)) => (Result::Refused, Ok(Ack::NotAuthorized(s))),
        (Version::V5, Fail::Topic(s)) => (Result::Refused, Ok(Ack::TopicNameInvalid(s))),
        (Version::V5, Fail::Busy(s)) => (Result::NotStored, Ok(Ack::QuotaExceeded(s))),
        (Version::V5, Fail::Unavailable(s)) => (Result::NotStored, Ok(Ack::Unspecified(s))),
        (Version::V311, Fail::Invalid(s) | Fail::Forbidden(s)) => {
            if payload.len() > app.max_body {
                return (Result::NotStored, Err(s));
            }
            match reject(app, payload, &s).await {
                Ok(_) => (Result::DeadLettered, Ok(Ack::Success(None))),
                Err(e) => (Result::NotStored, Err(format!("{s}; and the queue: {e}"))),
            }
        }
        (Version::V311, Fail::Topic(s) | Fail::Busy(s) | Fail::Unavailable(s)) => {
            (Result::NotStored, Err(s))
        }
    }
}

/// Queues a payload the collector refused as a *rejected* message: the worker dead-letters
/// it with `reason` (3.1.1's only way to refuse without losing it).
async fn reject<Q: Queue, S: Store>(
    app: &Collector<Q, S>,
    payload: &[u8],
    reason: &str,
) -> std::result::Result<Published, QueueError> {
    let trace_id = Uuid::new_v4().to_string();
    let (body, msg_id) = envelope::encode_rejected(&trace_id, payload, reason);
    app.queue
        .publish(Outgoing {
            msg_id,
            trace_id,
            payload: Bytes::from(body),
        })
        .await
}
