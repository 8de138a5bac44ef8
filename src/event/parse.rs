//! The walk from untrusted JSON to a [`NormalizedEvent`]: every rule of DESIGN.md §4 checked
//! once, every violation collected (not just the first) with its location, in the schema's
//! field order. Also turns JSON syntax errors into our own wording, so no message ever shows
//! parser internals.
//!
//! The fields arrive captured by `raw.rs` (one pass over the bytes, no `Value` tree); strings
//! borrowed from the input are copied only where the event keeps them.

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::limits::{self, TimeWindow};
use super::raw::{self, MetricItem, Num, Numeric, Object, RawEvent, RawMetric, Text, Top};
use super::{FieldError, Loc, MAX_METRICS, Metric, NormalizedEvent, Rejection};

/// Longest `parameter_key`, in characters.
pub const MAX_PARAMETER_KEY_CHARS: usize = 256;

/// Most errors one rejection lists; the rest are only counted (see [`Rejection::error_count`]),
/// so an error report never grows much larger than the body that caused it.
pub const MAX_REPORTED_ERRORS: usize = 100;

pub(super) const MSG_REQUIRED: &str = "field required";
const MSG_STRING: &str = "must be a string";
const MSG_UUID: &str = "must be a UUID";
const MSG_NOT_EMPTY: &str = "must not be empty";
const MSG_ARRAY: &str = "must be an array";
const MSG_OBJECT: &str = "must be an object";
const MSG_NUMBER_OR_NULL: &str = "must be a number or null";
const MSG_QUALITY: &str = "must be an integer between 0 and 255";
const MSG_TIMESTAMP: &str =
    "must be an RFC 3339 timestamp, e.g. 2025-11-14T12:00:00Z (no offset means UTC)";
const MSG_NO_METRICS: &str = "must contain at least one metric";
const MSG_YEAR_RANGE: &str =
    "must fall between the years 0000 and 9999 once its offset is applied (UTC)";
pub(super) const MSG_EMPTY_BODY: &str = "request body is empty";
pub(super) const MSG_BODY_OBJECT: &str = "must be a JSON object";

/// Errors found so far: the first [`MAX_REPORTED_ERRORS`] kept, the rest counted.
#[derive(Default)]
struct Errors {
    list: Vec<FieldError>,
    omitted: usize,
}

