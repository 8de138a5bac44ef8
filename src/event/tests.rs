//! Unit tests of the event model: one per rule of DESIGN.md §4, error collection and wording,
//! the canonical form, batches, the queue envelope and its message id, and a property test
//! that every valid event survives its canonical form.

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

// ---------------------------------------------------------------- the example and the body

#[test]
fn the_platform_example_payload_parses() {
    let e = example_event();
    assert_eq!(e.project_id(), Uuid::parse_str(PROJECT).expect("uuid"));
    assert_eq!(e.site_id(), Uuid::parse_str(SITE).expect("uuid"));
    assert_eq!(e.device_id(), Uuid::parse_str(DEVICE).expect("uuid"));
    assert_eq!(e.protocol(), "GPRS");
    assert_eq!(e.source_timestamp(), noon());
    assert_eq!(e.metrics().len(), 2);
    let m = &e.metrics()[0];
    assert_eq!(
        m.parameter_key(),
        "project:8212caa2-b928-4213-b64e-9f5b86f4cad1:voltage"
    );
    assert_eq!(m.value(), Some(230.5));
    assert_eq!(m.quality(), 192);
    assert_eq!(m.attributes().get("unit"), Some(&json!("V")));
    assert_eq!(e.metrics()[1].value(), Some(10.2));
    assert_eq!(e.config_version(), Some("v1.0"));
    assert_eq!(e.event_id(), Some("sample-event-20251114-120000"));
    assert!(e.metadata().is_empty());
}

#[test]
fn parse_and_from_value_agree() {
    assert_eq!(accept(&example()), example_event());
}

#[test]
fn an_empty_body_is_rejected_as_empty() {
    for body in [&b""[..], b"   \r\n\t"] {
        let r = reject_bytes(body);
        assert_eq!(single(&r), (vec![k("body")], "request body is empty"));
    }
}

#[test]
fn malformed_json_is_rejected_with_line_and_column() {
    let r = reject_bytes(b"{\"a\" 1}");
    let (loc, msg) = single(&r);
    assert_eq!(loc, vec![k("body")]);
    assert!(
        msg.starts_with("malformed JSON at line 1, column 6: "),
        "{msg}"
    );
    assert!(r.detail().starts_with("body: malformed JSON at line 1"));
}

#[test]
fn malformed_json_messages_use_our_own_wording() {
    let deep = "[".repeat(300);
    let bodies: Vec<&[u8]> = vec![
        b"{",
        b"{\"a\":1,}",
        b"{\"a\" 1}",
        b"{\"a\":1 \"b\":2}",
        b"[1 2]",
        b"{\"a\":tru}",
        b"{1:2}",
        b"{\"a\":\"\x01\"}",
        b"{\"a\":\"\\q\"}",
        b"{\"a\":\"\\ud800\"}",
        b"{\"a\":\"\xff\xfe\"}",
        b"{\"a\":1e999}",
        b"{\"a\":-}",
        b"{} x",
        b"nope",
        deep.as_bytes(),
    ];
    for body in bodies {
        let r = reject_bytes(body);
        let (loc, msg) = single(&r);
        assert_eq!(loc, vec![k("body")]);
        assert!(msg.starts_with("malformed JSON at line "), "{msg}");
        assert!(!msg.ends_with("invalid JSON syntax"), "{msg}: a known case");
    }
}

#[test]
fn a_body_that_is_not_an_object_is_rejected() {
    for body in ["[]", "[{}]", "\"event\"", "42", "null", "true"] {
        let r = reject_bytes(body.as_bytes());
        assert_eq!(single(&r), (vec![k("body")], "must be a JSON object"));
    }
    let r = reject(&json!([1]));
    assert_eq!(r.detail(), "body: must be a JSON object");
}

// ---------------------------------------------------------------- required top-level fields

#[test]
fn each_missing_required_field_is_reported_as_required() {
    for field in [
        "project_id",
        "site_id",
        "device_id",
        "protocol",
        "source_timestamp",
        "metrics",
    ] {
        let r = reject(&without(field));
        assert_eq!(single(&r), (vec![k(field)], "field required"), "{field}");
    }
}

