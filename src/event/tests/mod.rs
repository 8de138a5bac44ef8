//! Unit tests of the event model, by rule group: `fields.rs` (one test per rule of
//! DESIGN.md §4, field by field), `wording.rs` (error collection and wording),
//! `canonical.rs` (the canonical form, batches, the queue envelope and its message id),
//! `decoder.rs` (the one-pass decoder's
//! edge cases), `properties.rs` (property tests: every valid event survives its canonical form and its
//! JSON text), `hostile.rs` (the door checks of `limits.rs` and arbitrary input). This file
//! holds the shared example and helpers.

mod canonical;
mod decoder;
mod fields;
mod hostile;
mod properties;
mod wording;

use chrono::{DateTime, TimeZone, Timelike, Utc};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::envelope::{self, DecodeError, Decoded};
use super::*;

const PROJECT: &str = "8212caa2-b928-4213-b64e-9f5b86f4cad1";
const SITE: &str = "89a66770-bdcc-4c95-ac97-e1829cb7a960";
const DEVICE: &str = "bc2c5e47-f17e-46f0-b5e7-76b214f4f6ad";

const EXAMPLE: &str = r#"{"project_id":"8212caa2-b928-4213-b64e-9f5b86f4cad1","site_id":"89a66770-bdcc-4c95-ac97-e1829cb7a960",
 "device_id":"bc2c5e47-f17e-46f0-b5e7-76b214f4f6ad","protocol":"GPRS","source_timestamp":"2025-11-14T12:00:00Z",
 "metrics":[{"parameter_key":"project:8212caa2-b928-4213-b64e-9f5b86f4cad1:voltage","value":230.5,"quality":192,"attributes":{"unit":"V"}},
            {"parameter_key":"project:8212caa2-b928-4213-b64e-9f5b86f4cad1:current","value":10.2,"quality":192,"attributes":{"unit":"A"}}],
 "config_version":"v1.0","event_id":"sample-event-20251114-120000","metadata":{}}"#;

fn example() -> Value {
    serde_json::from_str(EXAMPLE).expect("the example payload is JSON")
}

fn example_event() -> NormalizedEvent {
    NormalizedEvent::parse(EXAMPLE.as_bytes()).expect("the example payload is valid")
}

fn k(name: &str) -> Loc {
    Loc::Key(name.to_owned())
}

fn obj(v: &mut Value) -> &mut Map<String, Value> {
    v.as_object_mut().expect("test value is an object")
}

/// The example with a top-level field replaced.
fn with(field: &str, value: Value) -> Value {
    let mut v = example();
    obj(&mut v).insert(field.to_owned(), value);
    v
}

/// The example without a top-level field.
fn without(field: &str) -> Value {
    let mut v = example();
    obj(&mut v).remove(field);
    v
}

/// The example with a field of the first metric replaced (`None` removes it).
fn with_metric(field: &str, value: Option<Value>) -> Value {
    let mut v = example();
    let m = obj(&mut v["metrics"][0]);
    match value {
        Some(value) => m.insert(field.to_owned(), value),
        None => m.remove(field),
    };
    v
}

/// Wording that would leak internals (parser phrasing, type names, paths).
fn assert_clean_text(text: &str) {
    for bad in [
        "serde",
        "expected",
        "invalid type",
        "::",
        "`",
        ".rs",
        "src/",
        "Value",
        "Map<",
    ] {
        assert!(!text.contains(bad), "{text:?} contains {bad:?}");
    }
}

fn assert_clean(r: &Rejection) {
    assert!(!r.errors().is_empty(), "a rejection lists an error");
    for e in r.errors() {
        assert_clean_text(&e.msg);
    }
    assert_clean_text(&r.detail());
}

fn reject(v: &Value) -> Rejection {
    let r = NormalizedEvent::from_value(v).expect_err("the event is invalid");
    assert_clean(&r);
    r
}

fn reject_bytes(b: &[u8]) -> Rejection {
    let r = NormalizedEvent::parse(b).expect_err("the body is invalid");
    assert_clean(&r);
    r
}

/// The one error of a rejection, as (loc, msg).
fn single(r: &Rejection) -> (Vec<Loc>, &str) {
    assert_eq!(r.errors().len(), 1, "exactly one error: {r:?}");
    (r.errors()[0].loc.clone(), r.errors()[0].msg.as_str())
}

/// 2025-11-14T12:00:00Z, the example's timestamp.
fn noon() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 11, 14, 12, 0, 0)
        .single()
        .expect("a valid, unambiguous UTC time")
}

fn accept(v: &Value) -> NormalizedEvent {
    NormalizedEvent::from_value(v).expect("the event is valid")
}

fn accept_bytes(b: &[u8]) -> NormalizedEvent {
    NormalizedEvent::parse(b).expect("the body is valid")
}
