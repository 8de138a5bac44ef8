//! The one-pass decoder (`raw.rs`): what the `Value` tree it replaced did, it still does —
//! last duplicate key wins, escapes in keys and strings, unknown fields skipped but checked
//! and depth-limited, metrics past the limit counted without being kept, every envelope shape.
//! (The property that both paths agree on hostile input is in `hostile.rs`.)

use super::*;

#[test]
fn a_key_given_twice_keeps_its_last_value_as_a_json_object_does() {
    let body = EXAMPLE.replacen(
        r#""protocol":"GPRS""#,
        r#""protocol":7,"protocol":"SMS""#,
        1,
    );
    assert_eq!(accept_bytes(body.as_bytes()).protocol(), "SMS");
    let body = EXAMPLE.replacen(
        r#""protocol":"GPRS""#,
        r#""protocol":"SMS","protocol":7"#,
        1,
    );
    let r = reject_bytes(body.as_bytes());
    assert_eq!(single(&r), (vec![k("protocol")], "must be a string"));
}

#[test]
fn escaped_keys_and_strings_are_read_as_their_text() {
    let body = EXAMPLE
        .replacen(r#""protocol":"GPRS""#, r#""proto\u0063ol":"G\u0050RS""#, 1)
        .replacen(r#""parameter_key""#, r#""parameter\u005fkey""#, 1);
    let e = accept_bytes(body.as_bytes());
    assert_eq!(e.protocol(), "GPRS");
    assert_eq!(
        e.metrics()[0].parameter_key(),
        example_event().metrics()[0].parameter_key()
    );
}

#[test]
fn unknown_fields_are_ignored_but_still_syntax_checked_and_depth_limited() {
    let ok = EXAMPLE.replacen('{', r#"{"extra":{"a":[1,{"b":null}],"c":"x"},"#, 1);
    assert_eq!(accept_bytes(ok.as_bytes()), example_event());
    let deep = format!(r#"{{"extra":{}1{},"#, "[".repeat(200), "]".repeat(200));
    let deep = EXAMPLE.replacen('{', &deep, 1);
    let r = reject_bytes(deep.as_bytes());
    let (loc, msg) = single(&r);
    assert_eq!(loc, vec![k("body")]);
    assert!(msg.ends_with("nested too deeply"), "{msg}");
    let bad = EXAMPLE.replacen('{', r#"{"extra":1e999,"#, 1);
    let r = reject_bytes(bad.as_bytes());
    assert!(single(&r).1.ends_with("number out of range"), "{r:?}");
}

#[test]
fn more_metrics_than_allowed_are_counted_not_kept() {
    let one = "{\"parameter_key\":\"k\",\"value\":1}";
    let open = "\"metrics\":[";
    let metrics = vec![one; MAX_METRICS + 5].join(",");
    let body = EXAMPLE.replacen(open, &format!("{open}{metrics},"), 1);
    let r = reject_bytes(body.as_bytes());
    assert_eq!(
        single(&r),
        (
            vec![k("metrics")],
            "must contain at most 10000 metrics (got 10007)"
        )
    );
    // Exactly at the limit is fine (the example's own metrics moved to an unknown field).
    let metrics = vec![one; MAX_METRICS].join(",");
    let body = EXAMPLE.replacen(open, &format!("{open}{metrics}],\"old\":["), 1);
    assert_eq!(accept_bytes(body.as_bytes()).metrics().len(), MAX_METRICS);
}

#[test]
fn envelope_shapes_decode_as_before() {
    let event = EXAMPLE.as_bytes();
    let bare = envelope::decode(event).expect("a bare event decodes");
    assert_eq!(bare.event, example_event());
    assert_eq!(bare.trace_id, None);
    let wrapped = format!(r#"{{"trace_id":"t\u0031","event":{EXAMPLE},"config_version":null}}"#);
    let d = envelope::decode(wrapped.as_bytes()).expect("an envelope decodes");
    assert_eq!(
        (d.trace_id.as_deref(), d.event),
        (Some("t1"), example_event())
    );
    // trace_id of another type is ignored; a null event is not an object.
    let odd = format!(r#"{{"trace_id":5,"event":{EXAMPLE}}}"#);
    assert_eq!(
        envelope::decode(odd.as_bytes()).expect("decodes").trace_id,
        None
    );
    for (body, error_type) in [
        (r#"{"event":null}"#, envelope::INVALID_FORMAT),
        (r#"{"trace_id":"t"}"#, envelope::INVALID_FORMAT),
        (r#"[1]"#, envelope::INVALID_FORMAT),
        (
            r#"{"rejected":"bad","event":{}}"#,
            envelope::VALIDATION_ERROR,
        ),
        (r#"{"device_id":null}"#, envelope::VALIDATION_ERROR),
        (r#"{"event":{"a":1} "#, envelope::JSON_DECODE),
    ] {
        let e = envelope::decode(body.as_bytes()).expect_err(body);
        assert_eq!(e.error_type, error_type, "{body}: {e}");
    }
}