#[test]
fn an_id_that_is_not_a_uuid_is_rejected() {
    for field in ["project_id", "site_id", "device_id"] {
        for bad in [
            "",
            "not-a-uuid",
            "8212caa2-b928-4213-b64e-9f5b86f4cad",
            "zz",
        ] {
            let r = reject(&with(field, json!(bad)));
            assert_eq!(single(&r), (vec![k(field)], "must be a UUID"));
        }
    }
}

#[test]
fn an_id_of_another_json_type_must_be_a_string() {
    for bad in [json!(1), json!(null), json!({}), json!([PROJECT])] {
        let r = reject(&with("project_id", bad));
        assert_eq!(single(&r), (vec![k("project_id")], "must be a string"));
    }
}

#[test]
fn uuids_are_stored_in_canonical_form() {
    let e = accept(&with("device_id", json!(DEVICE.to_uppercase())));
    assert_eq!(e.to_value()["device_id"], json!(DEVICE));
}

#[test]
fn a_blank_protocol_is_rejected() {
    for bad in ["", "   ", "\t\n"] {
        let r = reject(&with("protocol", json!(bad)));
        assert_eq!(single(&r), (vec![k("protocol")], "must not be empty"));
    }
}

#[test]
fn a_protocol_that_is_not_a_string_is_rejected() {
    let r = reject(&with("protocol", json!(5)));
    assert_eq!(single(&r), (vec![k("protocol")], "must be a string"));
}

#[test]
fn the_protocol_is_stored_trimmed() {
    assert_eq!(
        accept(&with("protocol", json!("  LoRa "))).protocol(),
        "LoRa"
    );
}

// ---------------------------------------------------------------- timestamps

fn ts(s: &str) -> DateTime<Utc> {
    accept(&with("source_timestamp", json!(s))).source_timestamp()
}

#[test]
fn a_timestamp_without_offset_is_utc() {
    assert_eq!(ts("2025-11-14T12:00:00"), noon());
}

#[test]
fn a_timestamp_with_fraction_and_without_offset_is_utc() {
    let t = ts("2025-11-14T12:00:00.25");
    assert_eq!(t.timestamp(), 1_763_121_600);
    assert_eq!(t.nanosecond(), 250_000_000);
}

#[test]
fn a_timestamp_with_an_offset_is_converted_to_utc() {
    assert_eq!(ts("2025-11-14T14:30:00+02:30"), noon());
    assert_eq!(ts("2025-11-14T12:00:00z"), ts("2025-11-14T12:00:00+00:00"));
}

#[test]
fn a_space_or_lowercase_t_may_separate_date_and_time() {
    let want = noon();
    assert_eq!(ts("2025-11-14 12:00:00Z"), want);
    assert_eq!(ts("2025-11-14 12:00:00"), want);
    assert_eq!(ts("2025-11-14t12:00:00"), want);
}

#[test]
fn a_timestamp_is_truncated_to_microseconds() {
    let t = ts("2025-11-14T12:00:00.123456789Z");
    assert_eq!(t.nanosecond(), 123_456_000);
    let t = ts("2025-11-14T12:00:00.9999999");
    assert_eq!(t.nanosecond(), 999_999_000);
    assert_eq!(t.timestamp(), 1_763_121_600);
}

#[test]
fn an_invalid_timestamp_is_rejected_naming_the_format() {
    for bad in [
        "",
        "yesterday",
        "2025-11-14",
        "2025-11-14T12:00",
        "2025-13-01T00:00:00Z",
        "2025-02-30T00:00:00Z",
        "2025-11-14T25:00:00Z",
        "2025-11-14T12:00:00+25:00",
        "2025-11-14X12:00:00Z",
        "+2025-11-14T12:00:00Z",
        "12025-11-14T12:00:00Z",
        "1763121600",
        " 2025-11-14T12:00:00Z",
    ] {
        let r = reject(&with("source_timestamp", json!(bad)));
        let (loc, msg) = single(&r);
        assert_eq!(loc, vec![k("source_timestamp")], "{bad}");
        assert!(
            msg.starts_with("must be an RFC 3339 timestamp"),
            "{bad}: {msg}"
        );
    }
}

#[test]
fn a_numeric_timestamp_must_be_a_string() {
    let r = reject(&with("source_timestamp", json!(1_763_121_600)));
    assert_eq!(
        single(&r),
        (vec![k("source_timestamp")], "must be a string")
    );
}

