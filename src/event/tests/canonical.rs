//! The canonical form, batches, the queue envelope and its message id.

use super::*;

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

pub(super) const TRACE: &str = "0b0f5a0e-4b8e-4f7a-9a53-7d2c1f2b9e11";

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
