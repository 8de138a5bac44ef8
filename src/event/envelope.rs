//! The queue message body: `{"trace_id":..,"event":{..},"config_version":..}` (the seed's
//! format). Encoded by the collector, decoded and fully re-checked by the worker, since
//! other producers may publish straight to the subject.
//!
//! Also the queue's dedupe id ([`message_id`]): a hash of the event's canonical JSON, so a
//! client's identical retry maps to the same `Nats-Msg-Id` whatever its key order or spacing.

use std::fmt;
use std::io;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::canonical::Canonical;
use super::parse::{self, Clock};
use super::raw::{self, EventField, RawEnvelope, Text, Top};
use super::{NormalizedEvent, TimeWindow};

/// `error_type` of a message that is not JSON (or not UTF-8).
pub const JSON_DECODE: &str = "json_decode";
/// `error_type` of JSON that is neither an envelope with an `event` object nor a bare event.
pub const INVALID_FORMAT: &str = "invalid_format";
/// `error_type` of an event that breaks a rule of the event model.
pub const VALIDATION_ERROR: &str = "validation_error";

/// Why a queue message cannot be processed (permanent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub error_type: &'static str,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// A decoded queue message.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub trace_id: Option<String>,
    pub event: NormalizedEvent,
}

#[derive(Serialize)]
struct Envelope<'a> {
    trace_id: &'a str,
    event: Canonical<'a>,
    config_version: Option<&'a str>,
}

/// `{"trace_id":"..","event":{..},"config_version":..}` (seed format; `config_version` is the
/// event's, or null). The event is in its canonical form.
pub fn encode(trace_id: &str, event: &NormalizedEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(320 + 128 * event.metrics.len());
    serde_json::to_writer(
        &mut out,
        &Envelope {
            trace_id,
            event: Canonical(event),
            config_version: event.config_version.as_deref(),
        },
    )
    .expect("an envelope serializes: writing to a Vec cannot fail and every key is a string");
    out
}

/// Accepts the envelope, or a bare event object (one without an `event` key) published by
/// another producer. A string `trace_id` beside the event is kept; any other is ignored.
///
/// # Errors
/// `error_type` is `json_decode` for non-JSON or invalid UTF-8, `invalid_format` when the
/// message is not an object, or has an `event` that is not an object, or has neither `event`
/// nor any event field; `validation_error` when the event breaks a rule (the reason is
/// [`super::Rejection::detail`]).
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    decode_with(bytes, TimeWindow::UNBOUNDED)
}

/// As [`decode`], and the event's timestamp must also fall inside `window`, judged now (the
/// worker's check of messages that may come from producers other than the collector).
///
/// # Errors
/// As [`decode`].
pub fn decode_with(bytes: &[u8], window: TimeWindow) -> Result<Decoded, DecodeError> {
    if parse::is_blank(bytes) {
        return Err(DecodeError {
            error_type: JSON_DECODE,
            reason: "message body is empty".to_owned(),
        });
    }
    let envelope = match raw::from_slice::<RawEnvelope<'_>>(bytes) {
        Ok(Top::Object(envelope)) => envelope,
        Ok(Top::NotObject) => return Err(invalid_format("message must be a JSON object")),
        Err(e) => {
            return Err(DecodeError {
                error_type: JSON_DECODE,
                reason: parse::malformed_json_message(&e, 0),
            });
        }
    };
    let trace_id = match envelope.trace_id {
        Text::Str(s) => Some(s.into_owned()),
        _ => None,
    };
    if let Text::Str(reason) = envelope.rejected {
        return Err(DecodeError {
            error_type: VALIDATION_ERROR,
            reason: format!("refused by the collector: {reason}"),
        });
    }
    let event = match envelope.event {
        EventField::Object(event) => event,
        EventField::Other => {
            return Err(invalid_format(
                "envelope field \"event\" must be a JSON object",
            ));
        }
        EventField::Absent if envelope.top.has_event_fields() => envelope.top,
        EventField::Absent => {
            return Err(invalid_format(
                "message is neither an envelope with an \"event\" object nor an event",
            ));
        }
    };
    let event =
        parse::event_from_raw(event, &Clock::now(window)).map_err(|rejection| DecodeError {
            error_type: VALIDATION_ERROR,
            reason: rejection.detail(),
        })?;
    Ok(Decoded { trace_id, event })
}