#[test]
fn a_leap_second_survives_the_canonical_form() {
    let e = accept(&with("source_timestamp", json!("2016-12-31T23:59:60.5Z")));
    assert_eq!(NormalizedEvent::from_value(&e.to_value()), Ok(e));
}

// ---------------------------------------------------------------- metrics

#[test]
fn metrics_that_are_not_an_array_are_rejected() {
    for bad in [json!({}), json!("x"), json!(null)] {
        let r = reject(&with("metrics", bad));
        assert_eq!(single(&r), (vec![k("metrics")], "must be an array"));
    }
}

#[test]
fn empty_metrics_are_rejected() {
    let r = reject(&with("metrics", json!([])));
    assert_eq!(
        single(&r),
        (vec![k("metrics")], "must contain at least one metric")
    );
}

#[test]
fn more_than_max_metrics_are_rejected() {
    let metric = json!({"parameter_key": "k", "value": 1});
    let at_max = with("metrics", Value::Array(vec![metric.clone(); MAX_METRICS]));
    assert_eq!(accept(&at_max).metrics().len(), MAX_METRICS);
    let over = with("metrics", Value::Array(vec![metric; MAX_METRICS + 1]));
    let r = reject(&over);
    let (loc, msg) = single(&r);
    assert_eq!(loc, vec![k("metrics")]);
    assert_eq!(msg, "must contain at most 10000 metrics (got 10001)");
}

#[test]
fn a_metric_that_is_not_an_object_is_rejected_by_index() {
    let mut v = example();
    v["metrics"][1] = json!("voltage");
    let r = reject(&v);
    assert_eq!(
        single(&r),
        (vec![k("metrics"), Loc::Index(1)], "must be an object")
    );
}

fn metric_error(field: &str, value: Option<Value>) -> (Vec<Loc>, String) {
    let r = reject(&with_metric(field, value));
    let (loc, msg) = single(&r);
    (loc, msg.to_owned())
}

fn m0(field: &str) -> Vec<Loc> {
    vec![k("metrics"), Loc::Index(0), k(field)]
}

#[test]
fn a_missing_parameter_key_is_required() {
    assert_eq!(
        metric_error("parameter_key", None),
        (m0("parameter_key"), "field required".to_owned())
    );
}

#[test]
fn a_blank_parameter_key_is_rejected() {
    for bad in ["", "  "] {
        assert_eq!(
            metric_error("parameter_key", Some(json!(bad))),
            (m0("parameter_key"), "must not be empty".to_owned())
        );
    }
}

#[test]
fn a_parameter_key_that_is_not_a_string_is_rejected() {
    assert_eq!(
        metric_error("parameter_key", Some(json!(7))),
        (m0("parameter_key"), "must be a string".to_owned())
    );
}

#[test]
fn a_parameter_key_longer_than_256_characters_is_rejected() {
    assert_eq!(
        metric_error("parameter_key", Some(json!("k".repeat(257)))),
        (
            m0("parameter_key"),
            "must be at most 256 characters".to_owned()
        )
    );
    // 256 characters of two bytes each: the limit counts characters, not bytes.
    let e = accept(&with_metric("parameter_key", Some(json!("é".repeat(256)))));
    assert_eq!(e.metrics()[0].parameter_key().chars().count(), 256);
}

#[test]
fn a_value_that_is_a_string_or_bool_is_rejected() {
    for bad in [json!("230.5"), json!(true), json!([1]), json!({})] {
        assert_eq!(
            metric_error("value", Some(bad)),
            (m0("value"), "must be a number or null".to_owned())
        );
    }
}

#[test]
fn a_null_or_absent_value_is_none() {
    assert_eq!(
        accept(&with_metric("value", None)).metrics()[0].value(),
        None
    );
    assert_eq!(
        accept(&with_metric("value", Some(Value::Null))).metrics()[0].value(),
        None
    );
}

#[test]
fn an_integer_value_is_accepted_as_a_number() {
    let e = accept(&with_metric("value", Some(json!(-40))));
    assert_eq!(e.metrics()[0].value(), Some(-40.0));
}

#[test]
fn quality_above_255_is_rejected_naming_the_field() {
    let r = reject(&with_metric("quality", Some(json!(256))));
    assert_eq!(
        r.detail(),
        "metrics[0].quality: must be an integer between 0 and 255"
    );
}

