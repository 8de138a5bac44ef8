//! The operator's tools, driven through the real binary on both deployments: `dlq list`
//! (filters, counts by error type, JSON), `dlq show`, `dlq replay` (all, by filter, by
//! sequence, dry run; still-bad events come back as one new dead letter), `dlq purge`
//! (confirmation or `--yes`), `status` (exit codes 0/1/2, `--json`) and the consumer stall
//! report of `/v1/health` and `/metrics`. Each test ends by checking that every accepted
//! event is a row or a dead letter (or was purged on purpose).
//!
//! In embedded mode `dlq` commands take the DATA_DIR lock, so tests stop the app first,
//! as an operator stops `nsready serve`.

use std::process::Stdio;
use std::time::Duration;

use nsready::app::Role;
use nsready::registry::{Device, RegistryDoc, demo, demo_ids};
use reqwest::StatusCode;
use serde_json::Value;

use crate::both_deployments;
use crate::support::app::{Import, Kind, RunningApp, TestEnv, metric, wait_until};
use crate::support::{event, event_for};

/// What a run of the binary gave back.
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Output {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }
}

/// Runs `nsready <sub> <args>` with the env's settings, stdin closed (not a terminal).
async fn cli(env: &TestEnv, sub: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::from(env.command(sub, args));
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run nsready");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs a command that must succeed.
async fn cli_ok(env: &TestEnv, sub: &str, args: &[&str]) -> Output {
    let out = cli(env, sub, args).await;
    assert_eq!(
        out.code, 0,
        "nsready {sub} {args:?}: {}\n{}",
        out.stdout, out.stderr
    );
    out
}

/// `dlq list --json` with these filter flags: (count, dead letters).
async fn list(env: &TestEnv, filter: &[&str]) -> (u64, Vec<Value>) {
    let mut args = vec!["list", "--json"];
    args.extend(filter);
    let doc = cli_ok(env, "dlq", &args).await.json();
    let letters = doc["dead_letters"].as_array().cloned().unwrap_or_default();
    let count = doc["count"].as_u64().expect("count");
    assert_eq!(count, letters.len() as u64, "{doc}");
    (count, letters)
}

/// The demo registry without the devices at `remove` (indices into `demo().devices`),
/// imported; returns the removed devices.
async fn registry_without(env: &TestEnv, remove: &[usize]) -> Vec<Device> {
    let mut doc = demo();
    let mut late = Vec::new();
    for &i in remove.iter().rev() {
        late.push(doc.devices.remove(i));
    }
    late.reverse();
    env.with_store(Import(doc)).await;
    late
}

/// Imports devices that were left out.
async fn import_devices(env: &TestEnv, devices: Vec<Device>) {
    env.with_store(Import(RegistryDoc {
        devices,
        ..Default::default()
    }))
    .await;
}

async fn post_ok(app: &RunningApp, ev: &Value) {
    let (status, body) = app.post_event(ev).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Waits until the queue is empty and health shows `dlq` dead letters.
async fn settled(app: &RunningApp, dlq: u64) {
    wait_until(
        "the queue drains and the DLQ holds what it should",
        Duration::from_secs(60),
        || async {
            let h = app.health().await;
            h["queue_depth"] == 0 && h["dlq_depth"] == dlq
        },
    )
    .await;
}

fn seq(letter: &Value) -> String {
    letter["seq"].as_u64().expect("seq").to_string()
}

/// `dlq list`: counts by error type in text and JSON; filters by reason, device and time
/// (RFC 3339 and relative); `dlq show` prints reason, attempts, headers and payload.
async fn dlq_list_filters_and_show(kind: Kind) {
    let env = TestEnv::new(kind);
    let late = registry_without(&env, &[1]).await.remove(0);
    let app = env.start(Role::Serve, &["--worker-max-retries", "2"]).await;
    post_ok(&app, &event_for(late.id, 0, &[("voltage", 1.0)])).await;
    post_ok(&app, &event_for(late.id, 1, &[("voltage", 2.0)])).await;
    post_ok(&app, &event(0, &[("frequency", 50.0)])).await;
    post_ok(&app, &event(1, &[("voltage", 230.0)])).await;
    post_ok(&app, &event(2, &[("voltage", 231.0)])).await;
    let accepted = 5;
    settled(&app, 3).await;
    app.stop().await;

    let text = cli_ok(&env, "dlq", &["list"]).await.stdout;
    assert!(text.starts_with("3 dead letters"), "{text}");
    let count_line = |t: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(t))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    assert_eq!(
        count_line("device_not_found"),
        Some(vec!["device_not_found", "2"])
    );
    assert_eq!(
        count_line("parameter_not_found"),
        Some(vec!["parameter_not_found", "1"])
    );
    assert!(text.contains(&late.id.to_string()), "device column: {text}");

    let doc = cli_ok(&env, "dlq", &["list", "--json"]).await.json();
    assert_eq!(doc["count"], 3, "{doc}");
    assert_eq!(doc["by_error_type"]["device_not_found"], 2, "{doc}");
    assert_eq!(doc["by_error_type"]["parameter_not_found"], 1, "{doc}");

    let (n, by_reason) = list(&env, &["--reason", "device_not_found"]).await;
    assert_eq!(n, 2);
    assert!(
        by_reason
            .iter()
            .all(|d| d["device_id"] == late.id.to_string())
    );
    assert_eq!(
        list(&env, &["--reason", "frequency"]).await.0,
        1,
        "reason text"
    );
    let dev = demo_ids::DEVICE_01_1.to_string();
    assert_eq!(list(&env, &["--device", &dev]).await.0, 1);
    assert_eq!(list(&env, &["--since", "1h"]).await.0, 3);
    assert_eq!(list(&env, &["--until", "1h"]).await.0, 0);
    assert_eq!(list(&env, &["--since", "2999-01-01T00:00:00Z"]).await.0, 0);
    assert_eq!(list(&env, &["--until", "2999-01-01T00:00:00Z"]).await.0, 3);
    let both = ["--since", "10m", "--reason", "device_not_found"];
    assert_eq!(list(&env, &both).await.0, 2);
    let bad = cli(&env, "dlq", &["list", "--since", "last tuesday"]).await;
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("RFC 3339"), "{}", bad.stderr);

    let first = &by_reason[0];
    let s = seq(first);
    let shown = cli_ok(&env, "dlq", &["show", &s]).await.stdout;
    for want in [
        "error type     device_not_found",
        "attempts       2 deliveries",
        "gave up after 2 deliveries",
        "original seq",
        "dead at",
        "payload",
        ":voltage\"",
        &late.id.to_string(),
    ] {
        assert!(shown.contains(want), "`{want}` missing from:\n{shown}");
    }
    let one = cli_ok(&env, "dlq", &["show", &s, "--json"]).await.json();
    assert_eq!(one["attempts"], 2, "{one}");
    assert_eq!(one["error_type"], "device_not_found");
    assert_eq!(one["payload"]["event"]["device_id"], late.id.to_string());
    let missing = cli(&env, "dlq", &["show", "999999"]).await;
    assert_ne!(missing.code, 0);
    assert!(
        missing
            .stderr
            .contains("no dead letter with sequence 999999"),
        "{}",
        missing.stderr
    );

    assert_eq!(env.row_count().await + 3, accepted, "accepted = rows + DLQ");
}
both_deployments!(dlq_list_filters_and_show);

