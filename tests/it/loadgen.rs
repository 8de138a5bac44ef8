//! `nsready loadgen` end to end: the real binary sends load to a running service on both
//! deployments, waits for the drain and verifies accepted events × metrics = new rows.
//! Speed is never asserted here (BENCHMARKS.md holds the figures); only correctness.

use nsready::app::Role;
use serde_json::Value;

use crate::both_deployments;
use crate::support::app::{Kind, TestEnv};

/// Runs the binary's loadgen against `base` and returns its JSON report (panics with its
/// stderr when it fails or prints no JSON).
async fn loadgen(env: &TestEnv, base: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--url",
        base,
        "--json",
        "--quiet",
        "--log-level",
        "warn",
        "--drain-timeout",
        "60",
    ];
    args.extend_from_slice(extra);
    let out = tokio::process::Command::from(env.command("loadgen", &args))
        .output()
        .await
        .expect("run nsready loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadgen failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("loadgen printed no JSON ({e}):\n{stdout}\nstderr: {stderr}"))
}

/// Single-event and batch load both verify: every accepted event landed once, and the rows
/// loadgen counted are the rows in the table.
async fn loadgen_verifies_single_and_batch_load(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    let mut total_rows = 0;
    for extra in [
        &["--duration", "3", "--concurrency", "8"][..],
        &["--duration", "3", "--concurrency", "2", "--batch", "50"][..],
        &[
            "--duration",
            "2",
            "--rate",
            "200",
            "--concurrency",
            "4",
            "--metrics",
            "2",
        ][..],
    ] {
        let r = loadgen(&env, &app.base, extra).await;
        let v = &r["verification"];
        assert_eq!(v["status"], "PASS", "{extra:?}: {r}");
        let accepted = r["accepted_events"].as_u64().expect("accepted_events");
        assert!(accepted > 0, "{extra:?}: no event accepted: {r}");
        let per_event = if extra.contains(&"--metrics") { 2 } else { 3 };
        assert_eq!(
            r["accepted_rows"].as_u64(),
            Some(accepted * per_event),
            "{r}"
        );
        assert_eq!(v["actual_rows"], v["expected_rows"], "{r}");
        assert_eq!(r["refused_503_events"], 0, "{r}");
        assert!(r["latency_ms"]["p99"].as_f64().is_some(), "{r}");
        assert!(
            r["commit_latency_ms"]["p50"].as_f64().is_some(),
            "the workers' histogram was read: {r}"
        );
        total_rows += accepted * per_event;
    }
    assert_eq!(env.row_count().await, total_rows);
    assert!(env.dead_letters().await.is_empty());
    app.stop().await;
}
both_deployments!(loadgen_verifies_single_and_batch_load);

/// `--events` stops at that many events; `--no-wait` reports without verifying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_stops_at_the_event_count_and_no_wait_skips_the_check() {
    let env = TestEnv::new(Kind::Embedded);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    let r = loadgen(
        &env,
        &app.base,
        &[
            "--events",
            "1234",
            "--batch",
            "100",
            "--duration",
            "30",
            "--no-wait",
        ],
    )
    .await;
    assert_eq!(r["accepted_events"], 1234, "{r}");
    assert_eq!(r["verification"]["status"], "NOT VERIFIED", "{r}");
    app.stop().await;
}