#[test]
fn quality_that_is_negative_fractional_or_not_a_number_is_rejected() {
    for bad in [
        json!(-1),
        json!(192.5),
        json!(-0.5),
        json!(1e300),
        json!("192"),
        json!(true),
    ] {
        assert_eq!(
            metric_error("quality", Some(bad.clone())),
            (
                m0("quality"),
                "must be an integer between 0 and 255".to_owned()
            ),
            "{bad}"
        );
    }
}

#[test]
fn quality_with_a_zero_fraction_is_accepted() {
    let e = accept(&with_metric("quality", Some(json!(192.0))));
    assert_eq!(e.metrics()[0].quality(), 192);
}

#[test]
fn quality_bounds_are_accepted() {
    for q in [0, 255] {
        let e = accept(&with_metric("quality", Some(json!(q))));
        assert_eq!(u64::from(e.metrics()[0].quality()), q);
    }
}

#[test]
fn quality_defaults_to_zero_when_absent_or_null() {
    assert_eq!(
        accept(&with_metric("quality", None)).metrics()[0].quality(),
        0
    );
    assert_eq!(
        accept(&with_metric("quality", Some(Value::Null))).metrics()[0].quality(),
        0
    );
}

#[test]
fn attributes_that_are_not_an_object_are_rejected() {
    assert_eq!(
        metric_error("attributes", Some(json!(["V"]))),
        (m0("attributes"), "must be an object".to_owned())
    );
}

#[test]
fn attributes_default_to_an_empty_object() {
    assert!(
        accept(&with_metric("attributes", None)).metrics()[0]
            .attributes()
            .is_empty()
    );
    assert!(
        accept(&with_metric("attributes", Some(Value::Null))).metrics()[0]
            .attributes()
            .is_empty()
    );
}

// ---------------------------------------------------------------- optional fields

#[test]
fn config_version_and_event_id_must_be_strings() {
    for field in ["config_version", "event_id"] {
        let r = reject(&with(field, json!(1)));
        assert_eq!(single(&r), (vec![k(field)], "must be a string"));
    }
}

#[test]
fn optional_strings_may_be_null_or_absent() {
    let e = accept(&with("config_version", Value::Null));
    assert_eq!(e.config_version(), None);
    let e = accept(&without("event_id"));
    assert_eq!(e.event_id(), None);
}

#[test]
fn metadata_that_is_not_an_object_is_rejected() {
    let r = reject(&with("metadata", json!([])));
    assert_eq!(single(&r), (vec![k("metadata")], "must be an object"));
}

#[test]
fn metadata_defaults_to_an_empty_object() {
    assert!(accept(&without("metadata")).metadata().is_empty());
    assert!(accept(&with("metadata", Value::Null)).metadata().is_empty());
    let e = accept(&with("metadata", json!({"fw": "1.2"})));
    assert_eq!(e.metadata().get("fw"), Some(&json!("1.2")));
}

#[test]
fn unknown_fields_are_ignored() {
    let mut v = with("extra", json!({"anything": [1, 2]}));
    obj(&mut v["metrics"][0]).insert("unit".to_owned(), json!("V"));
    assert_eq!(accept(&v), example_event());
}

// ---------------------------------------------------------------- error collection and wording

#[test]
fn every_error_is_reported_in_document_order() {
    let v = json!({
        "project_id": "nope",
        "device_id": DEVICE,
        "protocol": " ",
        "source_timestamp": "later",
        "metrics": [
            {"parameter_key": "a", "value": "x", "quality": 300},
            {"value": 1},
            7
        ],
        "event_id": 5,
        "metadata": "m",
    });
    let r = reject(&v);
    let got: Vec<(Vec<Loc>, &str)> = r
        .errors()
        .iter()
        .map(|e| (e.loc.clone(), e.msg.as_str()))
        .collect();
    let idx = |i| vec![k("metrics"), Loc::Index(i)];
    let at = |i, f| vec![k("metrics"), Loc::Index(i), k(f)];
    assert_eq!(
        got,
        vec![
            (vec![k("project_id")], "must be a UUID"),
            (vec![k("site_id")], "field required"),
            (vec![k("protocol")], "must not be empty"),
            (
                vec![k("source_timestamp")],
                "must be an RFC 3339 timestamp, e.g. 2025-11-14T12:00:00Z (no offset means UTC)"
            ),
            (at(0, "value"), "must be a number or null"),
            (at(0, "quality"), "must be an integer between 0 and 255"),
            (at(1, "parameter_key"), "field required"),
            (idx(2), "must be an object"),
            (vec![k("event_id")], "must be a string"),
            (vec![k("metadata")], "must be an object"),
        ]
    );
    assert_eq!(r.error_count(), 10);
    assert_eq!(r.detail(), "project_id: must be a UUID (and 9 more errors)");
}

