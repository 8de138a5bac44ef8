//! Fault drills of the scale-out deployment under steady load (issue 4): workers killed
//! mid-batch again and again, a collector killed while clients retry, NATS away, the
//! database slower than the ack wait, many workers on one consumer, the registry changed
//! under load, and a clean stop with SIGTERM. Each ends by counting: every accepted event
//! is a row (or a dead letter), one row per key, nothing in the DLQ that does not belong.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nsready::app::Role;
use nsready::registry::demo_ids;

use crate::support::app::{Kind, TestEnv, metric, wait_ready, wait_until};
use crate::support::servers::free_port;
use crate::support::{Load, Proc, event, event_for, landed, signal};

const DRAIN: Duration = Duration::from_secs(90);

fn two_metrics(i: i64) -> serde_json::Value {
    event(i, &[("voltage", i as f64), ("current", 1.0)])
}

/// Starts `nsready <role>` as a child process on a free port; returns it and its base URL.
fn spawn(env: &TestEnv, role: &str, extra: &[&str]) -> (Proc, String) {
    let port = free_port().to_string();
    let mut args = vec!["--service-port", port.as_str()];
    args.extend_from_slice(extra);
    let child = env
        .command(role, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nsready");
    (Proc(child), format!("http://127.0.0.1:{port}"))
}

/// Waits until the queue is empty, then checks every accepted event of the first demo
/// device is a row with both metrics, and nothing else is.
async fn assert_all_landed(env: &TestEnv, accepted: &std::collections::BTreeSet<i64>) {
    wait_until("the queue drains", DRAIN, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    let rows = env.rows();
    let got = landed(&rows, demo_ids::DEVICE_01_1);
    let missing: Vec<_> = accepted.difference(&got).take(10).collect();
    assert!(missing.is_empty(), "accepted but not landed: {missing:?}");
    assert_eq!(
        rows.len(),
        2 * got.len(),
        "both metrics of every event, one row per key"
    );
    assert!(env.dead_letters().await.is_empty(), "no dead letters");
}

/// kill -9 of a worker process mid-batch, five times, with a second worker alive; then of
/// the only worker, restarted later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_mid_batch_lose_and_double_nothing() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let collector = env.start(Role::Collector, &[]).await;
    let w = ["--worker-ack-wait", "2", "--worker-pool-size", "4"];
    let (_b, _) = spawn(&env, "worker", &w);
    let (mut a, base_a) = spawn(&env, "worker", &w);
    wait_ready(&base_a).await;
    let load = Load::start(
        vec![collector.base.clone()],
        Duration::from_millis(2),
        two_metrics,
    );
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        drop(a); // SIGKILL
        let (next, base) = spawn(&env, "worker", &w);
        a = next;
        wait_ready(&base).await;
    }
    // Now the only worker: kill both, keep loading, start one later.
    drop(a);
    drop(_b);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let queued = env.queue_stats().await.depth();
    let (_c, _) = spawn(&env, "worker", &w);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.finish().await;
    assert!(queued > 0, "events waited while no worker ran");
    assert!(
        report.accepted.len() > 100,
        "the load ran: {}",
        report.accepted.len()
    );
    assert_all_landed(&env, &report.accepted).await;
    eprintln!(
        "drill workers: accepted {} events, rows {}, dead letters 0",
        report.accepted.len(),
        env.row_count().await
    );
}

/// kill -9 of one of two collectors: clients retry what got no answer on the other one;
/// the retries are stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_killed_under_load_loses_nothing_when_clients_retry() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let worker = env.start(Role::Worker, &[]).await;
    let (a, base_a) = spawn(&env, "collector", &[]);
    let (_b, base_b) = spawn(&env, "collector", &[]);
    wait_ready(&base_a).await;
    wait_ready(&base_b).await;
    let load = Load::start(vec![base_a, base_b], Duration::from_millis(2), two_metrics);
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(a); // SIGKILL mid-load
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.finish().await;
    assert!(report.refused > 0, "the killed collector refused something");
    assert_all_landed(&env, &report.accepted).await;
    eprintln!(
        "drill collector: accepted {}, refused attempts {}, rows {}",
        report.accepted.len(),
        report.refused,
        env.row_count().await
    );
    worker.stop().await;
}

