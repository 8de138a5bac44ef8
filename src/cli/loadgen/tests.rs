//! Unit tests of loadgen: target selection, histogram parsing, reporting.

use super::*;

fn shared(targets: Vec<Target>) -> Shared {
    Shared::new(targets, 1_763_121_600_000_000)
}

#[test]
fn demo_targets_are_the_devices_of_the_project_with_templates() {
    let doc = nsready::registry::demo();
    let t = pick_targets(&doc, 20, 2);
    assert_eq!(t.len(), 2, "only Customer 01's project has templates");
    assert!(t.iter().all(|t| t.params.len() == 3 && t.per_event == 2));
    let t = pick_targets(&doc, 20, 10);
    assert!(t.iter().all(|t| t.per_event == 3), "fewer templates: all");
}

#[test]
fn events_are_valid_and_have_distinct_keys() {
    let doc = nsready::registry::demo();
    let sh = shared(pick_targets(&doc, 20, 2));
    let mut keys = std::collections::HashSet::new();
    let mut seen_params = std::collections::HashSet::new();
    for i in 0..50 {
        let mut s = String::new();
        sh.write_event(&mut s, i);
        let e = nsready::event::NormalizedEvent::parse(s.as_bytes())
            .unwrap_or_else(|r| panic!("event {i} invalid: {} in {s}", r.detail()));
        assert_eq!(e.metrics().len() as u64, sh.rows_of(i));
        for m in e.metrics() {
            seen_params.insert(m.parameter_key().to_string());
            assert!(
                keys.insert((
                    e.source_timestamp(),
                    e.device_id(),
                    m.parameter_key().to_string()
                )),
                "duplicate key in event {i}"
            );
        }
    }
    assert_eq!(seen_params.len(), 3, "the templates are cycled");
}

const METRICS: &str = "# HELP x\n\
    ingest_processing_duration_seconds_sum 3.0\n\
    ingest_processing_duration_seconds_count 100\n\
    ingest_processing_duration_seconds_bucket{le=\"0.001\"} 0\n\
    ingest_processing_duration_seconds_bucket{le=\"0.002\"} 50\n\
    ingest_processing_duration_seconds_bucket{le=\"0.004\"} 90\n\
    ingest_processing_duration_seconds_bucket{le=\"+Inf\"} 100\n\
    ingest_rows_total 300\n\
    ingest_events_total{status=\"success\"} 100\n\
    # EOF\n";

#[test]
fn histograms_and_counters_are_read_from_prometheus_text() {
    let h = parse_hist(METRICS, nsready::metrics::names::PROCESSING_SECONDS).expect("hist");
    assert_eq!(h.buckets.len(), 4);
    assert_eq!(h.count, 100.0);
    let p50 = h.quantile(0.5).expect("p50");
    assert!((p50 - 0.002).abs() < 1e-9, "{p50}");
    let p70 = h.quantile(0.7).expect("p70");
    assert!((p70 - 0.003).abs() < 1e-9, "{p70}");
    assert_eq!(
        h.quantile(0.99),
        Some(0.004),
        "+Inf bucket: highest finite bound"
    );
    assert_eq!(
        parse_value(METRICS, nsready::metrics::names::ROWS_TOTAL),
        Some(300.0)
    );
    assert_eq!(
        parse_value(METRICS, nsready::metrics::names::EVENTS_TOTAL),
        None
    );
    let d = h.minus(&h);
    assert_eq!(d.quantile(0.5), None, "empty delta has no quantiles");
}

#[test]
fn latency_summary_comes_from_the_histogram() {
    let mut h = drive::latency_histogram();
    for us in 1..=100u64 {
        h.record(us * 1000).expect("in range");
    }
    let v = latency_json(&h, "request (event)");
    assert_eq!(v["samples"], 100);
    // 3 significant digits: within 0.1 % of the exact nearest-rank values.
    let near = |k: &str, want: f64| {
        let got = v[k].as_f64().expect("a number");
        assert!((got - want).abs() <= want * 0.001, "{k}: {got} vs {want}");
    };
    near("p50", 50.0);
    near("p99", 99.0);
    near("max", 100.0);
    near("mean", 50.5);
    assert_eq!(
        latency_json(&drive::latency_histogram(), "x")["p50"],
        Value::Null
    );
    assert_eq!(group(1_234_567), "1,234,567");
    assert_eq!(group(12), "12");
}

#[test]
fn the_verdict_counts_rows() {
    use verify::{Status, count};
    assert_eq!(count(10, 40, 30, 0).status, Status::Pass);
    assert_eq!(
        count(10, 45, 30, 5).status,
        Status::Pass,
        "503'd events may land"
    );
    assert_eq!(
        count(10, 46, 30, 5).status,
        Status::Fail,
        "more than that is duplicates"
    );
    assert_eq!(
        count(10, 39, 30, 0).status,
        Status::Fail,
        "a missing row fails"
    );
    assert_eq!(count(10, 9, 0, 0).status, Status::Fail, "rows vanished");
}
