//! Every error is collected, in document order, in our own words.

use super::*;

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
