//! Hostile input at the door, on both deployments: what the store cannot hold (NUL, years
//! outside 0000–9999 after the offset, nesting, over-long strings and objects), readings
//! far in the future, batch items larger than one event may be, and error reports that
//! would dwarf their body. Each is answered 400 naming the field (or a per-item error),
//! the good events beside it land, and the test ends by counting: accepted = rows + dead
//! letters, the queue back to 0, the process alive.
//!
//! The opposite direction too: events at the edge of every rule (year 0000 and 9999, leap
//! seconds, extreme floats, control characters, strings and objects exactly at their
//! limits) are accepted and every one of them lands as a row.

use std::io::Write;
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use nsready::app::Role;
use nsready::event::limits;
use nsready::registry::demo_ids;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_deployments;
use crate::support::app::{Kind, RunningApp, TestEnv, wait_until};
use crate::support::{event, key};

const SETTLE: Duration = Duration::from_secs(30);

/// A copy of `ev` with the value at `path` replaced.
fn with(ev: &Value, path: &[&str], v: Value) -> Value {
    let mut e = ev.clone();
    let mut cur = &mut e;
    for (i, p) in path.iter().enumerate() {
        if i + 1 == path.len() {
            cur[*p] = v;
            break;
        }
        cur = match p.parse::<usize>() {
            Ok(n) => &mut cur[n],
            Err(_) => &mut cur[*p],
        };
    }
    e
}

