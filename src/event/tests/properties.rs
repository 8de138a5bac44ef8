//! Property tests: every valid event survives its canonical value, its JSON text and the
//! queue envelope; arbitrary text never panics or leaks parser wording.

use super::canonical::TRACE;
use super::*;

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