#[test]
fn errors_serialize_with_string_and_index_locs() {
    let r = reject(&with_metric("quality", Some(json!(256))));
    assert_eq!(
        serde_json::to_value(r.errors()).expect("errors serialize"),
        json!([{"loc": ["metrics", 0, "quality"], "msg": "must be an integer between 0 and 255"}])
    );
}

#[test]
fn detail_counts_one_more_error_in_the_singular() {
    let mut v = without("site_id");
    obj(&mut v).remove("device_id");
    assert_eq!(
        reject(&v).detail(),
        "site_id: field required (and 1 more error)"
    );
}

#[test]
fn a_rejection_displays_as_its_detail() {
    let r = reject(&without("protocol"));
    assert_eq!(r.to_string(), "protocol: field required");
}

#[test]
fn a_flood_of_errors_is_listed_up_to_the_cap_and_counted_in_full() {
    let r = reject(&with("metrics", Value::Array(vec![json!(0); 500])));
    assert_eq!(r.errors().len(), MAX_REPORTED_ERRORS);
    assert_eq!(r.error_count(), 500);
    assert_eq!(
        r.detail(),
        "metrics[0]: must be an object (and 499 more errors)"
    );
}

#[test]
fn a_hand_built_rejection_details_its_first_error() {
    let r = Rejection::new(vec![
        FieldError {
            loc: vec![Loc::Index(3), k("metrics"), Loc::Index(0)],
            msg: "bad".to_owned(),
        },
        FieldError {
            loc: vec![],
            msg: "worse".to_owned(),
        },
    ]);
    assert_eq!(r.detail(), "[3].metrics[0]: bad (and 1 more error)");
    assert_eq!(r.error_count(), 2);
}

// ---------------------------------------------------------------- canonical form

#[test]
fn to_value_roundtrips_through_from_value() {
    let e = example_event();
    assert_eq!(NormalizedEvent::from_value(&e.to_value()), Ok(e.clone()));
    let text = serde_json::to_vec(&e.to_value()).expect("serializes");
    assert_eq!(NormalizedEvent::parse(&text), Ok(e));
}

#[test]
fn to_value_writes_every_field_in_canonical_form() {
    let mut v = with(
        "source_timestamp",
        json!("2025-11-14T13:00:00.1234567+01:00"),
    );
    obj(&mut v).remove("config_version");
    v["metrics"] = json!([{"parameter_key": "k"}]);
    let got = accept(&v).to_value();
    assert_eq!(
        got,
        json!({
            "project_id": PROJECT, "site_id": SITE, "device_id": DEVICE, "protocol": "GPRS",
            "source_timestamp": "2025-11-14T12:00:00.123456Z",
            "metrics": [{"parameter_key": "k", "value": null, "quality": 0, "attributes": {}}],
            "config_version": null, "event_id": "sample-event-20251114-120000", "metadata": {}
        })
    );
}

#[test]
fn a_whole_second_timestamp_is_written_without_fraction() {
    assert_eq!(
        example_event().to_value()["source_timestamp"],
        json!("2025-11-14T12:00:00Z")
    );
}

// ---------------------------------------------------------------- batches

fn batch(body: &[u8], format: BatchFormat) -> Vec<Result<NormalizedEvent, Rejection>> {
    parse_batch(body, format).expect("the body as a whole is usable")
}

fn batch_rejection(body: &[u8], format: BatchFormat) -> Rejection {
    let r = parse_batch(body, format).expect_err("the body as a whole is refused");
    assert_clean(&r);
    r
}

