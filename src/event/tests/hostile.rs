//! Unit and property tests of the door checks (`limits.rs`) and of the parsers against
//! hostile input: text the store cannot hold, sizes past the limits, nesting, timestamps
//! outside the stores' range or the time window, batch items that are too large, and
//! arbitrary bytes, which must give a value or a typed rejection, never a panic.

use chrono::{Duration, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::event::envelope;
use crate::event::limits::{self, TimeWindow};
use crate::event::*;

const EXAMPLE: &str = r#"{"project_id":"8212caa2-b928-4213-b64e-9f5b86f4cad1","site_id":"89a66770-bdcc-4c95-ac97-e1829cb7a960",
 "device_id":"bc2c5e47-f17e-46f0-b5e7-76b214f4f6ad","protocol":"GPRS","source_timestamp":"2025-11-14T12:00:00Z",
 "metrics":[{"parameter_key":"project:8212caa2-b928-4213-b64e-9f5b86f4cad1:voltage","value":230.5,"quality":192,"attributes":{"unit":"V"}}],
 "config_version":"v1.0","event_id":"sample-event","metadata":{}}"#;

fn example() -> Value {
    serde_json::from_str(EXAMPLE).unwrap_or_default()
}

fn with(path: &[&str], value: Value) -> Value {
    let mut v = example();
    let mut at = &mut v;
    for (i, p) in path.iter().enumerate() {
        if i + 1 == path.len() {
            at[*p] = value;
            break;
        }
        at = match p.parse::<usize>() {
            Ok(n) => &mut at[n],
            Err(_) => &mut at[*p],
        };
    }
    v
}

/// The first error's location as a dotted path, and its message.
fn first_error(v: &Value) -> (String, String) {
    let r = NormalizedEvent::parse(v.to_string().as_bytes()).expect_err("the event is invalid");
    let e = &r.errors()[0];
    let loc: Vec<String> = e
        .loc
        .iter()
        .map(|l| match l {
            Loc::Key(k) => k.clone(),
            Loc::Index(i) => i.to_string(),
        })
        .collect();
    (loc.join("."), e.msg.clone())
}

#[test]
fn nul_is_refused_in_every_string_naming_the_field() {
    let cases: Vec<(Vec<&str>, Value, &str)> = vec![
        (vec!["protocol"], json!("GP\u{0}RS"), "protocol"),
        (vec!["event_id"], json!("e\u{0}"), "event_id"),
        (vec!["config_version"], json!("v1\u{0}"), "config_version"),
        (
            vec!["metrics", "0", "parameter_key"],
            json!("project:x:\u{0}"),
            "metrics.0.parameter_key",
        ),
        (
            vec!["metrics", "0", "attributes"],
            json!({"unit\u{0}": "V"}),
            "metrics.0.attributes",
        ),
        (
            vec!["metrics", "0", "attributes"],
            json!({"unit": ["V", {"x": "\u{0}"}]}),
            "metrics.0.attributes",
        ),
        (vec!["metadata"], json!({"\u{0}": 1}), "metadata"),
        (vec!["metadata"], json!({"a": "b\u{0}"}), "metadata"),
    ];
    for (path, value, want_loc) in cases {
        let (loc, msg) = first_error(&with(&path, value));
        assert_eq!(loc, want_loc);
        assert!(msg.contains("NUL"), "{want_loc}: {msg}");
    }
}

#[test]
fn strings_past_their_documented_length_are_refused() {
    let cases = [
        ("protocol", limits::MAX_PROTOCOL_CHARS),
        ("event_id", limits::MAX_EVENT_ID_CHARS),
        ("config_version", limits::MAX_CONFIG_VERSION_CHARS),
    ];
    for (field, max) in cases {
        let ok = with(&[field], json!("é".repeat(max)));
        assert!(
            NormalizedEvent::parse(ok.to_string().as_bytes()).is_ok(),
            "{field}"
        );
        let (loc, msg) = first_error(&with(&[field], json!("é".repeat(max + 1))));
        assert_eq!(loc, field);
        assert_eq!(msg, format!("must be at most {max} characters"));
    }
}