/// Replaying an event whose device is still unknown: it goes through the retries again and
/// comes back as one new dead letter (new sequences, full attempts); the DLQ never grows,
/// and replaying again works the same.
async fn dlq_replay_of_a_still_bad_event_dead_letters_it_once_more(kind: Kind) {
    let env = TestEnv::new(kind);
    let late = registry_without(&env, &[1]).await.remove(0);
    let args = ["--worker-max-retries", "2"];
    let app = env.start(Role::Serve, &args).await;
    post_ok(&app, &event_for(late.id, 0, &[("voltage", 1.0)])).await;
    settled(&app, 1).await;
    app.stop().await;
    let mut seen = Vec::new();
    let (_, first) = list(&env, &[]).await;
    seen.push((first[0]["seq"].clone(), first[0]["original_seq"].clone()));

    for round in 0..2 {
        let out = cli_ok(&env, "dlq", &["replay"]).await.stdout;
        assert!(
            out.contains("replayed 1 dead letters"),
            "round {round}: {out}"
        );
        assert_eq!(list(&env, &[]).await.0, 0, "replayed letters leave the DLQ");
        assert_eq!(
            env.queue_stats().await.depth(),
            1,
            "back on the ingest queue"
        );
        let app = env.start(Role::Serve, &args).await;
        settled(&app, 1).await;
        // Give a looping replay the chance to show itself: the DLQ must stay at one.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        settled(&app, 1).await;
        app.stop().await;
        let (n, again) = list(&env, &[]).await;
        assert_eq!(n, 1, "round {round}: {again:?}");
        let d = &again[0];
        assert_eq!(d["error_type"], "device_not_found");
        assert_eq!(d["attempts"], 2, "the normal policy, from delivery 1: {d}");
        let ids = (d["seq"].clone(), d["original_seq"].clone());
        assert!(
            seen.iter().all(|(s, o)| *s != ids.0 && *o != ids.1),
            "a new message and a new dead letter each time: {seen:?} vs {ids:?}"
        );
        seen.push(ids);
    }
    assert_eq!(env.row_count().await, 0);
    assert_eq!(env.queue_stats().await.depth(), 0);
    // accepted (1) = rows (0) + dead letters (1).
    assert_eq!(list(&env, &[]).await.0, 1);
}
both_deployments!(dlq_replay_of_a_still_bad_event_dead_letters_it_once_more);

