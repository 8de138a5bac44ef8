//! Unit tests of the metric families and their labels.

use super::*;

#[test]
fn http_labels_are_bounded_and_render() {
    let m = Metrics::new();
    for code in [200, 400, 404, 429, 503, 500, 0, 999] {
        m.http_response(Route::from_template(None), code);
    }
    m.http_response(Route::from_template(Some("/v1/ingest")), 503);
    m.http_duration(Route::from_template(Some("/v1/ingest")), 0.002);
    m.up(Component::Store, false);
    m.database_error();
    let text = m.render();
    for want in [
        r#"nsready_http_responses_total{route="unmatched",status_class="5xx",code="503"} 1"#,
        r#"nsready_http_responses_total{route="unmatched",status_class="4xx",code="429"} 1"#,
        r#"nsready_http_responses_total{route="unmatched",status_class="5xx",code="other"} 3"#,
        r#"nsready_http_responses_total{route="/v1/ingest",status_class="5xx",code="503"} 1"#,
        r#"nsready_up{component="store"} 0"#,
        r#"ingest_errors_total{error_type="database"} 1"#,
        "nsready_build_info{version=",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
}

#[test]
fn labels_keep_the_platform_strings_and_round_trip() {
    let labels: Vec<&str> = ErrorType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(
        labels,
        [
            "json_decode",
            "invalid_format",
            "validation_error",
            "device_not_found",
            "parameter_not_found",
            "parameter_not_in_project",
            "integrity",
            "store_rejected"
        ]
    );
    for t in ErrorType::ALL {
        assert_eq!(ErrorType::from_label(t.as_str()), Some(t));
    }
    assert_eq!(ErrorType::from_label("nope"), None);
    assert_eq!(EventStatus::Queued.as_str(), "queued");
    assert_eq!(EventStatus::Success.as_str(), "success");
    assert_eq!(EventStatus::Dlq.as_str(), "dlq");
}
