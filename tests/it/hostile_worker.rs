//! Every failure ends (issue 8, worker side): store refusals outside class 22, statement
//! timeouts, hostile trace ids and reasons, payloads near `max_payload`, a recreated
//! stream, an unreadable registry row and the stream's age limit. Messages are published
//! straight to the queue where the collector would refuse them (another producer). Each
//! fault test ends by counting: accepted = rows + dead letters, the queue drained within
//! the retry budget, the good events of the same batch landed, the process alive.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use nsready::app::Role;
use nsready::queue::{EmbeddedQueue, Outgoing, Queue, QueueError};
use reqwest::StatusCode;
use serde_json::Value;

use crate::both_deployments;
use crate::support::app::{Kind, RunningApp, TestEnv, metric, wait_until};
use crate::support::{event, key};

const SETTLE: Duration = Duration::from_secs(60);
/// The base settings' WORKER_MAX_RETRIES.
const MAX_RETRIES: u64 = 3;

/// Runs SQL on the env's store (psql, or a direct SQLite connection).
fn store_sql(env: &TestEnv, pg_sql: &str, sqlite_sql: &str) {
    match env.kind {
        Kind::ScaleOut | Kind::ScaleOutTimescale => {
            env.pg.as_ref().expect("pg").psql("nsready_test", pg_sql);
        }
        Kind::Embedded => {
            let conn =
                rusqlite::Connection::open(env.dir.path().join("nsready.db")).expect("open sqlite");
            conn.execute_batch(sqlite_sql).expect("sqlite sql");
        }
    }
}

/// A JetStream context on the env's NATS.
async fn js(env: &TestEnv) -> jetstream::Context {
    let client = async_nats::connect(env.nats_url()).await.expect("nats");
    jetstream::new(client)
}

/// Publishes `payload` straight to the ingest subject with a trace id header of our choice
/// (another producer: no collector checks).
async fn publish_as_other_producer(env: &TestEnv, payload: Vec<u8>, trace_id: &str) {
    let msg_id = uuid::Uuid::new_v4().to_string();
    match env.kind {
        Kind::ScaleOut | Kind::ScaleOutTimescale => {
            let mut h = HeaderMap::new();
            h.insert("Nats-Msg-Id", msg_id.as_str());
            h.insert("Nsready-Trace-Id", trace_id);
            js(env)
                .await
                .publish_with_headers("ingress.events", h, payload.into())
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
        Kind::Embedded => {
            let s = env.settings(&[]);
            let q = EmbeddedQueue::open(
                &env.dir.path().join("queue.db"),
                nsready::app::embedded_queue_options(&s),
            )
            .expect("queue");
            q.publish(Outgoing {
                msg_id,
                trace_id: trace_id.to_string(),
                payload: payload.into(),
            })
            .await
            .expect("publish");
        }
    }
}

/// Posts `n` good one-metric events (seconds 0..n) and checks they are accepted.
async fn post_good(app: &RunningApp, n: i64) {
    let events: Vec<Value> = (0..n).map(|i| event(i, &[("voltage", i as f64)])).collect();
    let (status, body) = app.post_batch(&events).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], n);
}

