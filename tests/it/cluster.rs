//! Drill 5 of the fault drills: a three-node NATS cluster on loopback (stream replicas 3).
//! The leader of the `INGRESS` stream is killed (SIGKILL) under steady load; ingestion goes
//! on through the two other nodes, and nothing accepted is lost or doubled.
//!
//! The kill is arranged as the worst case: the consumer's leadership is moved onto the
//! stream leader first (so open pulls and acks in flight die too, and come back as
//! redeliveries), and the serving app's only configured server is that node (it fails over
//! to the members the cluster announced), while a second collector uses the comma-separated
//! list of all three.
//!
//! The test client records every 200 by event key (each event has its own timestamp, so its
//! own row); a 503 or a lost answer is retried with the same body (same message id, so the
//! duplicate window absorbs a copy that was stored before its ack got lost) until it is
//! accepted. It ends by comparing the accepted keys with the rows, and by checking the DLQ.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nsready::app::Role;
use reqwest::StatusCode;
use tokio::task::block_in_place;

use crate::support::app::{TestEnv, metric, wait_until};
use crate::support::event;

/// The durable consumer the workers share (the default CONSUMER_NAME).
const CONSUMER: &str = "ingest_workers";
/// Concurrent test clients.
const LOADERS: i64 = 4;
/// Key space of one loader: loader `l` sends keys `l * KEYS_PER_LOADER + i`.
const KEYS_PER_LOADER: i64 = 1_000_000;
/// Load before the kill, with the kill, and after the restart.
const WARM_UP: Duration = Duration::from_secs(3);
const AFTER_KILL: Duration = Duration::from_secs(10);
const AFTER_RESTART: Duration = Duration::from_secs(2);
/// Longest a client retries one event before the test fails.
const EVENT_DEADLINE: Duration = Duration::from_secs(45);

/// What one loader saw.
#[derive(Default)]
struct Tally {
    /// Keys answered 200, each once, with the time of the 200.
    accepted: Vec<(i64, Instant)>,
    /// 503 answers (each retried).
    unavailable: Vec<Instant>,
    /// Requests that got no answer (each retried).
    lost: u64,
}