/// The `loc` of the first error of a 400 body or a batch item's error, as `a.0.b`.
fn first_loc(error: &Value) -> String {
    error["errors"][0]["loc"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .map(|p| match p {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(".")
        })
        .unwrap_or_default()
}

/// Waits until the queue is empty, then checks rows and dead letters against what was
/// accepted, and that the process still answers.
async fn assert_settled(env: &TestEnv, app: &RunningApp, rows: u64, dead: usize) {
    wait_until("the queue drains", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    wait_until("the rows land", SETTLE, || async {
        env.row_count().await == rows
    })
    .await;
    assert_eq!(env.dead_letters().await.len(), dead, "dead letters");
    let health = app.health().await;
    assert_eq!(health["service"], "ok", "{health}");
    assert_eq!(health["queue_depth"], 0, "{health}");
}

/// Every hostile variant of a good event, with the field its error must name.
fn hostile_variants(good: &Value) -> Vec<(Value, &'static str)> {
    let mut deep = json!("leaf");
    for _ in 0..=limits::MAX_NESTING {
        deep = json!({ "n": deep });
    }
    vec![
        (
            with(
                good,
                &["metrics", "0", "parameter_key"],
                json!(key("volt\u{0}age")),
            ),
            "metrics.0.parameter_key",
        ),
        (with(good, &["protocol"], json!("GPRS\u{0}")), "protocol"),
        (with(good, &["event_id"], json!("id-\u{0}")), "event_id"),
        (
            with(good, &["config_version"], json!("v\u{0}")),
            "config_version",
        ),
        (
            with(
                good,
                &["metrics", "0", "attributes"],
                json!({"unit\u{0}": "V"}),
            ),
            "metrics.0.attributes",
        ),
        (
            with(good, &["metadata"], json!({"note": ["a", "b\u{0}"]})),
            "metadata",
        ),
        (
            with(
                good,
                &["source_timestamp"],
                json!("0000-01-01T00:00:00+01:00"),
            ),
            "source_timestamp",
        ),
        (
            with(
                good,
                &["source_timestamp"],
                json!("9999-12-31T23:00:00-02:00"),
            ),
            "source_timestamp",
        ),
        (with(good, &["metadata"], deep), "metadata"),
        (
            with(
                good,
                &["protocol"],
                json!("P".repeat(limits::MAX_PROTOCOL_CHARS + 1)),
            ),
            "protocol",
        ),
        (
            with(
                good,
                &["event_id"],
                json!("e".repeat(limits::MAX_EVENT_ID_CHARS + 1)),
            ),
            "event_id",
        ),
        (
            with(
                good,
                &["metrics", "0", "attributes"],
                json!({"blob": "x".repeat(limits::MAX_ATTRIBUTES_BYTES)}),
            ),
            "metrics.0.attributes",
        ),
        (
            with(
                good,
                &["metadata"],
                json!({"blob": "x".repeat(limits::MAX_METADATA_BYTES)}),
            ),
            "metadata",
        ),
    ]
}

/// What the store cannot hold is refused at the door, singly (400 naming the field) and
/// inside a batch (a per-item error), and the good events of the same batch land.
async fn unstorable_content_is_refused_at_the_door(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    let good = event(0, &[("voltage", 1.0)]);
    let variants = hostile_variants(&good);
    for (bad, field) in &variants {
        let (status, body) = app.post_event(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        assert_eq!(first_loc(&body), *field, "{body}");
        let text = body.to_string();
        for leak in ["SELECT", "INSERT", "postgres", "rusqlite", "serde", ".rs:"] {
            assert!(!text.contains(leak), "{text}");
        }
    }
    // The same variants inside one batch, between good events.
    let mut batch = Vec::new();
    for (i, (bad, _)) in variants.iter().enumerate() {
        batch.push(event(i as i64 + 1, &[("voltage", i as f64)]));
        batch.push(bad.clone());
    }
    let (status, body) = app.post_batch(&batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], variants.len(), "{body}");
    assert_eq!(body["rejected"], variants.len(), "{body}");
    for (i, (_, field)) in variants.iter().enumerate() {
        let item = &body["results"][2 * i + 1];
        assert_eq!(first_loc(&item["error"]), *field, "{item}");
    }
    assert_settled(&env, &app, variants.len() as u64, 0).await;
    app.stop().await;
}
both_deployments!(unstorable_content_is_refused_at_the_door);

fn at(t: chrono::DateTime<Utc>) -> Value {
    with(
        &event(0, &[("voltage", 1.0)]),
        &["source_timestamp"],
        json!(t.to_rfc3339_opts(SecondsFormat::Secs, true)),
    )
}

/// Readings more than INGEST_MAX_FUTURE ahead are refused (they would pin the latest value);
/// old readings are kept unless INGEST_MAX_PAST says otherwise.
async fn far_future_readings_are_refused_and_old_ones_kept(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    let now = Utc::now();
    let (status, body) = app.post_event(&at(now + chrono::Duration::days(3))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(first_loc(&body), "source_timestamp");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("INGEST_MAX_FUTURE")),
        "{body}"
    );
    for ok in [
        now + chrono::Duration::hours(1),
        now - chrono::Duration::days(4000),
    ] {
        let (status, body) = app.post_event(&at(ok)).await;
        assert_eq!(status, StatusCode::OK, "{ok}: {body}");
    }
    assert_settled(&env, &app, 2, 0).await;
    app.stop().await;

    // An operator's lower bound and a wider upper bound.
    let app = env
        .start(
            Role::Serve,
            &["--ingest-max-past", "30d", "--ingest-max-future", "7d"],
        )
        .await;
    let (status, body) = app.post_event(&at(now - chrono::Duration::days(31))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("INGEST_MAX_PAST")),
        "{body}"
    );
    let (status, body) = app.post_event(&at(now + chrono::Duration::days(3))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_settled(&env, &app, 3, 0).await;
    app.stop().await;
}
both_deployments!(far_future_readings_are_refused_and_old_ones_kept);

/// A batch item larger than a single event may be is refused alone (on both deployments,
/// whatever the queue's own message limit); the others land.
async fn a_batch_item_larger_than_one_event_is_refused_alone(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env
        .start(Role::Serve, &["--ingest-max-body-bytes", "4096"])
        .await;
    let metrics: Vec<(&str, f64)> = (0..60).map(|i| ("voltage", f64::from(i))).collect();
    let big = event(1, &metrics);
    assert!(big.to_string().len() > 4096);
    let batch = [
        event(0, &[("voltage", 1.0)]),
        big.clone(),
        event(2, &[("current", 2.0)]),
    ];
    let (status, body) = app.post_batch(&batch).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 2, "{body}");
    let err = &body["results"][1]["error"];
    assert!(
        err["detail"]
            .as_str()
            .is_some_and(|d| d.contains("INGEST_MAX_BODY_BYTES")),
        "{body}"
    );
    // The single endpoint says the same with 413.
    let (status, _) = app.post_event(&big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_settled(&env, &app, 2, 0).await;
    app.stop().await;
}
both_deployments!(a_batch_item_larger_than_one_event_is_refused_alone);

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).expect("gzip into memory");
    enc.finish().expect("gzip finish")
}

