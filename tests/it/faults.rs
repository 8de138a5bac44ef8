//! Faults the pipeline must survive without losing or doubling anything: NATS going away,
//! PostgreSQL going away under load (a crash between commit and ack: `failpoints.rs`). Each test ends by
//! counting accepted events against rows and dead letters.

use std::time::{Duration, Instant};

use nsready::app::{App, Role};
use nsready::shutdown::Shutdown;
use reqwest::StatusCode;

use crate::both_deployments;
use crate::support::app::{Kind, TestEnv, wait_until};
use crate::support::event;

/// NATS stopped: ingest answers 503 (at once, or bounded by PUBLISH_TIMEOUT) and recovers
/// by itself when NATS is back. A client that retries what got 503 ends with every event
/// stored exactly once (retries share the message id, so the duplicate window absorbs a copy
/// that was in flight when NATS went away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_gives_503_and_retried_events_land_once() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let app = env.start(Role::Serve, &["--publish-timeout", "1"]).await;
    let nats = env.nats.as_ref().expect("nats");
    for n in 0..5 {
        assert_eq!(
            app.post_event(&event(n, &[("voltage", 1.0)])).await.0,
            StatusCode::OK
        );
    }
    tokio::task::block_in_place(|| nats.stop());
    let mut refused = Vec::new();
    for n in 5..10 {
        let ev = event(n, &[("voltage", 1.0)]);
        let (status, headers, _) = app
            .post_full(
                "/v1/ingest",
                "application/json",
                ev.to_string().into_bytes(),
            )
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "NATS is down");
        assert!(headers.get("retry-after").is_some());
        refused.push(ev);
    }
    tokio::task::block_in_place(|| nats.start_again());
    // The client retries each refused event until it is accepted.
    for ev in &refused {
        wait_until("the retry is accepted", Duration::from_secs(30), || async {
            app.post_event(ev).await.0 == StatusCode::OK
        })
        .await;
    }
    wait_until("every event lands", Duration::from_secs(60), || async {
        env.row_count().await >= 10
    })
    .await;
    wait_until("queue drained", Duration::from_secs(30), || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    assert_eq!(env.row_count().await, 10, "accepted = rows");
    assert!(env.dead_letters().await.is_empty());
    app.stop().await;
}

/// PostgreSQL stopped for 20 s under steady load, then started: every accepted event lands,
/// nothing is dead-lettered (an outage is not the messages' fault).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_under_load_loses_nothing_and_dead_letters_nothing() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let app = env.start(Role::Serve, &["--worker-max-retries", "2"]).await;
    let pg = env.pg.as_ref().expect("pg");
    let mut accepted = 0u64;
    let start = Instant::now();
    let mut stopped = false;
    let mut restarted = false;
    let mut n = 0i64;
    while start.elapsed() < Duration::from_secs(32) {
        if !stopped && start.elapsed() > Duration::from_secs(4) {
            tokio::task::block_in_place(|| pg.stop());
            stopped = true;
        }
        if stopped && !restarted && start.elapsed() > Duration::from_secs(24) {
            let h = app.health().await;
            assert_eq!(h["db"], "disconnected", "{h}");
            assert!(
                h["queue_depth"].as_u64().unwrap_or(0) > 0,
                "events wait in the queue: {h}"
            );
            tokio::task::block_in_place(|| pg.start_again());
            restarted = true;
        }
        n += 1;
        let (status, body) = app.post_event(&event(n, &[("voltage", n as f64)])).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the collector never waits on the database: {body}"
        );
        accepted += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(restarted);
    wait_until(
        "every accepted event lands",
        Duration::from_secs(90),
        || async { env.row_count().await == accepted },
    )
    .await;
    wait_until("queue drained", Duration::from_secs(30), || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    assert!(
        env.dead_letters().await.is_empty(),
        "no dead letters for an outage"
    );
    assert_eq!(env.count("SELECT count(*) FROM error_logs"), 0);
    app.stop().await;
}

/// A dead letter for a device that did not exist yet: after importing the device,
/// `nsready dlq replay` puts it back on the ingest subject and it lands; the DLQ is empty.
async fn dlq_replay_after_importing_the_missing_device_lands_the_event(kind: Kind) {
    let env = TestEnv::new(kind);
    let mut doc = nsready::registry::demo();
    let late = doc.devices.remove(1);
    env.with_store(crate::support::app::Import(doc)).await;
    let app = env.start(Role::Serve, &["--worker-max-retries", "1"]).await;
    let ev = crate::support::event_for(late.id, 0, &[("voltage", 9.0)]);
    assert_eq!(app.post_event(&ev).await.0, StatusCode::OK);
    wait_until("dead-lettered", Duration::from_secs(30), || async {
        env.dead_letters().await.len() == 1
    })
    .await;
    // Embedded mode: one process owns DATA_DIR, so the operator stops serve first.
    app.stop().await;
    let list = env.command("dlq", &["list"]).output().expect("dlq list");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("device_not_found"), "{text}");
    env.with_store(crate::support::app::Import(
        nsready::registry::RegistryDoc {
            devices: vec![late],
            ..Default::default()
        },
    ))
    .await;
    let out = env
        .command("dlq", &["replay"])
        .output()
        .expect("dlq replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("replayed 1"));
    assert!(env.dead_letters().await.is_empty());
    let app = env.start(Role::Serve, &[]).await;
    wait_until(
        "the replayed event lands",
        Duration::from_secs(30),
        || async { env.row_count().await == 1 },
    )
    .await;
    assert!(env.dead_letters().await.is_empty());
    app.stop().await;
}
both_deployments!(dlq_replay_after_importing_the_missing_device_lands_the_event);

/// A service started while PostgreSQL is still down retries its migrations
/// (DB_CONNECT_RETRIES × DB_CONNECT_DELAY) and comes up once the database starts; with too
/// few retries it gives up with an error that names the database, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_before_postgres_waits_for_it_then_gives_up_after_its_retries() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let pg = env.pg.as_ref().expect("pg");
    tokio::task::block_in_place(|| pg.stop());

    // Two tries 200 ms apart cannot outlast a stopped database.
    let settings = env.settings(&["--db-connect-retries", "2", "--db-connect-delay", "200ms"]);
    let err = match App::build(&settings, Role::Serve, Shutdown::new()).await {
        Ok(_) => panic!("a stopped database cannot be migrated"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.to_lowercase().contains("database") || err.to_lowercase().contains("connect"),
        "{err}"
    );

    // Plenty of tries: the database comes back after ~2 s and the service starts.
    let shutdown = Shutdown::new();
    let starting = tokio::spawn({
        let settings = env.settings(&["--db-connect-retries", "60", "--db-connect-delay", "250ms"]);
        let shutdown = shutdown.clone();
        async move { App::build(&settings, Role::Serve, shutdown).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !starting.is_finished(),
        "still retrying while the database is down"
    );
    tokio::task::block_in_place(|| pg.start_again());
    let app = tokio::time::timeout(Duration::from_secs(60), starting)
        .await
        .expect("the service starts once the database does")
        .expect("join")
        .expect("App::build succeeds after the database started");
    let port = app.port();
    let running = tokio::spawn(app.run_until_stopped());
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/ingest"))
        .json(&event(1, &[("voltage", 1.0)]))
        .send()
        .await
        .expect("ingest answers");
    assert_eq!(resp.status(), StatusCode::OK);
    wait_until("the event lands", Duration::from_secs(30), || async {
        env.row_count().await == 1
    })
    .await;
    assert!(env.dead_letters().await.is_empty());
    shutdown.trigger();
    running.await.expect("join").expect("clean stop");
}