#[test]
fn a_json_array_batch_gives_one_result_per_item_in_order() {
    let body = json!([example(), without("metrics"), 5, example()]).to_string();
    let items = batch(body.as_bytes(), BatchFormat::JsonArray);
    assert_eq!(items.len(), 4);
    assert_eq!(items[0], Ok(example_event()));
    let r1 = items[1].as_ref().expect_err("item 1 lacks metrics");
    assert_eq!(r1.detail(), "metrics: field required");
    let r2 = items[2].as_ref().expect_err("item 2 is a number");
    assert_eq!(r2.detail(), "body: must be a JSON object");
    assert_eq!(items[3], Ok(example_event()));
}

#[test]
fn a_json_batch_that_is_not_an_array_is_refused_whole() {
    let r = batch_rejection(EXAMPLE.as_bytes(), BatchFormat::JsonArray);
    assert_eq!(
        single(&r),
        (vec![k("body")], "must be a JSON array of events")
    );
}

#[test]
fn an_empty_json_array_batch_is_refused() {
    let r = batch_rejection(b" [ ] ", BatchFormat::JsonArray);
    assert_eq!(
        single(&r),
        (vec![k("body")], "must contain at least one event")
    );
    let r = batch_rejection(b"", BatchFormat::JsonArray);
    assert_eq!(single(&r), (vec![k("body")], "request body is empty"));
}

#[test]
fn a_malformed_json_array_batch_is_refused_whole() {
    let r = batch_rejection(b"[{}, {]", BatchFormat::JsonArray);
    assert!(r.detail().starts_with("body: malformed JSON at line 1"));
}

#[test]
fn a_batch_over_the_limit_is_refused_whole() {
    let body = format!("[{}{{}}]", "{},".repeat(MAX_BATCH_EVENTS));
    let r = batch_rejection(body.as_bytes(), BatchFormat::JsonArray);
    assert_eq!(
        r.detail(),
        "body: must contain at most 10000 events (got 10001); split the batch"
    );
    let body = "{}\n".repeat(MAX_BATCH_EVENTS + 1);
    let r = batch_rejection(body.as_bytes(), BatchFormat::Ndjson);
    assert_eq!(r.error_count(), 1);
    assert!(r.detail().contains("at most 10000 events"));
    let body = "{}\n".repeat(MAX_BATCH_EVENTS);
    assert_eq!(
        batch(body.as_bytes(), BatchFormat::Ndjson).len(),
        MAX_BATCH_EVENTS
    );
}

#[test]
fn an_ndjson_batch_skips_blank_lines_and_reports_bad_lines_per_item() {
    let line = example().to_string();
    let body = format!("{line}\r\n\n  \n{{\"oops\"\n[1]\n{line}");
    let items = batch(body.as_bytes(), BatchFormat::Ndjson);
    assert_eq!(items.len(), 4);
    assert_eq!(items[0], Ok(example_event()));
    let bad = items[1].as_ref().expect_err("line 4 is not JSON");
    assert_clean(bad);
    let (loc, msg) = single(bad);
    assert_eq!(loc, vec![k("body")]);
    assert!(
        msg.starts_with("malformed JSON at line 4, column "),
        "{msg}"
    );
    let not_object = items[2].as_ref().expect_err("line 5 is an array");
    assert_eq!(not_object.detail(), "body: must be a JSON object");
    assert_eq!(items[3], Ok(example_event()));
}

#[test]
fn an_ndjson_batch_without_events_is_refused() {
    for body in [&b""[..], b"\n \r\n\n"] {
        let r = batch_rejection(body, BatchFormat::Ndjson);
        assert_eq!(single(&r), (vec![k("body")], "request body is empty"));
    }
}

// ---------------------------------------------------------------- envelope

const TRACE: &str = "0b0f5a0e-4b8e-4f7a-9a53-7d2c1f2b9e11";

#[test]
fn an_envelope_has_the_seed_format() {
    let e = example_event();
    let v: Value = serde_json::from_slice(&envelope::encode(TRACE, &e)).expect("JSON");
    assert_eq!(
        v,
        json!({"trace_id": TRACE, "event": e.to_value(), "config_version": "v1.0"})
    );
    let bare = accept(&without("config_version"));
    let v: Value = serde_json::from_slice(&envelope::encode(TRACE, &bare)).expect("JSON");
    assert_eq!(v["config_version"], Value::Null);
}