/// `dlq replay --dry-run` changes nothing; replay by filter (device) and by sequence
/// replays exactly those; after the devices were imported they land, the rest stays.
async fn dlq_replay_by_filter_and_sequence_with_dry_run(kind: Kind) {
    let env = TestEnv::new(kind);
    let late = registry_without(&env, &[0, 1]).await;
    let (a, b) = (late[0].id, late[1].id);
    let app = env.start(Role::Serve, &["--worker-max-retries", "1"]).await;
    post_ok(&app, &event_for(a, 0, &[("voltage", 1.0)])).await;
    post_ok(&app, &event_for(b, 0, &[("voltage", 2.0)])).await;
    post_ok(&app, &event_for(a, 1, &[("voltage", 3.0)])).await;
    let accepted = 3;
    settled(&app, 3).await;
    app.stop().await;
    import_devices(&env, late).await;

    let dry = cli_ok(&env, "dlq", &["replay", "--dry-run"]).await.stdout;
    assert!(
        dry.contains("dry run: 3 dead letters would be replayed"),
        "{dry}"
    );
    assert_eq!(list(&env, &[]).await.0, 3, "a dry run changes nothing");
    assert_eq!(env.queue_stats().await.depth(), 0);

    let out = cli_ok(&env, "dlq", &["replay", "--device", &b.to_string()]).await;
    assert!(
        out.stdout.contains("replayed 1 dead letters"),
        "{}",
        out.stdout
    );
    let (_, of_a) = list(&env, &["--device", &a.to_string()]).await;
    assert_eq!(of_a.len(), 2);
    let out = cli_ok(&env, "dlq", &["replay", &seq(&of_a[0])]).await;
    assert!(
        out.stdout.contains("replayed 1 dead letters"),
        "{}",
        out.stdout
    );
    let (n, left) = list(&env, &[]).await;
    assert_eq!(n, 1);
    assert_eq!(
        left[0]["seq"], of_a[1]["seq"],
        "only the chosen ones were replayed"
    );
    assert_eq!(env.queue_stats().await.depth(), 2);

    let app = env.start(Role::Serve, &[]).await;
    settled(&app, 1).await;
    app.stop().await;
    let rows = env.row_count().await;
    assert_eq!(rows, 2);
    assert_eq!(
        rows + list(&env, &[]).await.0,
        accepted,
        "accepted = rows + DLQ"
    );
}
both_deployments!(dlq_replay_by_filter_and_sequence_with_dry_run);