impl Errors {
    fn push(&mut self, loc: Vec<Loc>, msg: impl Into<String>) {
        if self.list.len() < MAX_REPORTED_ERRORS {
            self.list.push(FieldError {
                loc,
                msg: msg.into(),
            });
        } else {
            self.omitted += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn into_rejection(self) -> Rejection {
        Rejection {
            errors: self.list,
            omitted: self.omitted,
        }
    }
}

fn key(name: &str) -> Loc {
    Loc::Key(name.to_owned())
}

fn top(name: &str) -> Vec<Loc> {
    vec![key(name)]
}

fn in_metric(index: usize, name: &str) -> Vec<Loc> {
    vec![key("metrics"), Loc::Index(index), key(name)]
}

/// A rejection of the body as a whole: one error at `["body"]`.
pub(super) fn body_rejection(msg: impl Into<String>) -> Rejection {
    Rejection::new(vec![FieldError {
        loc: top("body"),
        msg: msg.into(),
    }])
}

/// True when the bytes hold nothing but JSON whitespace.
pub(super) fn is_blank(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// "malformed JSON at line L, column C: <what is wrong>", without the parser's own wording.
pub(super) fn malformed_json_message(err: &serde_json::Error, line_offset: usize) -> String {
    format!(
        "malformed JSON at line {}, column {}: {}",
        err.line() + line_offset,
        err.column(),
        syntax_problem(err)
    )
}

/// Our description of a JSON syntax error. serde_json does not expose its error codes, so this
/// matches on the start of its message and falls back to a generic phrase; the parser's text
/// itself is never passed on.
fn syntax_problem(err: &serde_json::Error) -> &'static str {
    if err.is_eof() {
        return "the body ends before the JSON value is complete";
    }
    let text = err.to_string();
    const KNOWN: &[(&str, &str)] = &[
        ("expected `,` or `}`", "missing ',' or '}' in an object"),
        ("expected `,` or `]`", "missing ',' or ']' in an array"),
        ("expected `:`", "missing ':' after an object key"),
        ("expected `\"`", "object keys must be strings"),
        ("key must be a string", "object keys must be strings"),
        (
            "expected ident",
            "unknown word (only true, false and null are allowed)",
        ),
        ("expected value", "a value is missing or is not valid JSON"),
        ("trailing comma", "a trailing comma is not allowed"),
        ("trailing characters", "extra text after the JSON value"),
        ("invalid number", "invalid number"),
        ("number out of range", "number out of range"),
        (
            "control character",
            "unescaped control character in a string",
        ),
        ("invalid escape", "invalid escape sequence in a string"),
        (
            "invalid unicode code point",
            "invalid UTF-8 or unicode escape",
        ),
        ("lone leading surrogate", "invalid unicode escape"),
        ("unexpected end of hex escape", "invalid unicode escape"),
        ("recursion limit exceeded", "nested too deeply"),
    ];
    KNOWN
        .iter()
        .find(|(prefix, _)| text.starts_with(prefix))
        .map_or("invalid JSON syntax", |(_, ours)| ours)
}

/// Parses an RFC 3339 timestamp; without an offset it is UTC. The result is truncated to
/// microseconds. Only four-digit years are accepted, so the canonical form always parses back.
pub(super) fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() < 19 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return None;
    }
    let utc = match DateTime::parse_from_rfc3339(s) {
        Ok(dt) => dt.with_timezone(&Utc),
        Err(_) => {
            let fmt = match b[10] {
                b'T' => "%Y-%m-%dT%H:%M:%S%.f",
                b't' => "%Y-%m-%dt%H:%M:%S%.f",
                b' ' => "%Y-%m-%d %H:%M:%S%.f",
                _ => return None,
            };
            NaiveDateTime::parse_from_str(s, fmt).ok()?.and_utc()
        }
    };
    // Through the microsecond count, a leap second (`23:59:60.5`) becomes the next second's
    // `00:00:00.5`, as PostgreSQL stores it: the worker's in-batch dedupe key is then the
    // database's key.
    DateTime::from_timestamp_micros(utc.trunc_subsecs(6).timestamp_micros())
}

/// A required string: absent → "field required"; any other type (null too) → "must be a string".
fn required_string<'a>(
    slot: Text<'a>,
    loc: impl FnOnce() -> Vec<Loc>,
    errors: &mut Errors,
) -> Option<Cow<'a, str>> {
    match slot {
        Text::Absent => {
            errors.push(loc(), MSG_REQUIRED);
            None
        }
        Text::Str(s) => Some(s),
        Text::Null | Text::Other => {
            errors.push(loc(), MSG_STRING);
            None
        }
    }
}

/// An optional string: absent or null → `None`.
fn optional_string<'a>(slot: Text<'a>, name: &str, errors: &mut Errors) -> Option<Cow<'a, str>> {
    match slot {
        Text::Absent | Text::Null => None,
        Text::Str(s) => Some(s),
        Text::Other => {
            errors.push(top(name), MSG_STRING);
            None
        }
    }
}

/// An optional object: absent or null → `{}`.
fn optional_object(
    slot: Object,
    loc: impl FnOnce() -> Vec<Loc>,
    errors: &mut Errors,
) -> Map<String, Value> {
    match slot {
        Object::Absent | Object::Null => Map::new(),
        Object::Map(m) => m,
        Object::Other => {
            errors.push(loc(), MSG_OBJECT);
            Map::new()
        }
    }
}

fn uuid_field(slot: Text<'_>, name: &str, errors: &mut Errors) -> Option<Uuid> {
    let s = required_string(slot, || top(name), errors)?;
    match Uuid::parse_str(&s) {
        Ok(id) => Some(id),
        Err(_) => {
            errors.push(top(name), MSG_UUID);
            None
        }
    }
}