/// 10,000 invalid items in a small gzip body (each with many errors) get a report that is
/// a small multiple of the body, not one full error list per item; nothing is queued.
async fn the_error_report_of_a_batch_is_bounded(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    let item = format!(r#"{{"metrics":[{}1]}}"#, "1,".repeat(199));
    let body = format!("[{}{item}]", format!("{item},").repeat(9_999));
    let packed = gzip(body.as_bytes());
    assert!(packed.len() < 64 * 1024, "{} bytes", packed.len());
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/ingest/batch", app.base))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(packed)
        .send()
        .await
        .expect("sent");
    // Nothing valid: 400, status "rejected" (nothing was queued).
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let text = resp.text().await.expect("body");
    assert!(text.len() < 3 << 20, "report of {} bytes", text.len());
    let report: Value = serde_json::from_str(&text).expect("JSON report");
    assert_eq!(report["status"], "rejected");
    assert_eq!(report["accepted"], 0);
    assert_eq!(report["rejected"], 10_000);
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 10_000);
    let first = &results[0]["error"];
    assert!(
        first["detail"]
            .as_str()
            .is_some_and(|d| d.contains("more errors"))
    );
    let listed = first["errors"].as_array().map_or(0, Vec::len);
    assert!((1..=10).contains(&listed), "{first}");
    assert!(results[9_999]["error"]["detail"].is_string());
    assert!(results[9_999]["error"]["errors"].is_null());
    assert_settled(&env, &app, 0, 0).await;
    app.stop().await;
}
both_deployments!(the_error_report_of_a_batch_is_bounded);

/// Parameter keys at the edge of the rules, registered as templates.
fn edge_keys() -> Vec<String> {
    let prefix = key("");
    let fill = |c: &str, total: usize| {
        let n = total - prefix.chars().count();
        format!("{prefix}{}", c.repeat(n))
    };
    vec![
        fill("😀", nsready::event::MAX_PARAMETER_KEY_CHARS),
        format!("{prefix}tab\there\nnewline\u{1}\u{7f}"),
        format!("{prefix}quote\"back\\slash'; DROP TABLE ingest_events; --"),
        format!("{prefix}\u{202e}rtl\u{feff}bom\u{10ffff}"),
    ]
}