/// `dlq purge` refuses without a terminal to confirm on unless `--yes`; with a filter it
/// deletes only the matching ones.
async fn dlq_purge_needs_confirmation_or_yes(kind: Kind) {
    let env = TestEnv::new(kind);
    let late = registry_without(&env, &[1]).await.remove(0);
    let app = env.start(Role::Serve, &["--worker-max-retries", "1"]).await;
    post_ok(&app, &event_for(late.id, 0, &[("voltage", 1.0)])).await;
    post_ok(&app, &event(0, &[("frequency", 50.0)])).await;
    post_ok(&app, &event(1, &[("voltage", 230.0)])).await;
    let accepted = 3;
    settled(&app, 2).await;
    app.stop().await;

    let refused = cli(&env, "dlq", &["purge"]).await;
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("--yes"), "{}", refused.stderr);
    assert_eq!(
        list(&env, &[]).await.0,
        2,
        "nothing purged without confirmation"
    );

    let out = cli_ok(
        &env,
        "dlq",
        &["purge", "--yes", "--reason", "device_not_found"],
    )
    .await;
    assert!(
        out.stdout.contains("purged 1 dead letters"),
        "{}",
        out.stdout
    );
    let (n, left) = list(&env, &[]).await;
    assert_eq!(n, 1);
    assert_eq!(left[0]["error_type"], "parameter_not_found");
    let out = cli_ok(&env, "dlq", &["purge", "--yes"]).await;
    assert!(
        out.stdout.contains("purged 1 dead letters"),
        "{}",
        out.stdout
    );
    assert_eq!(list(&env, &[]).await.0, 0);
    let purged = 2;
    assert_eq!(
        env.row_count().await + purged,
        accepted,
        "accepted = rows + DLQ (0) + purged"
    );
}
both_deployments!(dlq_purge_needs_confirmation_or_yes);

/// `status`: 0 on a healthy service, 1 once the DLQ is not empty (with the count by error
/// type), 2 when the service does not answer; `--json` parses and carries the health
/// document with worker count and throughput.
async fn status_exit_codes_and_json(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, &["--worker-max-retries", "1"]).await;
    post_ok(&app, &event(0, &[("voltage", 230.0)])).await;
    settled(&app, 0).await;

    let url = app.base.clone();
    let ok = cli(&env, "status", &["--url", &url]).await;
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.starts_with("nsready OK"), "{}", ok.stdout);
    assert!(ok.stdout.contains("workers         2"), "{}", ok.stdout);
    assert!(ok.stdout.contains("events/s committed"), "{}", ok.stdout);
    let doc = cli(&env, "status", &["--url", &url, "--json"]).await.json();
    assert_eq!(doc["verdict"], "OK", "{doc}");
    assert_eq!(doc["exit_code"], 0);
    assert_eq!(doc["health"]["workers"], 2);
    assert_eq!(doc["health"]["db"], "connected");
    let rate = doc["health"]["throughput"]["committed_per_sec"]
        .as_f64()
        .expect("throughput");
    assert!(
        rate > 0.0,
        "one event committed within the last minute: {doc}"
    );

    // An unknown device: dead-lettered after one delivery.
    let stranger = uuid::Uuid::new_v4();
    post_ok(&app, &event_for(stranger, 0, &[("voltage", 1.0)])).await;
    settled(&app, 1).await;
    let warn = cli(&env, "status", &["--url", &url]).await;
    assert_eq!(warn.code, 1, "{}\n{}", warn.stdout, warn.stderr);
    assert!(
        warn.stdout.starts_with("nsready WARNING"),
        "{}",
        warn.stdout
    );
    assert!(
        warn.stdout
            .contains("dlq depth       1 (device_not_found 1)"),
        "{}",
        warn.stdout
    );
    let doc = cli(&env, "status", &["--url", &url, "--json"]).await.json();
    assert_eq!(doc["exit_code"], 1, "{doc}");
    assert_eq!(
        doc["health"]["dlq_by_reason"]["device_not_found"], 1,
        "{doc}"
    );
    assert_eq!(doc["health"]["dlq_by_reason_complete"], true);
    // Thresholds are configurable: the DLQ check off gives OK again.
    let off = cli(&env, "status", &["--url", &url, "--warn-dlq", "0"]).await;
    assert_eq!(off.code, 0, "{}", off.stdout);

    app.stop().await;
    let down = cli(&env, "status", &["--url", &url]).await;
    assert_eq!(down.code, 2, "{}\n{}", down.stdout, down.stderr);
    assert!(down.stdout.contains("does not answer"), "{}", down.stdout);
    let doc = cli(&env, "status", &["--url", &url, "--json"]).await.json();
    assert_eq!(doc["verdict"], "CRITICAL", "{doc}");

    assert_eq!(env.row_count().await + 1, 2, "accepted = rows + DLQ");
    assert_eq!(env.dead_letters().await.len(), 1);
}
both_deployments!(status_exit_codes_and_json);