/// nats-server stopped for 10 s under load and restarted with the same store: 503 while it
/// is away, recovery without restarting nsready, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_under_load_recovers_without_restarting_nsready() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let app = env.start(Role::Serve, &["--publish-timeout", "1"]).await;
    let load = Load::start(
        vec![app.base.clone()],
        Duration::from_millis(5),
        two_metrics,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let nats = env.nats.as_ref().expect("nats");
    tokio::task::block_in_place(|| nats.stop());
    tokio::time::sleep(Duration::from_secs(10)).await;
    tokio::task::block_in_place(|| nats.start_again());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.finish().await;
    assert!(report.refused > 0, "503s while NATS was away");
    assert_all_landed(&env, &report.accepted).await;
    eprintln!(
        "drill nats outage: accepted {}, refused attempts {}",
        report.accepted.len(),
        report.refused
    );
    app.stop().await;
}

/// A lock held on ingest_events for three times the ack wait: the batch waits, progress
/// acks keep its messages from being redelivered, nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_slower_than_the_ack_wait_causes_no_redelivery() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let app = env
        .start(
            Role::Serve,
            &["--worker-ack-wait", "4", "--db-timeout", "60"],
        )
        .await;
    let pg = env.pg.as_ref().expect("pg");
    let port = pg.port();
    let locker = std::thread::spawn(move || {
        std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "nsready_test"])
            .args(["-c", "BEGIN; LOCK TABLE ingest_events IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(12); COMMIT;"])
            .output()
            .expect("psql")
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..20 {
        assert_eq!(
            app.post_event(&two_metrics(i)).await.0,
            reqwest::StatusCode::OK
        );
    }
    let out = tokio::task::spawn_blocking(move || locker.join())
        .await
        .expect("join")
        .expect("locker");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted = (0..20).collect();
    assert_all_landed(&env, &accepted).await;
    let m = app.metrics().await;
    assert_eq!(metric(&m, "ingest_redeliveries_total"), Some(0.0), "{m}");
    app.stop().await;
}

