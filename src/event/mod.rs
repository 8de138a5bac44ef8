//! The event model: `NormalizedEvent` v1.0 as DESIGN.md §4 defines it, parsed from untrusted
//! JSON into types that cannot hold an invalid event ("parse, don't validate").
//!
//! The collector and the worker call the same [`NormalizedEvent::parse`]; the queue envelope
//! (`{"trace_id":..,"event":{..},"config_version":..}`) lives in [`envelope`]. Registry checks
//! (does the device exist?) are not here: they belong to the worker.
//!
//! Rule choices beyond the contract (each has a test in `tests.rs`):
//! - `protocol` is stored trimmed; `parameter_key` is stored as sent (but may not be blank).
//! - `quality` accepts a number with a zero fraction (`192.0`); `192.5` is refused.
//! - `null` counts as absent for every optional field (`value`, `quality`, `attributes`,
//!   `config_version`, `event_id`, `metadata`); for a required field it is a type error.
//! - Timestamps need a four-digit year; `T`, `t` or a space may separate date and time.
//! - Errors come in the schema's field order (the order of DESIGN.md §4), metrics by index;
//!   at most [`MAX_REPORTED_ERRORS`] are listed per event, the rest only counted.

mod batch;
mod canonical;
pub mod envelope;
pub mod limits;
mod parse;
mod raw;
#[cfg(test)]
mod tests;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

pub use batch::{Item, MAX_BATCH_EVENTS};
pub use limits::TimeWindow;
use parse::Clock;
pub use parse::{MAX_PARAMETER_KEY_CHARS, MAX_REPORTED_ERRORS};

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
    /// Errors found beyond those listed (see [`MAX_REPORTED_ERRORS`]).
    omitted: usize,
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
        Rejection { errors, omitted: 0 }
    }

    /// The problems found, in document order (at most [`MAX_REPORTED_ERRORS`] when built by
    /// the parser).
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// One sentence naming the first problem's field and rule, and how many more there are.
    pub fn detail(&self) -> String {
        let Some(first) = self.errors.first() else {
            return "the input is invalid".to_owned();
        };
        let mut out = path_of(&first.loc);
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&first.msg);
        match self.error_count() - 1 {
            0 => {}
            1 => out.push_str(" (and 1 more error)"),
            n => out.push_str(&format!(" (and {n} more errors)")),
        }
        out
    }

    /// How many problems were found, including any not listed in [`Rejection::errors`].
    pub fn error_count(&self) -> usize {
        self.errors.len() + self.omitted
    }
}

/// `metrics[0].quality` for `["metrics",0,"quality"]`.
fn path_of(loc: &[Loc]) -> String {
    let mut out = String::new();
    for part in loc {
        match part {
            Loc::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Loc::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

impl fmt::Display for Rejection {
    /// Same as [`Rejection::detail`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail())
    }
}

impl std::error::Error for Rejection {}

impl NormalizedEvent {
    /// Parses one event from JSON bytes, with the static rules only (no time window).
    ///
    /// # Errors
    /// Every violation found: malformed JSON, missing or mistyped fields, bad UUIDs or
    /// timestamps, quality outside 0..=255, empty metrics, empty protocol or parameter key,
    /// text the store cannot hold, values past the limits of [`limits`].
    pub fn parse(bytes: &[u8]) -> Result<NormalizedEvent, Rejection> {
        Self::parse_at(bytes, &Clock::unbounded())
    }

    /// As [`NormalizedEvent::parse`], and the timestamp must also fall inside `window`
    /// judged by the clock now (what the collector runs).
    ///
    /// # Errors
    /// As [`NormalizedEvent::parse`], plus a timestamp outside the window.
    pub fn parse_with(bytes: &[u8], window: TimeWindow) -> Result<NormalizedEvent, Rejection> {
        Self::parse_at(bytes, &Clock::now(window))
    }

    fn parse_at(bytes: &[u8], clock: &Clock) -> Result<NormalizedEvent, Rejection> {
        if parse::is_blank(bytes) {
            return Err(parse::body_rejection(parse::MSG_EMPTY_BODY));
        }
        parse::event_from_bytes(bytes, 0, clock)
    }

    /// Parses one event from an already-decoded JSON value.
    ///
    /// # Errors
    /// As [`NormalizedEvent::parse`], without the JSON syntax errors.
    pub fn from_value(value: &serde_json::Value) -> Result<NormalizedEvent, Rejection> {
        parse::event_from_value(value, &Clock::unbounded())
    }

    /// The canonical JSON form (what the queue carries; `parse` of it gives back an equal
    /// event).
    ///
    /// `from_value(&e.to_value())` is always exact, and so is the way through JSON text:
    /// serde_json writes the shortest form that reads back to the same `f64`, and parses
    /// with its `float_roundtrip` feature (enabled in Cargo.toml).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(canonical::Canonical(self))
            .expect("an event serializes: all map keys are strings and every number is finite")
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

/// Parses the body of `/v1/ingest/batch`: each item on its own, static rules only, no size
/// limit per item (tests and tools; the collector uses [`parse_batch_each`]).
///
/// # Errors
/// The body as a whole is unusable (not a JSON array, malformed JSON, empty, too many
/// items). Problems with single items are returned per item, by index, so the valid ones
/// can be queued.
pub fn parse_batch(body: &[u8], format: BatchFormat) -> Result<Vec<Item>, Rejection> {
    let mut out = Vec::new();
    walk_batch(
        body,
        format,
        &Clock::unbounded(),
        usize::MAX,
        &mut |_, item| out.push(item),
    )?;
    Ok(out)
}

/// Limits of one batch parse, besides the fixed ones of [`limits`].
#[derive(Clone, Copy, Debug)]
pub struct BatchRules {
    /// The time window every item's timestamp must fall in (judged now).
    pub window: TimeWindow,
    /// Largest text of one item (`INGEST_MAX_BODY_BYTES`: a batch item may not be larger
    /// than a single event may be).
    pub max_item_bytes: usize,
}

/// Parses the body of `/v1/ingest/batch` and hands each item, in order, to `each(index,
/// item)` as soon as it is parsed, so no tree of the whole body is ever built. Returns the
/// number of items.
///
/// When this returns an error, `each` may already have seen some items: the caller must
/// treat them as not accepted (the collector queues nothing before this returns `Ok`).
///
/// # Errors
/// As [`parse_batch`].
pub fn parse_batch_each(
    body: &[u8],
    format: BatchFormat,
    rules: BatchRules,
    each: &mut dyn FnMut(usize, Item),
) -> Result<usize, Rejection> {
    walk_batch(
        body,
        format,
        &Clock::now(rules.window),
        rules.max_item_bytes,
        each,
    )
}

fn walk_batch(
    body: &[u8],
    format: BatchFormat,
    clock: &Clock,
    max_item: usize,
    each: &mut dyn FnMut(usize, Item),
) -> Result<usize, Rejection> {
    match format {
        BatchFormat::JsonArray => batch::json_array(body, clock, max_item, each),
        BatchFormat::Ndjson => batch::ndjson(body, clock, max_item, each),
    }
}