/// `status` is critical while PostgreSQL is down, and healthy again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_critical_while_the_database_is_down() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    post_ok(&app, &event(0, &[("voltage", 230.0)])).await;
    settled(&app, 0).await;
    let url = app.base.clone();
    assert_eq!(cli(&env, "status", &["--url", &url]).await.code, 0);

    let pg = env.pg.as_ref().expect("pg");
    tokio::task::block_in_place(|| pg.stop());
    wait_until(
        "health sees the database down",
        Duration::from_secs(20),
        || async { app.health().await["db"] == "disconnected" },
    )
    .await;
    let out = cli(&env, "status", &["--url", &url, "--json"]).await;
    assert_eq!(out.code, 2, "{}\n{}", out.stdout, out.stderr);
    let doc = out.json();
    assert_eq!(doc["verdict"], "CRITICAL");
    assert!(
        doc["notes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x == "database disconnected")),
        "{doc}"
    );
    let text = cli(&env, "status", &["--url", &url]).await.stdout;
    assert!(text.contains("database        disconnected"), "{text}");

    tokio::task::block_in_place(|| pg.start_again());
    wait_until(
        "status is healthy again",
        Duration::from_secs(30),
        || async { cli(&env, "status", &["--url", &url]).await.code == 0 },
    )
    .await;
    app.stop().await;
    assert_eq!(env.row_count().await, 1, "accepted = rows");
    assert!(env.dead_letters().await.is_empty());
}

/// An event waits for a device that is not imported yet (NAK loop, retries left): once the
/// queue has been non-empty without a commit for STALL_AFTER, health is degraded with a
/// `stalled` reason, the metric says 1 and `status` is critical. Importing the device lets
/// the event land and health returns to ok. The pool sat idle for longer than STALL_AFTER
/// before the event came: that alone is not a stall.
async fn a_stalled_consumer_is_reported_and_clears(kind: Kind) {
    let env = TestEnv::new(kind);
    let late = registry_without(&env, &[1]).await;
    let app = env
        .start(
            Role::Serve,
            &[
                "--stall-after",
                "1",
                "--worker-max-retries",
                "1000",
                "--worker-retry-delay",
                "0.2",
            ],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    post_ok(&app, &event_for(late[0].id, 0, &[("voltage", 1.0)])).await;
    let h = app.health().await;
    assert_eq!(h["service"], "ok", "just arrived is not stalled: {h}");

    let stalled = |h: &Value| {
        h["reasons"].as_array().is_some_and(|r| {
            r.iter()
                .any(|x| x.as_str().is_some_and(|s| s.starts_with("stalled")))
        })
    };
    wait_until(
        "health reports the stall",
        Duration::from_secs(15),
        || async { stalled(&app.health().await) },
    )
    .await;
    let h = app.health().await;
    assert_eq!(h["service"], "degraded", "{h}");
    assert!(h["queue_depth"].as_u64().unwrap_or(0) > 0, "{h}");
    let m = app.metrics().await;
    assert_eq!(metric(&m, "ingest_worker_stalled"), Some(1.0), "{m}");
    let out = cli(&env, "status", &["--url", &app.base]).await;
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(out.stdout.contains("stalled"), "{}", out.stdout);

    import_devices(&env, late).await;
    wait_until(
        "the waiting event lands",
        Duration::from_secs(60),
        || async { env.row_count().await == 1 },
    )
    .await;
    wait_until("health is ok again", Duration::from_secs(15), || async {
        app.health().await["service"] == "ok"
    })
    .await;
    let m = app.metrics().await;
    assert_eq!(metric(&m, "ingest_worker_stalled"), Some(0.0), "{m}");
    settled(&app, 0).await;
    app.stop().await;
    assert_eq!(env.row_count().await, 1, "accepted = rows");
    assert!(env.dead_letters().await.is_empty());
}
both_deployments!(a_stalled_consumer_is_reported_and_clears);