/// Waits until the queue is empty and `rows + dead letters == accepted`; checks the
/// process still answers and every dead letter has its `error_logs` row.
async fn assert_settled(env: &TestEnv, app: &RunningApp, accepted: usize, rows: u64) {
    wait_until("the queue drains", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    let dl = env.dead_letters().await;
    for d in &dl {
        eprintln!(
            "dead letter {}: {} after {} deliveries: {:.200}",
            d.original_seq, d.error_type, d.delivered, d.reason
        );
    }
    assert_eq!(env.row_count().await, rows, "the good events landed");
    assert_eq!(
        accepted,
        rows as usize + dl.len(),
        "accepted = rows + dead letters: {dl:?}"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM error_logs"),
        dl.len() as i64,
        "one error_logs row per dead letter"
    );
    let h = app.health().await;
    assert_eq!(h["queue_depth"], 0, "{h}");
    assert_eq!(h["db"], "connected", "{h}");
}

/// A trigger refuses every `power` row: PostgreSQL with a custom SQLSTATE outside classes
/// 22/23 (XX001), SQLite with RAISE(ABORT). The batch is bisected, the good events land,
/// the power event uses its retries and is dead-lettered with the database's reason.
async fn a_refusal_outside_class_22_is_bisected_retried_then_dead_lettered(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    store_sql(
        &env,
        "CREATE FUNCTION refuse_power() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.parameter_key LIKE '%:power' THEN \
         RAISE EXCEPTION 'power readings refused by policy' USING ERRCODE = 'XX001'; \
         END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_power BEFORE INSERT ON ingest_events \
         FOR EACH ROW EXECUTE FUNCTION refuse_power();",
        "CREATE TRIGGER refuse_power BEFORE INSERT ON ingest_events \
         WHEN NEW.parameter_key LIKE '%:power' \
         BEGIN SELECT RAISE(ABORT, 'power readings refused by policy'); END;",
    );
    let app = env
        .start(
            Role::Serve,
            &[
                "--worker-batch-size",
                "100",
                "--worker-batch-timeout",
                "0.5",
            ],
        )
        .await;
    let mut events: Vec<Value> = (0..20)
        .map(|i| event(i, &[("voltage", i as f64)]))
        .collect();
    events.insert(10, event(100, &[("power", 1.0)]));
    let (status, body) = app.post_batch(&events).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_settled(&env, &app, 21, 20).await;
    let dl = env.dead_letters().await;
    assert_eq!(dl.len(), 1, "{dl:?}");
    let d = &dl[0];
    assert_eq!(
        d.delivered, MAX_RETRIES,
        "retried, not dead-lettered at once: {d:?}"
    );
    assert!(d.reason.contains("refused by policy"), "{d:?}");
    assert!(d.reason.contains("gave up after 3 deliveries"), "{d:?}");
    assert!(!d.reason.contains("INSERT"), "no SQL text: {d:?}");
    match kind {
        Kind::ScaleOut | Kind::ScaleOutTimescale => {
            assert_eq!(d.error_type, "store_rejected", "{d:?}");
            assert!(d.reason.contains("XX001"), "{d:?}");
        }
        // RAISE(ABORT) is a constraint failure in SQLite.
        Kind::Embedded => assert_eq!(d.error_type, "integrity", "{d:?}"),
    }
    let m = app.metrics().await;
    assert_eq!(metric(&m, "ingest_events_total{status=\"dlq\"}"), Some(1.0));
    assert_eq!(
        metric(&m, "ingest_events_total{status=\"success\"}"),
        Some(20.0)
    );
    app.stop().await;
}
both_deployments!(a_refusal_outside_class_22_is_bisected_retried_then_dead_lettered);

/// One message whose row makes the statement outlast DB_TIMEOUT (a trigger sleeps): the
/// timeout is not taken for an outage (the ping answers), the batch is bisected, the others
/// land and that one is dead-lettered after its retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_on_one_message_is_bisected_and_dead_lettered() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    store_sql(
        &env,
        "CREATE FUNCTION slow_power() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.parameter_key LIKE '%:power' THEN PERFORM pg_sleep(30); END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER slow_power BEFORE INSERT ON ingest_events \
         FOR EACH ROW EXECUTE FUNCTION slow_power();",
        "",
    );
    let app = env
        .start(
            Role::Serve,
            &[
                "--db-timeout",
                "1",
                "--worker-batch-size",
                "100",
                "--worker-batch-timeout",
                "0.5",
            ],
        )
        .await;
    let mut events: Vec<Value> = (0..12)
        .map(|i| event(i, &[("voltage", i as f64)]))
        .collect();
    events.insert(6, event(100, &[("power", 1.0)]));
    let (status, body) = app.post_batch(&events).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_settled(&env, &app, 13, 12).await;
    let dl = env.dead_letters().await;
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0].error_type, "store_rejected", "{dl:?}");
    assert_eq!(dl[0].delivered, MAX_RETRIES, "{dl:?}");
    assert!(dl[0].reason.contains("DB_TIMEOUT"), "{dl:?}");
    app.stop().await;
}