#[test]
fn an_envelope_starts_with_the_trace_id() {
    let bytes = envelope::encode(TRACE, &example_event());
    assert!(bytes.starts_with(format!("{{\"trace_id\":\"{TRACE}\",\"event\":{{").as_bytes()));
}

#[test]
fn an_envelope_roundtrips_through_decode() {
    let e = example_event();
    assert_eq!(
        envelope::decode(&envelope::encode(TRACE, &e)),
        Ok(Decoded {
            trace_id: Some(TRACE.to_owned()),
            event: e
        })
    );
}

#[test]
fn decode_accepts_a_bare_event() {
    assert_eq!(
        envelope::decode(EXAMPLE.as_bytes()),
        Ok(Decoded {
            trace_id: None,
            event: example_event()
        })
    );
}

fn decode_err(bytes: &[u8]) -> DecodeError {
    let e = envelope::decode(bytes).expect_err("the message is refused");
    assert_clean_text(&e.reason);
    e
}

#[test]
fn decode_reports_non_json_as_json_decode() {
    for bytes in [&b"not json"[..], b"", b"{\"event\":", b"\"\xff\""] {
        assert_eq!(decode_err(bytes).error_type, "json_decode");
    }
    assert!(
        decode_err(b"{x}")
            .reason
            .starts_with("malformed JSON at line 1")
    );
}

#[test]
fn decode_reports_a_message_without_an_event_as_invalid_format() {
    for bytes in [
        &br#"[1]"#[..],
        br#""event""#,
        br#"{"trace_id":"t","event":"x"}"#,
        br#"{"trace_id":"t","event":null}"#,
        br#"{"trace_id":"t","payload":{}}"#,
        br#"{}"#,
    ] {
        assert_eq!(
            decode_err(bytes).error_type,
            "invalid_format",
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn decode_reports_a_broken_event_as_validation_error_with_the_detail() {
    let msg = json!({"trace_id": TRACE, "event": with_metric("quality", Some(json!(999)))});
    let err = decode_err(msg.to_string().as_bytes());
    assert_eq!(
        err,
        DecodeError {
            error_type: "validation_error",
            reason: "metrics[0].quality: must be an integer between 0 and 255".to_owned()
        }
    );
    // A bare event that breaks a rule is a validation error too, not a format error.
    let err = decode_err(without("device_id").to_string().as_bytes());
    assert_eq!(err.error_type, "validation_error");
    assert_eq!(err.reason, "device_id: field required");
}

#[test]
fn message_id_is_32_hex_characters() {
    let id = envelope::message_id(&example_event());
    assert_eq!(id.len(), 32);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
}

#[test]
fn message_id_is_stable_across_identical_retries() {
    let a = example_event();
    // The same content, spaced and ordered differently.
    let mut reordered = String::from("{\"metadata\":{},");
    let rest = example().to_string();
    reordered.push_str(rest.trim_start_matches('{'));
    let b = NormalizedEvent::parse(reordered.as_bytes()).expect("valid");
    assert_eq!(envelope::message_id(&a), envelope::message_id(&b));
    let x = accept(&with_metric("attributes", Some(json!({"a": 1, "b": 2}))));
    let y = NormalizedEvent::parse(
        with_metric("attributes", Some(json!({"b": 2, "a": 1})))
            .to_string()
            .as_bytes(),
    )
    .expect("valid");
    assert_eq!(envelope::message_id(&x), envelope::message_id(&y));
}

#[test]
fn message_id_changes_with_any_content_change() {
    let base = envelope::message_id(&example_event());
    let variants = [
        with_metric("value", Some(json!(230.6))),
        with_metric("quality", Some(json!(0))),
        with_metric("attributes", Some(json!({"unit": "mV"}))),
        with("source_timestamp", json!("2025-11-14T12:00:00.000001Z")),
        with("event_id", json!("another")),
        with("config_version", Value::Null),
        with("metadata", json!({"k": 1})),
        with("protocol", json!("LoRa")),
        with("device_id", json!(PROJECT)),
    ];
    for v in variants {
        assert_ne!(envelope::message_id(&accept(&v)), base, "{v}");
    }
}

// ---------------------------------------------------------------- properties

fn json_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-zA-Z0-9 _.:-]{0,12}".prop_map(Value::String),
    ]
}