#[test]
fn objects_past_their_size_or_nesting_are_refused() {
    let big = "x".repeat(limits::MAX_ATTRIBUTES_BYTES);
    let (loc, msg) = first_error(&with(&["metrics", "0", "attributes"], json!({ "a": big })));
    assert_eq!(loc, "metrics.0.attributes");
    assert!(msg.contains("at most 4096 bytes"), "{msg}");
    let big = "x".repeat(limits::MAX_METADATA_BYTES);
    let (loc, msg) = first_error(&with(&["metadata"], json!({ "a": big })));
    assert_eq!(loc, "metadata");
    assert!(msg.contains("16384 bytes"), "{msg}");

    let mut deep = json!("leaf");
    for _ in 0..limits::MAX_NESTING {
        deep = json!({ "n": deep });
    }
    // Exactly the limit: metadata is level 1 of the 16.
    assert!(
        NormalizedEvent::parse(with(&["metadata"], deep.clone()).to_string().as_bytes()).is_ok()
    );
    let deep = json!({ "n": deep });
    let (loc, msg) = first_error(&with(&["metadata"], deep));
    assert_eq!(loc, "metadata");
    assert!(msg.contains("nested"), "{msg}");
}

#[test]
fn timestamps_outside_the_stores_range_after_the_offset_are_refused() {
    for bad in [
        "0000-01-01T00:00:00+00:01",
        "9999-12-31T23:30:00-01:00",
        "9999-12-31T23:59:59-00:00:01",
    ] {
        let v = with(&["source_timestamp"], json!(bad));
        match NormalizedEvent::parse(v.to_string().as_bytes()) {
            Ok(e) => panic!("{bad} accepted as {}", e.source_timestamp()),
            Err(r) => assert_eq!(r.errors()[0].loc, vec![Loc::Key("source_timestamp".into())]),
        }
    }
    for good in ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"] {
        let v = with(&["source_timestamp"], json!(good));
        let e = NormalizedEvent::parse(v.to_string().as_bytes()).expect("in range");
        // The canonical form parses back to the same instant.
        assert_eq!(NormalizedEvent::from_value(&e.to_value()), Ok(e));
    }
}

#[test]
fn a_leap_second_is_stored_as_the_next_second_like_the_database_does() {
    let v = with(&["source_timestamp"], json!("2016-12-31T23:59:60.5Z"));
    let e = NormalizedEvent::parse(v.to_string().as_bytes()).expect("valid");
    let next = Utc
        .with_ymd_and_hms(2017, 1, 1, 0, 0, 0)
        .single()
        .map(|t| t + Duration::milliseconds(500));
    assert_eq!(Some(e.source_timestamp()), next);
}

#[test]
fn the_time_window_refuses_far_future_readings_and_keeps_old_ones() {
    let window = TimeWindow {
        max_future: Some(Duration::hours(24)),
        max_past: None,
    };
    let at =
        |t: chrono::DateTime<Utc>| with(&["source_timestamp"], json!(t.to_rfc3339())).to_string();
    let now = Utc::now();
    assert!(NormalizedEvent::parse_with(at(now + Duration::hours(23)).as_bytes(), window).is_ok());
    assert!(NormalizedEvent::parse_with(at(now - Duration::days(3650)).as_bytes(), window).is_ok());
    let r = NormalizedEvent::parse_with(at(now + Duration::hours(25)).as_bytes(), window)
        .expect_err("a day ahead");
    assert_eq!(r.errors()[0].loc, vec![Loc::Key("source_timestamp".into())]);
    assert!(r.detail().contains("INGEST_MAX_FUTURE"), "{}", r.detail());
    // The static parse (no window) and the unbounded window accept it.
    assert!(NormalizedEvent::parse(at(now + Duration::days(400)).as_bytes()).is_ok());
    let past = TimeWindow {
        max_future: None,
        max_past: Some(Duration::days(7)),
    };
    let r = NormalizedEvent::parse_with(at(now - Duration::days(8)).as_bytes(), past)
        .expect_err("older than a week");
    assert!(r.detail().contains("INGEST_MAX_PAST"), "{}", r.detail());
}

fn rules(max_item_bytes: usize) -> BatchRules {
    BatchRules {
        window: TimeWindow::UNBOUNDED,
        max_item_bytes,
    }
}

fn each_of(body: &[u8], format: BatchFormat, max_item: usize) -> Result<Vec<Item>, Rejection> {
    let mut out = Vec::new();
    parse_batch_each(body, format, rules(max_item), &mut |i, item| {
        assert_eq!(i, out.len(), "items come in order");
        out.push(item);
    })?;
    Ok(out)
}