/// A trace id header with NUL, control characters and 10 KiB, and a reason quoting a
/// parameter key with NUL: the `error_logs` row and the DLQ headers are made storable and
/// the dead letter is written; the good events of the same time land.
async fn hostile_trace_ids_and_reasons_are_dead_lettered(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    let mut bad = event(500, &[("voltage", 1.0)]);
    bad["metrics"][0]["parameter_key"] =
        Value::String(format!("{}\u{0}\u{1b}[31m{}", key("volt"), "k".repeat(150)));
    let envelope = serde_json::json!({"trace_id": "x\u{0}y", "event": bad});
    let trace = format!("t\u{0}\u{7}\tx{}", "y".repeat(10_000));
    publish_as_other_producer(&env, envelope.to_string().into_bytes(), &trace).await;
    post_good(&app, 10).await;
    assert_settled(&env, &app, 11, 10).await;
    let dl = env.dead_letters().await;
    let d = &dl[0];
    assert!(d.reason.len() <= 1024, "reason bounded: {}", d.reason.len());
    assert!(!d.reason.contains('\u{0}'), "{:?}", d.reason);
    if kind == Kind::ScaleOut {
        let t = d.trace_id.as_deref().unwrap_or_default();
        assert!(t.len() <= 256, "trace id header bounded: {}", t.len());
        assert!(!t.chars().any(char::is_control), "{t:?}");
    }
    app.stop().await;
}
both_deployments!(hostile_trace_ids_and_reasons_are_dead_lettered);

/// Ingest leaves room for the dead letter's headers (a payload that would not fit is
/// refused as too large); a message another producer published near `max_payload` is
/// dead-lettered with its payload cut and a header saying so, instead of looping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_near_max_payload_are_dead_lettered_whole_or_cut_with_a_header() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    let nats = async_nats::connect(env.nats_url()).await.expect("nats");
    let limit = nats.server_info().max_payload;
    let ctx = jetstream::new(nats);
    // The collector's queue refuses what would leave no room for DLQ headers...
    let s = env.settings(&[]);
    let client = nsready::queue::jetstream::connect(&env.nats_url(), &s.nats)
        .await
        .expect("connect");
    let mut opts = nsready::queue::jetstream::JetStreamOptions::from_settings(&s);
    opts.manage_config = false;
    let q = nsready::queue::JetStreamQueue::provision(client, opts)
        .await
        .expect("provision");
    let out = |n: usize| Outgoing {
        msg_id: uuid::Uuid::new_v4().to_string(),
        trace_id: uuid::Uuid::new_v4().to_string(),
        payload: vec![b'x'; n].into(),
    };
    let refused = q.publish(out(limit - 1000)).await;
    assert!(
        matches!(refused, Err(QueueError::TooLarge { .. })),
        "{refused:?}"
    );
    // ...and accepts what leaves it: that one is dead-lettered whole.
    q.publish(out(limit - 3000))
        .await
        .expect("fits with headroom");
    // Another producer fills max_payload: its dead letter is cut to fit.
    let big = limit - 200;
    publish_as_other_producer(&env, vec![b'y'; big], "trace-big").await;
    post_good(&app, 5).await;
    assert_settled(&env, &app, 7, 5).await;
    let dl = env.dead_letters().await;
    assert!(dl.iter().all(|d| d.error_type == "json_decode"), "{dl:?}");
    let whole = dl.iter().find(|d| d.payload.first() == Some(&b'x'));
    assert_eq!(whole.map(|d| d.payload.len()), Some(limit - 3000));
    let cut = dl
        .iter()
        .find(|d| d.payload.first() == Some(&b'y'))
        .expect("the oversize letter");
    assert!(cut.payload.len() < big && cut.payload.len() > big - 8192);
    let raw = ctx
        .get_stream("INGRESS_DLQ")
        .await
        .expect("dlq")
        .get_raw_message(cut.seq)
        .await
        .expect("raw letter");
    assert_eq!(
        raw.headers
            .get(nsready::queue::jetstream::TRUNCATED)
            .map(|v| v.as_str().to_string()),
        Some(big.to_string())
    );
    app.stop().await;
}

