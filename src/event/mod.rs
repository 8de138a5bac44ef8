//! The event model: `NormalizedEvent` v1.0 as DESIGN.md §4 defines it, parsed from untrusted
//! JSON into types that cannot hold an invalid event ("parse, don't validate").
//!
//! The collector and the worker call the same [`NormalizedEvent::parse`]; the queue envelope
//! (`{"trace_id":..,"event":{..},"config_version":..}`) lives in [`envelope`]. Registry checks
//! (does the device exist?) are not here: they belong to the worker.

pub mod envelope;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// Most metrics one event may carry.
pub const MAX_METRICS: usize = 10_000;

/// One part of an error location: an object key or an array index (`["metrics",0,"quality"]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Loc {
    Key(String),
    Index(usize),
}

/// One problem with the input: where it is and which rule it breaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub loc: Vec<Loc>,
    pub msg: String,
}

/// Why an event (or a whole body) was refused: every problem found, in document order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    errors: Vec<FieldError>,
}

/// A valid telemetry event. Every field was checked by `parse`.
#[derive(Clone, Debug, PartialEq)]
pub struct NormalizedEvent {
    project_id: Uuid,
    site_id: Uuid,
    device_id: Uuid,
    protocol: String,
    source_timestamp: DateTime<Utc>,
    metrics: Vec<Metric>,
    config_version: Option<String>,
    event_id: Option<String>,
    metadata: serde_json::Map<String, serde_json::Value>,
}

/// One reading inside an event.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    parameter_key: String,
    value: Option<f64>,
    quality: u8,
    attributes: serde_json::Map<String, serde_json::Value>,
}

/// Body formats of `/v1/ingest/batch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchFormat {
    /// A JSON array of events.
    JsonArray,
    /// One event per line (`application/x-ndjson`); blank lines are skipped.
    Ndjson,
}

impl Rejection {
    /// A rejection with these errors (at least one).
    pub fn new(errors: Vec<FieldError>) -> Self {
        Rejection { errors }
    }

    /// Every problem found.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// One sentence naming the first problem's field and rule, and how many more there are.
    pub fn detail(&self) -> String {
        todo!("helper: e.g. `metrics[0].quality: must be an integer between 0 and 255 (and 2 more errors)`")
    }
}

impl NormalizedEvent {
    /// Parses one event from JSON bytes.
    ///
    /// # Errors
    /// Every violation found: malformed JSON, missing or mistyped fields, bad UUIDs or
    /// timestamps, quality outside 0..=255, empty metrics, empty protocol or parameter key.
    pub fn parse(bytes: &[u8]) -> Result<NormalizedEvent, Rejection> {
        let _ = bytes;
        todo!("helper")
    }

    /// Parses one event from an already-decoded JSON value.
    ///
    /// # Errors
    /// As [`NormalizedEvent::parse`], without the JSON syntax errors.
    pub fn from_value(value: &serde_json::Value) -> Result<NormalizedEvent, Rejection> {
        let _ = value;
        todo!("helper")
    }

    /// The canonical JSON form (what the queue carries; `parse` of it gives back an equal
    /// event).
    pub fn to_value(&self) -> serde_json::Value {
        todo!("helper")
    }

    pub fn project_id(&self) -> Uuid {
        self.project_id
    }
    pub fn site_id(&self) -> Uuid {
        self.site_id
    }
    pub fn device_id(&self) -> Uuid {
        self.device_id
    }
    pub fn protocol(&self) -> &str {
        &self.protocol
    }
    /// UTC, truncated to microseconds (the database's resolution).
    pub fn source_timestamp(&self) -> DateTime<Utc> {
        self.source_timestamp
    }
    pub fn metrics(&self) -> &[Metric] {
        &self.metrics
    }
    pub fn config_version(&self) -> Option<&str> {
        self.config_version.as_deref()
    }
    pub fn event_id(&self) -> Option<&str> {
        self.event_id.as_deref()
    }
    pub fn metadata(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.metadata
    }
}

impl Metric {
    pub fn parameter_key(&self) -> &str {
        &self.parameter_key
    }
    pub fn value(&self) -> Option<f64> {
        self.value
    }
    /// 0..=255; 192 is good.
    pub fn quality(&self) -> u8 {
        self.quality
    }
    pub fn attributes(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.attributes
    }
}

/// Parses the body of `/v1/ingest/batch`: each item on its own.
///
/// # Errors
/// The body as a whole is unusable (not a JSON array, malformed JSON, empty). Problems with
/// single items are returned per item, by index, so the valid ones can be queued.
pub fn parse_batch(
    body: &[u8],
    format: BatchFormat,
) -> Result<Vec<Result<NormalizedEvent, Rejection>>, Rejection> {
    let _ = (body, format);
    todo!("helper")
}