/// Everything at the edge of the rules is accepted and lands, on both stores: what the
/// parser accepts, the store accepts.
async fn events_at_the_edge_of_every_rule_all_land(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let keys = edge_keys();
    let doc = json!({"parameter_templates": keys.iter().map(|k| json!({"key": k, "name": "edge"})).collect::<Vec<_>>()});
    let path = env.dir.path().join("edge-registry.json");
    std::fs::write(&path, doc.to_string()).expect("write registry");
    let out = env
        .command("registry", &["import", &path.display().to_string()])
        .output()
        .expect("registry import runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Year 9999 is far ahead: INGEST_MAX_FUTURE=0 turns the upper bound off.
    let app = env.start(Role::Serve, &["--ingest-max-future", "0"]).await;
    let mut nested = json!("leaf");
    for _ in 0..limits::MAX_NESTING - 1 {
        nested = json!([nested]);
    }
    let full_attrs = {
        // Exactly MAX_ATTRIBUTES_BYTES of compact JSON: {"b":"…"}.
        let pad = limits::MAX_ATTRIBUTES_BYTES - r#"{"b":""}"#.len();
        json!({"b": "a".repeat(pad)})
    };
    assert_eq!(full_attrs.to_string().len(), limits::MAX_ATTRIBUTES_BYTES);
    let timestamps = [
        "0000-01-01T00:00:00Z",
        "0000-01-01T01:30:00+00:30",
        "9999-12-31T23:59:59.999999Z",
        "2016-12-31T23:59:60.5Z",
        "2025-11-14 12:00:00.1234567",
        "1970-01-01T00:00:00-00:00",
    ];
    let values = [
        json!(f64::MAX),
        json!(f64::MIN_POSITIVE),
        json!(5e-324),
        json!(-0.0),
        json!(u64::MAX),
        Value::Null,
    ];
    let mut sent = Vec::new();
    for (i, ts) in timestamps.iter().enumerate() {
        let metrics: Vec<Value> = keys
            .iter()
            .enumerate()
            .map(|(j, k)| {
                let attributes = match j % 3 {
                    0 => json!({"deep": nested.clone(), "ctl": "\u{1}\u{1f}\"\\"}),
                    1 => full_attrs.clone(),
                    _ => json!({}),
                };
                json!({"parameter_key": k, "value": values[(i + j) % values.len()], "quality": 255, "attributes": attributes})
            })
            .collect();
        sent.push(json!({
            "project_id": demo_ids::PROJECT_01, "site_id": demo_ids::SITE_01,
            "device_id": demo_ids::DEVICE_01_1,
            "protocol": "☃".repeat(limits::MAX_PROTOCOL_CHARS),
            "source_timestamp": ts,
            "metrics": metrics,
            "event_id": "\u{1}".repeat(limits::MAX_EVENT_ID_CHARS),
            "config_version": "v".repeat(limits::MAX_CONFIG_VERSION_CHARS),
            "metadata": {"m": "z".repeat(limits::MAX_METADATA_BYTES - r#"{"m":""}"#.len())},
        }));
    }
    // Half singly, half in one batch.
    let (singles, batched) = sent.split_at(sent.len() / 2);
    for ev in singles {
        let (status, body) = app.post_event(ev).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = app.post_batch(batched).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], batched.len(), "{body}");
    assert_settled(&env, &app, (sent.len() * keys.len()) as u64, 0).await;
    app.stop().await;
}
both_deployments!(events_at_the_edge_of_every_rule_all_land);

/// Messages other producers publish straight to the queue get the same checks in the
/// worker, with the time window's upper bound (plus a few minutes for clocks that differ)
/// but never its lower bound: a message is not refused for the age it reached in the queue.
async fn the_worker_applies_the_window_to_other_producers_but_not_the_lower_bound(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, &["--ingest-max-past", "30d"]).await;
    let now = Utc::now();
    let old = at(now - chrono::Duration::days(60));
    let future = at(now + chrono::Duration::days(3));
    let nul = with(
        &event(5, &[("voltage", 1.0)]),
        &["protocol"],
        json!("a\u{0}"),
    );
    for bare in [&old, &future, &nul] {
        env.publish_raw(bare.to_string().as_bytes()).await;
    }
    assert_settled(&env, &app, 1, 2).await;
    let dead = env.dead_letters().await;
    assert!(
        dead.iter().all(|d| d.error_type == "validation_error"),
        "{dead:?}"
    );
    assert!(
        dead.iter().any(|d| d.reason.contains("INGEST_MAX_FUTURE")),
        "{dead:?}"
    );
    assert!(dead.iter().any(|d| d.reason.contains("NUL")), "{dead:?}");
    app.stop().await;
}
both_deployments!(the_worker_applies_the_window_to_other_producers_but_not_the_lower_bound);