/// Three worker processes × 4 workers on one consumer, all writing the same 50 keys:
/// sorted keys mean no deadlock; one row per key; nothing dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_workers_on_one_consumer_neither_deadlock_nor_duplicate() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let collector = env.start(Role::Collector, &[]).await;
    let w = ["--worker-pool-size", "4", "--worker-batch-size", "50"];
    let procs: Vec<_> = (0..3).map(|_| spawn(&env, "worker", &w)).collect();
    for (_, base) in &procs {
        wait_ready(base).await;
    }
    // Event i rewrites key i % 50 with value i: concurrent batches touch the same rows.
    let load = Load::start(
        vec![collector.base.clone()],
        Duration::from_millis(1),
        |i| {
            let mut e = event(i % 50, &[("voltage", i as f64), ("current", 1.0)]);
            e["event_id"] = serde_json::json!(format!("e{i}"));
            e
        },
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let report = load.finish().await;
    wait_until("the queue drains", DRAIN, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    assert!(report.accepted.len() > 200, "{}", report.accepted.len());
    assert_eq!(
        env.row_count().await,
        100,
        "50 keys × 2 metrics, one row each"
    );
    assert!(env.dead_letters().await.is_empty());
    let deadlocks = env.pg.as_ref().expect("pg").psql(
        "nsready_test",
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
    );
    assert_eq!(deadlocks, "0");
    eprintln!(
        "drill many workers: accepted {}, rows 100, deadlocks 0",
        report.accepted.len()
    );
}

/// A device deleted under load: its later events are dead-lettered with a device reason;
/// the other device's events all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_deleted_under_load_dead_letters_only_its_events() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let app = env
        .start(Role::Serve, &["--registry-refresh-interval", "0.5"])
        .await;
    let gone = demo_ids::device(1, 2);
    let load = Load::start(vec![app.base.clone()], Duration::from_millis(3), move |i| {
        if i % 2 == 0 {
            event(i, &[("voltage", 1.0), ("current", 1.0)])
        } else {
            event_for(gone, i, &[("voltage", 1.0)])
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.pg.as_ref().expect("pg").psql(
        "nsready_test",
        &format!("DELETE FROM devices WHERE id = '{gone}'"),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.finish().await;
    wait_until("the queue drains", DRAIN, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    let rows = env.rows();
    let kept: std::collections::BTreeSet<i64> = report
        .accepted
        .iter()
        .copied()
        .filter(|i| i % 2 == 0)
        .collect();
    let got = landed(&rows, demo_ids::DEVICE_01_1);
    assert!(kept.is_subset(&got), "every event of the kept device lands");
    assert!(
        landed(&rows, gone).is_empty(),
        "the deleted device's rows went with it (cascade)"
    );
    let dl = env.dead_letters().await;
    assert!(
        !dl.is_empty(),
        "events for the deleted device are dead-lettered"
    );
    for d in &dl {
        assert!(
            matches!(d.error_type.as_str(), "device_not_found" | "integrity"),
            "{d:?}"
        );
        let payload = String::from_utf8_lossy(&d.payload);
        assert!(
            payload.contains(&gone.to_string()),
            "only the deleted device: {payload}"
        );
    }
    eprintln!(
        "drill registry change: accepted {}, dead letters {}",
        report.accepted.len(),
        dl.len()
    );
    app.stop().await;
}

/// SIGTERM under load: the process exits 0 in time, acks what it holds (nothing is left
/// unacknowledged to be redelivered), and every accepted event lands once a worker runs.
async fn sigterm_under_load_loses_nothing_and_leaves_nothing_unacknowledged(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let (serve, base) = spawn(&env, "serve", &["--shutdown-timeout", "20"]);
    wait_ready(&base).await;
    let load = Load::start(vec![base.clone()], Duration::from_millis(2), two_metrics);
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&serve.0, libc::SIGTERM);
    let mut serve = serve;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = serve.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "no exit within SHUTDOWN_TIMEOUT"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let report = load.finish().await;
    assert!(status.success(), "clean stop exits 0: {status:?}");
    let stats = env.queue_stats().await;
    assert_eq!(
        stats.ack_pending, 0,
        "nothing held unacknowledged after a clean stop: {stats:?}"
    );
    let (_again, base) = spawn(&env, "serve", &[]);
    wait_ready(&base).await;
    assert_all_landed(&env, &report.accepted).await;
    let m = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert_eq!(metric(&m, "ingest_redeliveries_total"), Some(0.0), "{m}");
}
crate::both_deployments!(sigterm_under_load_loses_nothing_and_leaves_nothing_unacknowledged);

/// A parameter template deleted while events for it wait in the queue (no rows reference it
/// yet, so PostgreSQL's RESTRICT allows the delete): those events are dead-lettered with a
/// parameter reason; every other event lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_deleted_while_its_events_are_queued_dead_letters_only_them() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    // Collector only: events wait in the queue until a worker starts.
    let collector = env.start(Role::Collector, &[]).await;
    for i in 0..30 {
        let ev = if i % 3 == 0 {
            event(i, &[("power", 1.0)])
        } else {
            event(i, &[("voltage", 1.0)])
        };
        assert_eq!(collector.post_event(&ev).await.0, reqwest::StatusCode::OK);
    }
    env.pg.as_ref().expect("pg").psql(
        "nsready_test",
        &format!(
            "DELETE FROM parameter_templates WHERE key = '{}'",
            crate::support::key("power")
        ),
    );
    let worker = env.start(Role::Worker, &[]).await;
    wait_until("the queue drains", DRAIN, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    let dl = env.dead_letters().await;
    assert_eq!(dl.len(), 10, "the ten power events: {dl:?}");
    for d in &dl {
        assert!(
            matches!(d.error_type.as_str(), "parameter_not_found" | "integrity"),
            "{d:?}"
        );
        assert!(
            d.reason.contains("power") || d.reason.contains("parameter"),
            "{d:?}"
        );
    }
    assert_eq!(env.row_count().await, 20, "the twenty voltage events land");
    assert_eq!(env.count("SELECT count(*) FROM error_logs"), 10);
    worker.stop().await;
    collector.stop().await;
}