/// `quality`: absent or null → 0. Integers 0..=255 are accepted, and so are numbers written
/// with a zero fraction (`192.0`, as some producers print every number); `192.5`, negatives,
/// values above 255 and non-numbers are refused.
fn quality_of(slot: Numeric) -> Result<u8, ()> {
    match slot {
        Numeric::Absent | Numeric::Null => Ok(0),
        Numeric::Num(Num::U(u)) => u8::try_from(u).map_err(|_| ()),
        Numeric::Num(Num::F(f)) if f.fract() == 0.0 && (0.0..=255.0).contains(&f) => Ok(f as u8),
        Numeric::Num(_) | Numeric::Other => Err(()),
    }
}

fn metric(index: usize, raw: RawMetric<'_>, errors: &mut Errors) -> Option<Metric> {
    let parameter_key = match required_string(
        raw.parameter_key,
        || in_metric(index, "parameter_key"),
        errors,
    ) {
        Some(k) if k.trim().is_empty() => {
            errors.push(in_metric(index, "parameter_key"), MSG_NOT_EMPTY);
            None
        }
        Some(k) => match limits::text_violation(&k, MAX_PARAMETER_KEY_CHARS) {
            Some(why) => {
                errors.push(in_metric(index, "parameter_key"), why);
                None
            }
            None => Some(k.into_owned()),
        },
        None => None,
    };

    let value = match raw.value {
        Numeric::Absent | Numeric::Null => Some(None),
        Numeric::Num(n) => Some(Some(n.as_f64())),
        Numeric::Other => None,
    };
    if value.is_none() {
        errors.push(in_metric(index, "value"), MSG_NUMBER_OR_NULL);
    }

    let quality = quality_of(raw.quality);
    if quality.is_err() {
        errors.push(in_metric(index, "quality"), MSG_QUALITY);
    }

    let attributes = optional_object(raw.attributes, || in_metric(index, "attributes"), errors);
    if let Some(why) = limits::object_violation(&attributes, limits::MAX_ATTRIBUTES_BYTES) {
        errors.push(in_metric(index, "attributes"), why);
    }

    Some(Metric {
        parameter_key: parameter_key?,
        value: value?,
        quality: quality.ok()?,
        attributes,
    })
}

fn metrics(slot: raw::Metrics<'_>, errors: &mut Errors) -> Vec<Metric> {
    let items = match slot {
        raw::Metrics::Absent => {
            errors.push(top("metrics"), MSG_REQUIRED);
            return Vec::new();
        }
        raw::Metrics::Items(items) => items,
        raw::Metrics::TooMany(count) => {
            errors.push(
                top("metrics"),
                format!("must contain at most {MAX_METRICS} metrics (got {count})"),
            );
            return Vec::new();
        }
        raw::Metrics::Other => {
            errors.push(top("metrics"), MSG_ARRAY);
            return Vec::new();
        }
    };
    if items.is_empty() {
        errors.push(top("metrics"), MSG_NO_METRICS);
        return Vec::new();
    }
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match item {
            MetricItem::Object(m) => out.extend(metric(index, m, errors)),
            MetricItem::Other => errors.push(vec![key("metrics"), Loc::Index(index)], MSG_OBJECT),
        }
    }
    out
}

/// An optional string with a length limit (and no NUL).
fn limited_string(
    slot: Text<'_>,
    name: &str,
    max_chars: usize,
    errors: &mut Errors,
) -> Option<String> {
    let s = optional_string(slot, name, errors)?;
    match limits::text_violation(&s, max_chars) {
        Some(why) => {
            errors.push(top(name), why);
            None
        }
        None => Some(s.into_owned()),
    }
}

/// The clock-dependent rules of one parse: the time window and the moment it is judged at.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clock {
    pub(super) window: TimeWindow,
    pub(super) now: DateTime<Utc>,
}

impl Clock {
    /// Only the static rules (no time window).
    pub(super) fn unbounded() -> Clock {
        Clock {
            window: TimeWindow::UNBOUNDED,
            now: DateTime::<Utc>::MIN_UTC,
        }
    }

    /// `window`, judged now.
    pub(super) fn now(window: TimeWindow) -> Clock {
        Clock {
            window,
            now: Utc::now(),
        }
    }
}