/// A recreated INGRESS stream starts its sequences at 1 again: the DLQ's message id
/// includes the stream's creation time, so the second dead letter of "sequence 1" is not
/// swallowed by the DLQ's duplicate window (which would ack the original: lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_ids_stay_unique_across_a_recreated_stream() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    publish_as_other_producer(&env, b"first garbage".to_vec(), "t1").await;
    wait_until("the first letter", SETTLE, || async {
        env.dead_letters().await.len() == 1
    })
    .await;
    app.stop().await;
    js(&env)
        .await
        .delete_stream("INGRESS")
        .await
        .expect("delete INGRESS");
    let app = env.start(Role::Serve, &[]).await;
    publish_as_other_producer(&env, b"second garbage".to_vec(), "t2").await;
    assert_settled(&env, &app, 2, 0).await;
    let dl = env.dead_letters().await;
    let seqs: Vec<u64> = dl.iter().map(|d| d.original_seq).collect();
    assert_eq!(seqs, [1, 1], "both letters of sequence 1: {dl:?}");
    app.stop().await;
}

/// One device row the loader cannot read (PostgreSQL: a NULL status after a schema
/// change; SQLite: an id that is not a UUID) is skipped: the other devices' events land.
async fn an_unreadable_registry_row_is_skipped(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let site = nsready::registry::demo_ids::SITE_01;
    store_sql(
        &env,
        &format!(
            "ALTER TABLE devices ALTER COLUMN status DROP NOT NULL; \
             INSERT INTO devices (id, site_id, name, device_type, status) \
             VALUES (gen_random_uuid(), '{site}', 'broken', 'sensor', NULL);"
        ),
        &format!(
            "INSERT INTO devices (id, site_id, name, device_type) \
             VALUES ('not-a-uuid', '{site}', 'broken', 'sensor');"
        ),
    );
    let app = env.start(Role::Serve, &[]).await;
    post_good(&app, 5).await;
    assert_settled(&env, &app, 5, 5).await;
    assert_eq!(app.health().await["service"], "ok");
    app.stop().await;
}
both_deployments!(an_unreadable_registry_row_is_skipped);