/// Posts events with fresh keys until `stop`, retrying each until it is accepted.
async fn load(loader: i64, url: String, stop: Arc<AtomicBool>) -> Tally {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client");
    let mut tally = Tally::default();
    let mut i = 0;
    // `stop` is checked between events only: every event tried is accepted in the end, so
    // no event stored behind a lost answer is missing from the tally.
    while !stop.load(Ordering::Relaxed) {
        let key = loader * KEYS_PER_LOADER + i;
        i += 1;
        let body = event(key, &[("voltage", key as f64)]).to_string();
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < EVENT_DEADLINE,
                "event {key} not accepted within {EVENT_DEADLINE:?}"
            );
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            match r.map(|r| r.status()) {
                Ok(StatusCode::OK) => {
                    tally.accepted.push((key, Instant::now()));
                    break;
                }
                Ok(StatusCode::SERVICE_UNAVAILABLE) => tally.unavailable.push(Instant::now()),
                Ok(other) => panic!("event {key}: unexpected status {other}"),
                Err(e) => {
                    eprintln!("event {key}: no answer ({e}); retrying");
                    tally.lost += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tally
}

/// Steps the consumer's leadership down until it sits on `node` (each step-down elects
/// another replica), so that killing `node` takes both leaders at once: then the workers'
/// open pull and the acks in flight die with it too. Best effort; true when it worked.
async fn colocate_consumer_leader(env: &TestEnv, node: usize) -> bool {
    let cluster = env.cluster.as_ref().expect("cluster");
    let settings = env.settings(&[]);
    let client = nsready::queue::jetstream::connect(&env.nats_url(), &settings.nats)
        .await
        .expect("connect to the cluster");
    let stepdown = format!("$JS.API.CONSUMER.LEADER.STEPDOWN.INGRESS.{CONSUMER}");
    for _ in 0..8 {
        let Some(now) = block_in_place(|| cluster.consumer_leader("INGRESS", CONSUMER)) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if now == node {
            return true;
        }
        if let Err(e) = client.request(stepdown.clone(), "".into()).await {
            eprintln!("consumer step-down: {e}");
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            wait_until("a new consumer leader", Duration::from_secs(10), || {
                let l = block_in_place(|| cluster.consumer_leader("INGRESS", CONSUMER));
                std::future::ready(l.is_some_and(|l| l != now))
            }),
        )
        .await;
    }
    false
}

/// Seconds since the base time of `support::event`, per row: the key of each row.
fn row_keys(env: &TestEnv) -> Vec<i64> {
    let out = env.pg.as_ref().expect("pg").psql(
        "nsready_test",
        "SELECT (extract(epoch FROM time) \
         - extract(epoch FROM timestamptz '2025-11-14T12:00:00Z'))::bigint \
         FROM ingest_events ORDER BY 1",
    );
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse().expect("integer key"))
        .collect()
}

/// Kill -9 of the `INGRESS` stream leader under load: the two other nodes elect a new
/// leader, the collector answers 503 for a moment at most, and every accepted event lands
/// exactly once, with no dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leader_killed_under_load_loses_nothing() {
    let env = TestEnv::new_cluster();
    let cluster = env.cluster.as_ref().expect("cluster");
    env.import_demo().await;
    let stream = "INGRESS";
    // Create the streams (replicas 3) and the consumer, and find the stream's leader.
    env.queue_stats().await;
    let mut leader = None;
    wait_until("the stream has a leader", Duration::from_secs(20), || {
        leader = block_in_place(|| cluster.stream_leader(stream));
        std::future::ready(leader.is_some())
    })
    .await;
    let victim = leader.expect("stream leader");
    let colocated = colocate_consumer_leader(&env, victim).await;
    // The worst case for `app` (collector and workers): its only connection is to the node
    // that dies, so it loses its connection and the leader at once, and fails over to the
    // members the cluster announced. `collector` has the whole list (NATS_URL with commas)
    // and is connected to any node.
    let only_victim = cluster.node(victim).url();
    let app = env
        .start(Role::Serve, &["--nats-url", only_victim.as_str()])
        .await;
    let collector = env.start(Role::Collector, &[]).await;

    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..LOADERS)
        .map(|l| {
            let base = if l % 2 == 0 {
                &app.base
            } else {
                &collector.base
            };
            tokio::spawn(load(l, format!("{base}/v1/ingest"), Arc::clone(&stop)))
        })
        .collect();
    tokio::time::sleep(WARM_UP).await;

    assert_eq!(
        block_in_place(|| cluster.stream_leader(stream)),
        Some(victim),
        "the stream leader has not moved"
    );
    let consumer_leader = block_in_place(|| cluster.consumer_leader(stream, CONSUMER));
    let killed_at = Instant::now();
    block_in_place(|| cluster.kill(victim));
    eprintln!(
        "killed the {stream} leader, node {victim} ({}); consumer leader: node {consumer_leader:?} \
         (co-located by step-downs: {colocated})",
        cluster.node(victim).name()
    );
    let mut successor = None;
    wait_until("a new stream leader", Duration::from_secs(30), || {
        successor = block_in_place(|| cluster.stream_leader(stream));
        std::future::ready(successor.is_some_and(|s| s != victim))
    })
    .await;
    let elected_after = killed_at.elapsed();
    tokio::time::sleep(AFTER_KILL.saturating_sub(killed_at.elapsed())).await;

    // The killed node comes back (same store), rejoins and catches up under load.
    let restart = Instant::now();
    block_in_place(|| cluster.start_again(victim));
    let rejoined_after = restart.elapsed();
    tokio::time::sleep(AFTER_RESTART).await;
    stop.store(true, Ordering::Relaxed);
    let load_ended = Instant::now();
    let mut tallies = Vec::new();
    for l in loaders {
        tallies.push(l.await.expect("loader task"));
    }

    // The queue drains: every accepted event committed and acknowledged.
    wait_until("the queue is drained", Duration::from_secs(45), || async {
        let h = app.health().await;
        h["service"] == "ok" && h["queue_depth"] == 0
    })
    .await;

    let mut accepted: Vec<i64> = tallies
        .iter()
        .flat_map(|t| t.accepted.iter().map(|&(k, _)| k))
        .collect();
    accepted.sort_unstable();
    let distinct: BTreeSet<i64> = accepted.iter().copied().collect();
    assert_eq!(distinct.len(), accepted.len(), "each key accepted once");
    let mut ok_times: Vec<Instant> = tallies
        .iter()
        .flat_map(|t| t.accepted.iter().map(|&(_, at)| at))
        .collect();
    ok_times.sort_unstable();
    let after_kill = ok_times.iter().filter(|&&t| t > killed_at).count();
    let longest_gap = ok_times
        .windows(2)
        .filter(|w| w[1] > killed_at)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let unavailable: Vec<Instant> = tallies
        .iter()
        .flat_map(|t| t.unavailable.iter().copied())
        .collect();
    let unavailable_after_kill = unavailable.iter().filter(|&&t| t > killed_at).count();
    let last_unavailable = unavailable
        .iter()
        .max()
        .map(|&t| t.saturating_duration_since(killed_at));
    let lost: u64 = tallies.iter().map(|t| t.lost).sum();

    let rows = row_keys(&env);
    let dead = env.dead_letters().await;
    let m = app.metrics().await;
    eprintln!(
        "cluster drill: accepted {} ({after_kill} after the kill), rows {}, dead letters {}, \
         503s {} ({unavailable_after_kill} after the kill, last {last_unavailable:?} after it), \
         lost answers {lost}, new leader after {elected_after:?}, longest gap between 200s \
         {longest_gap:?}, rejoin {rejoined_after:?}, redeliveries {:?}, drained {:?} after the load",
        accepted.len(),
        rows.len(),
        dead.len(),
        unavailable.len(),
        metric(&m, "ingest_redeliveries_total"),
        load_ended.elapsed(),
    );
    assert!(
        after_kill > 100,
        "ingestion continued through the other two nodes: {after_kill} accepted after the kill"
    );
    assert!(dead.is_empty(), "no dead letters: {dead:?}");
    assert_eq!(env.count("SELECT count(*) FROM error_logs"), 0);
    assert_eq!(rows.len(), accepted.len(), "rows == accepted events");
    let missing: Vec<_> = distinct
        .difference(&rows.iter().copied().collect())
        .copied()
        .collect();
    assert!(missing.is_empty(), "accepted but not stored: {missing:?}");
    assert!(rows == accepted, "every accepted event is a row, by key");
    collector.stop().await;
    app.stop().await;
}