fn json_map() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z_]{1,8}", json_scalar(), 0..4)
        .prop_map(|m| m.into_iter().collect())
}

/// Readings as devices send them: a decimal with up to four places (or none, or integers).
fn reading() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        Just(None),
        (any::<i32>(), 0u32..5)
            .prop_map(|(n, places)| Some(f64::from(n) / 10f64.powi(places as i32))),
    ]
}

fn metric_strategy(value: BoxedStrategy<Option<f64>>) -> impl Strategy<Value = Metric> {
    ("[a-z0-9:_-]{1,64}", value, any::<u8>(), json_map()).prop_map(
        |(parameter_key, value, quality, attributes)| Metric {
            parameter_key,
            value,
            quality,
            attributes,
        },
    )
}

fn event_strategy(value: BoxedStrategy<Option<f64>>) -> impl Strategy<Value = NormalizedEvent> {
    (
        (any::<u128>(), any::<u128>(), any::<u128>()),
        "[A-Za-z0-9_-]{1,16}",
        // 1970 .. 2100, microseconds.
        (0i64..4_102_444_800, 0u32..1_000_000),
        prop::collection::vec(metric_strategy(value), 1..6),
        (
            prop::option::of("[ -~]{0,20}"),
            prop::option::of("[ -~]{0,40}"),
            json_map(),
        ),
    )
        .prop_map(
            |(
                (p, s, d),
                protocol,
                (secs, micros),
                metrics,
                (config_version, event_id, metadata),
            )| {
                NormalizedEvent {
                    project_id: Uuid::from_u128(p),
                    site_id: Uuid::from_u128(s),
                    device_id: Uuid::from_u128(d),
                    protocol,
                    source_timestamp: DateTime::from_timestamp(secs, micros * 1000)
                        .expect("in range"),
                    metrics,
                    config_version,
                    event_id,
                    metadata,
                }
            },
        )
}

fn any_finite() -> BoxedStrategy<Option<f64>> {
    prop::option::of(any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite())).boxed()
}

proptest! {
    #[test]
    fn every_valid_event_survives_its_canonical_value(e in event_strategy(any_finite())) {
        prop_assert_eq!(NormalizedEvent::from_value(&e.to_value()), Ok(e));
    }

    #[test]
    fn any_finite_reading_survives_json_text_exactly(e in event_strategy(any_finite())) {
        let text = serde_json::to_vec(&e.to_value()).expect("serializes");
        prop_assert_eq!(NormalizedEvent::parse(&text), Ok(e));
    }

    #[test]
    fn every_valid_event_survives_its_json_text_and_envelope(e in event_strategy(reading().boxed())) {
        let text = serde_json::to_vec(&e.to_value()).expect("serializes");
        prop_assert_eq!(NormalizedEvent::parse(&text), Ok(e.clone()));
        let decoded = envelope::decode(&envelope::encode(TRACE, &e)).expect("decodes");
        prop_assert_eq!(envelope::message_id(&decoded.event), envelope::message_id(&e));
        prop_assert_eq!(decoded.event, e);
    }

    #[test]
    fn arbitrary_input_never_panics_and_never_leaks_parser_wording(
        s in prop_oneof!["\\PC{0,64}", "[{}\\[\\]\":,.0-9a-z\\\\ -]{0,40}"]
    ) {
        if let Err(r) = NormalizedEvent::parse(s.as_bytes()) {
            for e in r.errors() {
                prop_assert!(!e.msg.contains("expected") && !e.msg.contains("serde"), "{}", e.msg);
            }
        }
    }
}

#[test]
fn encode_with_id_matches_encode_and_message_id() {
    for body in [
        EXAMPLE.to_string(),
        EXAMPLE.replace(r#""config_version":"v1.0","#, ""),
    ] {
        let event = NormalizedEvent::parse(body.as_bytes()).expect("valid");
        let trace = "0b6f0f5e-6a61-4f7e-9d2a-2d5d6a4b8c11";
        let (bytes, id) = envelope::encode_with_id(trace, &event);
        assert_eq!(bytes, envelope::encode(trace, &event));
        assert_eq!(id, envelope::message_id(&event));
    }
}