/// The stream keeps messages until they are processed: provisioned without an age limit,
/// and an existing stream with the old 24 h limit is repaired by the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_has_no_age_limit_and_an_old_24h_stream_is_repaired() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let ctx = js(&env).await;
    ctx.create_stream(jetstream::stream::Config {
        name: "INGRESS".into(),
        subjects: vec!["ingress.events".into()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::New,
        max_age: Duration::from_secs(24 * 3600),
        max_messages: 1_000_000,
        max_bytes: 1 << 30,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("old stream");
    let app = env.start(Role::Serve, &[]).await;
    let mut stream = ctx.get_stream("INGRESS").await.expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(
        info.config.max_age,
        Duration::ZERO,
        "repaired to no age limit"
    );
    post_good(&app, 3).await;
    assert_settled(&env, &app, 3, 3).await;
    app.stop().await;
    // A fresh deployment gets no age limit either.
    let fresh = TestEnv::new(Kind::ScaleOut);
    fresh.import_demo().await;
    let app = fresh.start(Role::Serve, &[]).await;
    let mut stream = js(&fresh)
        .await
        .get_stream("INGRESS")
        .await
        .expect("stream");
    assert_eq!(
        stream.info().await.expect("info").config.max_age,
        Duration::ZERO
    );
    app.stop().await;
}

/// The store refuses one dead letter's `error_logs` row (a trigger on its text): the rows
/// are then written one by one, the refused one as a minimal entry, and neither message
/// is held back.
async fn a_refused_error_log_row_does_not_block_the_dead_letters(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    store_sql(
        &env,
        "CREATE FUNCTION refuse_log() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF NEW.message LIKE '%refuse-me%' THEN RAISE EXCEPTION 'no' USING ERRCODE = 'P0001'; \
         END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_log BEFORE INSERT ON error_logs \
         FOR EACH ROW EXECUTE FUNCTION refuse_log();",
        "CREATE TRIGGER refuse_log BEFORE INSERT ON error_logs \
         WHEN NEW.message LIKE '%refuse-me%' BEGIN SELECT RAISE(ABORT, 'no'); END;",
    );
    let app = env
        .start(Role::Serve, &["--worker-batch-timeout", "0.5"])
        .await;
    for name in ["refuse-me", "fine-key"] {
        let mut ev = event(900, &[("voltage", 1.0)]);
        ev["metrics"][0]["parameter_key"] = Value::String(key(name));
        let (status, body) = app.post_event(&ev).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    post_good(&app, 4).await;
    assert_settled(&env, &app, 6, 4).await;
    assert_eq!(
        env.count(
            "SELECT count(*) FROM error_logs WHERE message LIKE '%its reason could not be stored%'"
        ),
        1,
        "the refused row was replaced by a minimal entry"
    );
    app.stop().await;
}
both_deployments!(a_refused_error_log_row_does_not_block_the_dead_letters);

/// WORKER_BATCH_MAX_BYTES below one message's size: every batch still holds one message
/// (JetStream's pull budget never drops below max_payload), so nothing is stranded.
async fn a_batch_byte_cap_below_one_message_strands_nothing(kind: Kind) {
    let env = TestEnv::new(kind);
    env.import_demo().await;
    let app = env
        .start(Role::Serve, &["--worker-batch-max-bytes", "1"])
        .await;
    post_good(&app, 20).await;
    assert_settled(&env, &app, 20, 20).await;
    let m = app.metrics().await;
    assert_eq!(
        metric(&m, "ingest_events_total{status=\"success\"}"),
        Some(20.0)
    );
    if kind == Kind::Embedded {
        assert_eq!(
            metric(&m, "ingest_batch_size_count"),
            Some(20.0),
            "one message per batch: {m}"
        );
    }
    app.stop().await;
}
both_deployments!(a_batch_byte_cap_below_one_message_strands_nothing);

/// The DLQ itself unreachable (its stream deleted): infrastructure, so the message goes
/// back without using its retries, however often; once the DLQ exists again the dead
/// letter is written and the original removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_dlq_is_infrastructure_and_the_letter_lands_later() {
    let env = TestEnv::new(Kind::ScaleOut);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    let ctx = js(&env).await;
    ctx.delete_stream("INGRESS_DLQ").await.expect("delete DLQ");
    publish_as_other_producer(&env, b"garbage while the DLQ is away".to_vec(), "t").await;
    wait_until("redelivered past the retry budget", SETTLE, || async {
        metric(&app.metrics().await, "ingest_redeliveries_total").unwrap_or(0.0)
            > MAX_RETRIES as f64
    })
    .await;
    // Health's queue stats need the DLQ stream; read the consumer directly.
    let consumer = ctx
        .get_stream("INGRESS")
        .await
        .expect("stream")
        .consumer_info("ingest_workers")
        .await
        .expect("consumer")
        .clone();
    assert_eq!(
        consumer.num_pending + consumer.num_ack_pending as u64,
        1,
        "kept, not lost"
    );
    ctx.create_stream(jetstream::stream::Config {
        name: "INGRESS_DLQ".into(),
        subjects: vec!["ingress.events.dlq".into()],
        storage: jetstream::stream::StorageType::File,
        discard: jetstream::stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(24 * 3600),
        ..Default::default()
    })
    .await
    .expect("DLQ back");
    wait_until("the queue drains", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    let dl = env.dead_letters().await;
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0].error_type, "json_decode");
    assert!(dl[0].delivered > MAX_RETRIES, "{:?}", dl[0]);
    // One error_logs row per attempt that reached the DLQ step (written before it).
    assert!(env.count("SELECT count(*) FROM error_logs") >= 1);
    app.stop().await;
}