#[test]
fn a_batch_item_larger_than_one_event_may_be_is_refused_alone() {
    let small = example().to_string();
    let mut large = example();
    large["metadata"] = json!({"pad": "y".repeat(600)});
    let large = large.to_string();
    let limit = small.len() + 10;
    for format in [BatchFormat::JsonArray, BatchFormat::Ndjson] {
        let body = match format {
            BatchFormat::JsonArray => format!("[{small},{large},{small}]"),
            BatchFormat::Ndjson => format!("{small}\n{large}\n{small}\n"),
        };
        let items = each_of(body.as_bytes(), format, limit).expect("the body is fine");
        assert_eq!(items.len(), 3);
        assert!(items[0].is_ok() && items[2].is_ok(), "{format:?}");
        let r = items[1].as_ref().expect_err("too large");
        assert!(
            r.detail().contains("INGEST_MAX_BODY_BYTES"),
            "{}",
            r.detail()
        );
    }
}

#[test]
fn a_batch_body_that_is_not_an_array_or_has_trailing_text_is_refused_whole() {
    for (body, want) in [
        (r#"{"a":1}"#, "must be a JSON array of events"),
        ("42", "must be a JSON array of events"),
        ("[] x", "extra text after the JSON value"),
        (r#"[{"a":1}] [2]"#, "extra text after the JSON value"),
        ("[{}, {]", "malformed JSON"),
        ("[", "the body ends before"),
        ("[]", "must contain at least one event"),
    ] {
        let r =
            each_of(body.as_bytes(), BatchFormat::JsonArray, 1 << 20).expect_err("refused whole");
        assert!(r.detail().contains(want), "{body}: {}", r.detail());
    }
}

#[test]
fn a_batch_over_the_count_is_refused_without_building_its_items() {
    // 10,001 items of 1 KiB each: refused with the exact count, and the walk hands over
    // no more than the limit before it stops.
    let item = format!(r#"{{"pad":"{}"}}"#, "z".repeat(1000));
    let body = format!("[{}{item}]", format!("{item},").repeat(MAX_BATCH_EVENTS));
    let mut seen = 0usize;
    let r = parse_batch_each(
        body.as_bytes(),
        BatchFormat::JsonArray,
        rules(1 << 20),
        &mut |_, _| seen += 1,
    )
    .expect_err("too many");
    assert_eq!(
        r.detail(),
        "body: must contain at most 10000 events (got 10001); split the batch"
    );
    assert_eq!(seen, MAX_BATCH_EVENTS);
}

// ---------------------------------------------------------------- properties

/// Strings a careless or hostile producer sends: control characters (NUL included),
/// quotes, backslashes, non-BMP characters, long runs.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        "[\\x00-\\x1f\"\\\\]{0,8}",
        "[a-z\u{0}\u{7f}\u{feff}\u{1F600}\u{10FFFF}]{0,12}",
        (0usize..400).prop_map(|n| "é".repeat(n)),
    ]
}

fn nasty_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(20, 200, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(nasty_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Events that are mostly valid, with one hostile part somewhere.
fn hostile_event() -> impl Strategy<Value = Value> {
    (
        nasty_string(),
        nasty_string(),
        nasty_json(),
        nasty_json(),
        prop_oneof![
            Just("2025-11-14T12:00:00Z".to_string()),
            "[0-9]{4}-[0-1][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9](\\.[0-9]{1,9})?(Z|[+-][0-2][0-9]:[0-5][0-9])",
            nasty_string(),
        ],
        nasty_string(),
    )
        .prop_map(|(protocol, key, attributes, metadata, ts, event_id)| {
            let mut v = example();
            v["protocol"] = json!(protocol);
            v["metrics"][0]["parameter_key"] = json!(key);
            v["metrics"][0]["attributes"] = attributes;
            v["metadata"] = metadata;
            v["source_timestamp"] = json!(ts);
            v["event_id"] = json!(event_id);
            v
        })
}

/// The example event's bytes with a few random bytes spliced in or overwritten: unlike
/// purely random bytes, many of these still parse (a byte landing inside a string value),
/// so the "accepted means storable" branch of the property runs, with NUL, control
/// characters and invalid UTF-8 among the spliced bytes.
fn mutated_example() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![b'a'..=b'z', any::<u8>()];
    prop::collection::vec((any::<prop::sample::Index>(), byte, any::<bool>()), 1..3).prop_map(
        |edits| {
            let mut bytes = EXAMPLE.as_bytes().to_vec();
            for (at, byte, insert) in edits {
                let i = at.index(bytes.len());
                if insert {
                    bytes.insert(i, byte);
                } else {
                    bytes[i] = byte;
                }
            }
            bytes
        },
    )
}

#[test]
fn mutated_examples_are_often_accepted_so_the_property_checks_something() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = mutated_example();
    let accepted = (0..200)
        .filter(|_| {
            strategy
                .new_tree(&mut runner)
                .map(|t| NormalizedEvent::parse(&t.current()).is_ok())
                .unwrap_or(false)
        })
        .count();
    assert!(
        accepted >= 20,
        "only {accepted} of 200 mutated examples parsed"
    );
}

/// What both stores hold: no NUL anywhere in the canonical form, a four-digit year, and
/// every string and object inside its limit.
fn assert_storable(e: &NormalizedEvent) -> Result<(), TestCaseError> {
    let canonical = e.to_value().to_string();
    prop_assert!(!canonical.contains("\\u0000"), "NUL in {canonical}");
    prop_assert!(limits::year_in_range(e.source_timestamp()));
    prop_assert!(e.protocol().chars().count() <= limits::MAX_PROTOCOL_CHARS);
    for m in e.metrics() {
        prop_assert!(m.parameter_key().chars().count() <= MAX_PARAMETER_KEY_CHARS);
        let attrs = serde_json::to_string(m.attributes()).unwrap_or_default();
        prop_assert!(attrs.len() <= limits::MAX_ATTRIBUTES_BYTES);
    }
    let meta = serde_json::to_string(e.metadata()).unwrap_or_default();
    prop_assert!(meta.len() <= limits::MAX_METADATA_BYTES);
    // The queue envelope decodes to the same event: the worker accepts what the door did.
    let decoded = envelope::decode(&envelope::encode("t", e));
    prop_assert_eq!(decoded.map(|d| d.event), Ok(e.clone()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn any_bytes_give_a_value_or_a_typed_error(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        mutated_example(),
    ]) {
        if let Ok(e) = NormalizedEvent::parse(&bytes) {
            assert_storable(&e)?;
        }
        for format in [BatchFormat::JsonArray, BatchFormat::Ndjson] {
            if let Ok(items) = each_of(&bytes, format, 256) {
                for e in items.iter().flatten() {
                    assert_storable(e)?;
                }
            }
        }
        if let Ok(d) = envelope::decode(&bytes) {
            assert_storable(&d.event)?;
        }
    }

    #[test]
    fn hostile_events_are_accepted_only_when_storable(v in hostile_event()) {
        let text = v.to_string();
        match NormalizedEvent::parse(text.as_bytes()) {
            Ok(e) => assert_storable(&e)?,
            Err(r) => {
                prop_assert!(r.error_count() >= 1);
                prop_assert!(!r.errors().is_empty());
            }
        }
        // The same event inside a batch and inside an envelope from another producer.
        let batch = format!("[{text},{text}]");
        let items = each_of(batch.as_bytes(), BatchFormat::JsonArray, 1 << 20);
        prop_assert!(items.is_ok());
        let bare = envelope::decode(text.as_bytes());
        prop_assert_eq!(
            bare.is_ok(),
            NormalizedEvent::parse(text.as_bytes()).is_ok()
        );
    }

    #[test]
    fn deep_or_wide_json_never_panics(depth in 0usize..300, open in prop_oneof![Just('['), Just('{')]) {
        let (o, c) = if open == '[' { ("[", "]") } else { (r#"{"a":"#, "}") };
        let body = format!("{}1{}", o.repeat(depth), c.repeat(depth));
        let _ = NormalizedEvent::parse(body.as_bytes());
        let _ = each_of(body.as_bytes(), BatchFormat::JsonArray, 1 << 20);
        let _ = envelope::decode(body.as_bytes());
    }
}

// ---------------------------------------------------------------- the one-pass decoder

/// The typed one-pass decoder (`raw.rs`, over the bytes) and the same capture over a
/// `Value` built first (what the parser did before issue 13) give the same answer for the
/// same text: the same event, or the same errors.
fn both_paths_agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    let typed = NormalizedEvent::parse(bytes);
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => prop_assert_eq!(typed, NormalizedEvent::from_value(&v)),
        Err(_) => {
            let r = typed.expect_err("not JSON: refused");
            prop_assert_eq!(r.errors().len(), 1);
            prop_assert_eq!(r.errors()[0].loc.clone(), vec![Loc::Key("body".into())]);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_one_pass_decoder_agrees_with_a_value_tree(bytes in prop_oneof![
        mutated_example(),
        hostile_event().prop_map(|v| v.to_string().into_bytes()),
        nasty_json().prop_map(|v| v.to_string().into_bytes()),
    ]) {
        both_paths_agree(&bytes)?;
    }
}