fn invalid_format(reason: &str) -> DecodeError {
    DecodeError {
        error_type: INVALID_FORMAT,
        reason: reason.to_owned(),
    }
}

/// Feeds serialized bytes straight into the hash.
struct HashWriter(Sha256);

impl io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// [`encode`] and [`message_id`] in one pass: the canonical event is serialized once, hashed,
/// and wrapped in the envelope (the collector's hot path). Gives exactly the bytes of
/// `encode` and the id of `message_id`.
pub fn encode_with_id(trace_id: &str, event: &NormalizedEvent) -> (Vec<u8>, String) {
    let mut canonical = Vec::with_capacity(256 + 128 * event.metrics.len());
    serde_json::to_writer(&mut canonical, &Canonical(event))
        .expect("an event serializes: writing to a Vec cannot fail and every key is a string");
    let id = hex::encode(&Sha256::digest(&canonical)[..16]);
    let mut out = Vec::with_capacity(canonical.len() + 96);
    out.extend_from_slice(b"{\"trace_id\":");
    serde_json::to_writer(&mut out, trace_id).expect("a string serializes into a Vec");
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(&canonical);
    out.extend_from_slice(b",\"config_version\":");
    serde_json::to_writer(&mut out, &event.config_version.as_deref())
        .expect("an optional string serializes into a Vec");
    out.push(b'}');
    (out, id)
}

/// How an event reached the collector; recorded in the envelope as `"transport"` for every
/// transport but HTTP (absent = HTTP, so older messages decode unchanged; decoders ignore it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Http,
    Mqtt,
}

/// [`encode_with_id`], with `"transport":"MQTT"` added for MQTT (the id is the same: a
/// resend over another transport is still the same event).
pub fn encode_with_id_via(
    trace_id: &str,
    event: &NormalizedEvent,
    transport: Transport,
) -> (Vec<u8>, String) {
    let (mut out, id) = encode_with_id(trace_id, event);
    if transport == Transport::Mqtt && out.pop() == Some(b'}') {
        out.extend_from_slice(br#","transport":"MQTT"}"#);
    }
    (out, id)
}

/// A payload the collector refused but must not drop (MQTT 3.1.1 has no negative ack):
/// `{"trace_id":..,"transport":"MQTT","rejected":"<reason>","payload":"<raw, lossy UTF-8>"}`.
/// [`decode`] turns any message with a string `rejected` into a permanent
/// `validation_error` with that reason, whoever published it: it can only become a dead
/// letter. The id hashes payload and reason, so a resend is stored once.
pub fn encode_rejected(trace_id: &str, payload: &[u8], reason: &str) -> (Vec<u8>, String) {
    let mut h = Sha256::new();
    h.update(b"rejected\0");
    h.update(reason.as_bytes());
    h.update(b"\0");
    h.update(payload);
    let id = hex::encode(&h.finalize()[..16]);
    let body = serde_json::json!({
        "trace_id": trace_id,
        "transport": "MQTT",
        "rejected": reason,
        "payload": String::from_utf8_lossy(payload),
    });
    (body.to_string().into_bytes(), id)
}

/// Deduplication id for the queue (`Nats-Msg-Id`): the first 32 hex characters of the
/// SHA-256 of the event's canonical JSON. Identical retries get the same id; any difference
/// in content gives another.
pub fn message_id(event: &NormalizedEvent) -> String {
    let mut hasher = HashWriter(Sha256::new());
    serde_json::to_writer(&mut hasher, &Canonical(event))
        .expect("an event serializes: the hash writer cannot fail and every key is a string");
    let digest = hasher.0.finalize();
    hex::encode(&digest[..16])
}