/// Parses one event from JSON bytes in one pass (no `Value` tree): syntax errors as one
/// error at `["body"]` (`line_offset` added to the line, for NDJSON), a non-object likewise,
/// then [`event_from_raw`].
pub(super) fn event_from_bytes(
    bytes: &[u8],
    line_offset: usize,
    clock: &Clock,
) -> Result<NormalizedEvent, Rejection> {
    match raw::from_slice::<RawEvent<'_>>(bytes) {
        Ok(Top::Object(e)) => event_from_raw(e, clock),
        Ok(Top::NotObject) => Err(body_rejection(MSG_BODY_OBJECT)),
        Err(e) => Err(body_rejection(malformed_json_message(&e, line_offset))),
    }
}

/// As [`event_from_bytes`], from a JSON value already built (tests and tools).
pub(super) fn event_from_value(value: &Value, clock: &Clock) -> Result<NormalizedEvent, Rejection> {
    match raw::from_value::<RawEvent<'_>>(value) {
        Top::Object(e) => event_from_raw(e, clock),
        Top::NotObject => Err(body_rejection(MSG_BODY_OBJECT)),
    }
}

/// Checks one captured event, consuming it. Errors come in the schema's field order, metrics
/// by index, whatever the order of the keys in the input; a rejection lists at most
/// [`MAX_REPORTED_ERRORS`] of them.
pub(super) fn event_from_raw(
    raw: RawEvent<'_>,
    clock: &Clock,
) -> Result<NormalizedEvent, Rejection> {
    let mut errors = Errors::default();

    let project_id = uuid_field(raw.project_id, "project_id", &mut errors);
    let site_id = uuid_field(raw.site_id, "site_id", &mut errors);
    let device_id = uuid_field(raw.device_id, "device_id", &mut errors);

    let protocol = match required_string(raw.protocol, || top("protocol"), &mut errors) {
        Some(p) => {
            let trimmed = p.trim();
            if trimmed.is_empty() {
                errors.push(top("protocol"), MSG_NOT_EMPTY);
                None
            } else if let Some(why) = limits::text_violation(trimmed, limits::MAX_PROTOCOL_CHARS) {
                errors.push(top("protocol"), why);
                None
            } else if trimmed.len() == p.len() {
                Some(p.into_owned())
            } else {
                Some(trimmed.to_owned())
            }
        }
        None => None,
    };

    let source_timestamp = required_string(
        raw.source_timestamp,
        || top("source_timestamp"),
        &mut errors,
    )
    .and_then(|s| {
        let Some(ts) = parse_timestamp(&s) else {
            errors.push(top("source_timestamp"), MSG_TIMESTAMP);
            return None;
        };
        if !limits::year_in_range(ts) {
            errors.push(top("source_timestamp"), MSG_YEAR_RANGE);
            return None;
        }
        if let Some(why) = clock.window.violation(ts, clock.now) {
            errors.push(top("source_timestamp"), why);
            return None;
        }
        Some(ts)
    });

    let metrics = metrics(raw.metrics, &mut errors);
    let config_version = limited_string(
        raw.config_version,
        "config_version",
        limits::MAX_CONFIG_VERSION_CHARS,
        &mut errors,
    );
    let event_id = limited_string(
        raw.event_id,
        "event_id",
        limits::MAX_EVENT_ID_CHARS,
        &mut errors,
    );
    let metadata = optional_object(raw.metadata, || top("metadata"), &mut errors);
    if let Some(why) = limits::object_violation(&metadata, limits::MAX_METADATA_BYTES) {
        errors.push(top("metadata"), why);
    }

    match (project_id, site_id, device_id, protocol, source_timestamp) {
        (
            Some(project_id),
            Some(site_id),
            Some(device_id),
            Some(protocol),
            Some(source_timestamp),
        ) if errors.is_empty() => Ok(NormalizedEvent {
            project_id,
            site_id,
            device_id,
            protocol,
            source_timestamp,
            metrics,
            config_version,
            event_id,
            metadata,
        }),
        _ => Err(errors.into_rejection()),
    }
}
