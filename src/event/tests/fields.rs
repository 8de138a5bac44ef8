//! One test per rule of DESIGN.md §4: the body, required fields, timestamps, metrics,
//! optional fields.

use super::*;

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
