//! TimescaleDB itself (the extension built by `scripts/install-timescaledb`): a plain table
//! with data becoming a hypertable when the extension appears later, settings that change
//! the policies on the next `migrate`, late data into compressed chunks (new key,
//! redelivery, update), the per-minute rollup, retention refused at the door, and health /
//! status naming TimescaleDB and its policies.
//!
//! Every test fails (never skips) when the extension is not installed.

use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nsready::app::{App, Role};
use nsready::config::{PgConnect, TimescalePolicy};
use nsready::registry::{self, demo_ids};
use nsready::shutdown::Shutdown;
use nsready::store::{PostgresStore, Row, Store};
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::support::app::{Kind, TestEnv, wait_until};
use crate::support::servers::Postgres;
use crate::support::{event, key};

const TIMEOUT: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(30);
const DAY: u64 = 86_400;
/// 2025-11-14T12:00:00Z, the base of `support::event`.
const BASE: i64 = 1_763_121_600;

/// A store on `db` of `pg` with `policy` (not migrated).
fn store_on(pg: &Postgres, db: &str, policy: TimescalePolicy) -> PostgresStore {
    let pg_connect = PgConnect::from_url(&pg.url(db)).expect("valid URL");
    PostgresStore::connect(&pg_connect, 2, TIMEOUT)
        .expect("pool builds")
        .with_timescale(policy)
}

/// A migrated store with the demo registry on a fresh database `db`.
async fn demo_store(pg: &Postgres, db: &str) -> PostgresStore {
    pg.create_database(db);
    let store = store_on(pg, db, TimescalePolicy::default());
    store.migrate().await.expect("migrate");
    store
        .import_registry(&registry::demo())
        .await
        .expect("demo registry");
    store
}

fn row(device: Uuid, name: &str, secs: i64, value: f64) -> Row {
    let time = DateTime::<Utc>::from_timestamp(BASE + secs, 0).expect("timestamp");
    Row {
        time,
        device_id: device,
        parameter_key: key(name),
        value: Some(value),
        quality: 192,
        source: "GPRS".into(),
        event_id: format!("{device}:{}:{name}", time.to_rfc3339()),
        attributes: json!({}),
    }
}

/// Unschedules the policy jobs (compression, retention, rollup refresh), so a test that
/// refreshes or compresses by hand does not race them.
fn pause_jobs(pg: &Postgres, db: &str) {
    pg.psql(
        db,
        "SELECT count(*) FROM timescaledb_information.jobs j, \
         LATERAL alter_job(j.job_id, scheduled => false) WHERE j.job_id >= 1000",
    );
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort_by(|a, b| a.key().cmp(&b.key()));
    rows
}

fn is_hypertable(pg: &Postgres, db: &str) -> bool {
    let installed = "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'";
    pg.psql(db, installed) == "1"
        && pg.psql(
            db,
            "SELECT count(*) FROM pg_extension e, timescaledb_information.hypertables h \
         WHERE e.extname = 'timescaledb' AND h.hypertable_name = 'ingest_events'",
        ) == "1"
}

/// A plain `ingest_events` with rows in it (the extension not preloaded yet) becomes a
/// hypertable with every row kept once TimescaleDB is preloaded and `migrate` runs again;
/// a second `migrate` changes nothing, and the rollup covers the rows from before.
#[tokio::test]
async fn a_plain_table_with_data_becomes_a_hypertable_when_the_extension_appears() {
    crate::support::servers::assert_timescale_installed();
    let pg = Postgres::start();
    let store = demo_store(&pg, "t").await;
    let rows: Vec<Row> = (0..30)
        .map(|i| row(demo_ids::DEVICE_01_1, "voltage", i * 3 * 3600, i as f64))
        .collect();
    store
        .upsert(&rows)
        .await
        .expect("rows into the plain table");
    assert_eq!(
        pg.psql(
            "t",
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
        ),
        "0",
        "not preloaded: migrate left the table plain"
    );
    drop(store);

    pg.preload_timescale();
    let store = store_on(&pg, "t", TimescalePolicy::default());
    store.migrate().await.expect("migrate converts");
    assert!(is_hypertable(&pg, "t"));
    assert_eq!(store.count_rows().await.expect("count"), 30, "no row lost");
    assert_eq!(
        pg.psql("t", "SELECT count(*) FROM ONLY ingest_events"),
        "0",
        "the rows moved into chunks"
    );
    let chunks: i64 = pg
        .psql("t", "SELECT count(*) FROM show_chunks('ingest_events')")
        .parse()
        .expect("count");
    assert!(chunks >= 4, "90 hours in 1-day chunks: {chunks}");
    store.migrate().await.expect("second migrate is a no-op");
    assert_eq!(
        pg.psql(
            "t",
            "SELECT count(*) || ' ' || sum(value_count) FROM v_scada_history_1m"
        ),
        "30 30",
        "the rollup sees the rows from before the extension"
    );
    let latest = store
        .latest(Some(demo_ids::DEVICE_01_1))
        .await
        .expect("latest");
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].value, Some(29.0));
}

/// The three settings decide the hypertable's chunk interval and its two policy jobs, and a
/// changed setting takes effect at the next `migrate` (one job per policy, never two).
#[tokio::test]
async fn changing_a_setting_and_migrating_again_updates_the_policies() {
    let pg = Postgres::start_timescale();
    pg.create_database("t");
    let defaults = store_on(&pg, "t", TimescalePolicy::default());
    defaults.migrate().await.expect("migrate");
    let ts = defaults.info().await.expect("info");
    assert_eq!(ts.backend, "timescaledb");
    let t = ts.timescale.expect("timescale info");
    assert!(t.hypertable);
    assert_eq!(t.chunk_interval.as_deref(), Some("1 day"));
    assert_eq!(t.compress_after.as_deref(), Some("7 days"));
    assert_eq!(t.retention, None, "retention is off unless asked for");
    assert_eq!(t.rollup.as_deref(), Some("scada_rollup_1m"));
    assert_eq!(
        pg.psql(
            "t",
            "SELECT segmentby || ' / ' || orderby FROM \
             timescaledb_information.hypertable_compression_settings \
             WHERE hypertable = 'ingest_events'::regclass"
        ),
        "device_id / \"time\" DESC"
    );

    let changed = store_on(
        &pg,
        "t",
        TimescalePolicy {
            chunk_interval: Some(Duration::from_secs(6 * 3600)),
            compress_after: Some(Duration::from_secs(3 * DAY)),
            retention: Some(Duration::from_secs(30 * DAY)),
        },
    );
    changed.migrate().await.expect("migrate with new settings");
    changed.migrate().await.expect("and again");
    let t = changed.info().await.expect("info").timescale.expect("ts");
    assert_eq!(t.chunk_interval.as_deref(), Some("06:00:00"));
    assert_eq!(t.compress_after.as_deref(), Some("3 days"));
    assert_eq!(t.retention.as_deref(), Some("30 days"));
    let jobs = "SELECT string_agg(proc_name, ',' ORDER BY proc_name) \
                FROM timescaledb_information.jobs WHERE hypertable_name = 'ingest_events'";
    assert_eq!(pg.psql("t", jobs), "policy_compression,policy_retention");

    let off = store_on(
        &pg,
        "t",
        TimescalePolicy {
            chunk_interval: Some(Duration::from_secs(6 * 3600)),
            compress_after: None,
            retention: None,
        },
    );
    off.migrate().await.expect("migrate with both policies off");
    let t = off.info().await.expect("info").timescale.expect("ts");
    assert_eq!((t.compress_after, t.retention), (None, None));
    assert_eq!(pg.psql("t", jobs), "");

    // TIMESCALE_CHUNK_INTERVAL=off on a fresh database: the table stays plain.
    pg.create_database("plain");
    let plain = store_on(
        &pg,
        "plain",
        TimescalePolicy {
            chunk_interval: None,
            ..TimescalePolicy::default()
        },
    );
    plain.migrate().await.expect("migrate");
    assert_eq!(plain.info().await.expect("info").backend, "postgresql");
}

/// Compresses every chunk of `ingest_events` in `db` and returns how many there are. The
/// store's compression policy job may compress a chunk at the same moment, and then
/// `compress_chunk` fails with "already compressed" even with `if_not_compressed` (it checked
/// before the job committed): that chunk is compressed, which is all this asks.
fn compress_all(pg: &Postgres, db: &str) -> i64 {
    pg.psql(
        db,
        "DO $$ DECLARE c regclass; BEGIN \
           FOR c IN SELECT show_chunks('ingest_events') LOOP \
             BEGIN PERFORM compress_chunk(c, if_not_compressed => true); \
             EXCEPTION WHEN OTHERS THEN \
               IF SQLERRM NOT LIKE '%already compressed%' THEN RAISE; END IF; \
             END; \
           END LOOP; END $$; \
         SELECT count(*) FROM show_chunks('ingest_events')",
    )
    .parse()
    .expect("chunk count")
}

/// Rows in compressed chunks take late data: a reading for a new key in the compressed time
/// range, a redelivery of a stored row, and an update of a stored key, each in one batch
/// that succeeds the first time (no retry loop), with the last write winning; the policy
/// job or `compress_chunk` compresses them again.
#[tokio::test]
async fn late_data_into_compressed_chunks_lands_redeliveries_and_updates_included() {
    let pg = Postgres::start_timescale();
    let store = demo_store(&pg, "t").await;
    let dev = demo_ids::DEVICE_01_1;
    let first: Vec<Row> = (0..100)
        .flat_map(|i| {
            [
                row(dev, "voltage", i * 600, 200.0 + i as f64),
                row(dev, "current", i * 600, 1.0),
            ]
        })
        .collect();
    store
        .upsert(&sorted(first.clone()))
        .await
        .expect("first write");
    let compressed = compress_all(&pg, "t");
    assert!(compressed >= 1, "{compressed}");
    let t = store.info().await.expect("info").timescale.expect("ts");
    assert_eq!(t.compressed_chunks, t.chunks, "{t:?}");

    // New key inside the compressed range, a redelivery, an update: one batch each, then
    // all three together.
    let new_key = row(dev, "power", 1200, 5.0);
    let redelivery = first[10].clone();
    let mut update = row(dev, "voltage", 0, 999.0);
    update.source = "SMS".into();
    for batch in [
        vec![new_key.clone()],
        vec![redelivery.clone()],
        vec![update.clone()],
        sorted(vec![new_key, redelivery, update]),
    ] {
        let n = batch.len() as u64;
        assert_eq!(store.upsert(&batch).await.expect("lands first time"), n);
    }
    assert_eq!(store.count_rows().await.expect("count"), 201);
    assert_eq!(
        pg.psql(
            "t",
            &format!(
                "SELECT value || ' ' || source FROM ingest_events \
                 WHERE time = to_timestamp({BASE}) AND parameter_key = '{}'",
                key("voltage")
            )
        ),
        "999 SMS",
        "the update won"
    );
    assert_eq!(
        pg.psql(
            "t",
            "SELECT count(*) FROM (SELECT time, device_id, parameter_key FROM ingest_events \
             GROUP BY 1, 2, 3 HAVING count(*) > 1) d"
        ),
        "0",
        "no duplicate key across compressed and uncompressed rows"
    );
    // Compress again: the late rows go into the compressed form too.
    compress_all(&pg, "t");
    assert_eq!(store.count_rows().await.expect("count"), 201);
}

/// The same through the service: events land, their chunks are compressed, then a late
/// reading, a re-sent event and an update arrive: all land, no dead letter, queue empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_writes_late_events_into_compressed_chunks() {
    let env = TestEnv::new(Kind::ScaleOutTimescale);
    env.import_demo().await;
    let app = env.start(Role::Serve, &[]).await;
    for i in 0..10 {
        let (status, body) = app.post_event(&event(i * 60, &[("voltage", 1.0)])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    wait_until("ten rows", SETTLE, || async { env.row_count().await == 10 }).await;
    let pg = env.pg.as_ref().expect("pg");
    compress_all(pg, "nsready_test");
    let late = [
        event(30, &[("current", 2.0)]),   // new key in a compressed chunk
        event(60, &[("voltage", 1.0)]),   // re-sent, unchanged
        event(120, &[("voltage", 42.0)]), // update of a stored key
    ];
    for ev in &late {
        assert_eq!(app.post_event(ev).await.0, StatusCode::OK);
    }
    wait_until("late rows landed", SETTLE, || async {
        let rows = env.rows();
        rows.len() == 11 && rows.iter().any(|r| r.value == Some(42.0))
    })
    .await;
    wait_until("queue drained", SETTLE, || async {
        env.queue_stats().await.depth() == 0
    })
    .await;
    assert!(env.dead_letters().await.is_empty());
    assert_eq!(
        env.row_count().await,
        11,
        "13 accepted, 2 of them on stored keys"
    );
    app.stop().await;
}

/// `v_scada_history_1m`: per device, parameter and minute the min, max, avg, last value and
/// count, across buckets; on TimescaleDB before and after the continuous aggregate is
/// refreshed, and a late update of a materialised bucket shows after the next refresh.
async fn the_rollup_gives_min_max_avg_last_count_per_minute(pg: Postgres) {
    let store = demo_store(&pg, "t").await;
    if is_hypertable(&pg, "t") {
        pause_jobs(&pg, "t");
    }
    let dev = demo_ids::DEVICE_01_1;
    let rows = vec![
        row(dev, "voltage", 0, 10.0),
        row(dev, "voltage", 10, 30.0),
        row(dev, "voltage", 50, 20.0),
        row(dev, "voltage", 60, 5.0),
        row(dev, "voltage", 119, 7.0),
        row(dev, "voltage", 180, 1.0),
        row(demo_ids::device(1, 2), "voltage", 5, 100.0),
    ];
    store.upsert(&sorted(rows)).await.expect("write");
    let sql = format!(
        "SELECT string_agg(format('%s %s %s %s %s %s', extract(epoch FROM bucket)::bigint - {BASE}, \
         value_min, value_max, round(value_avg::numeric, 2), value_last, value_count), ', ' \
         ORDER BY bucket) FROM v_scada_history_1m WHERE device_id = '{dev}'"
    );
    let expected = "0 10 30 20.00 20 3, 60 5 7 6.00 7 2, 180 1 1 1.00 1 1";
    assert_eq!(pg.psql("t", &sql), expected, "before any refresh");
    let timescale = is_hypertable(&pg, "t");
    if timescale {
        assert_eq!(
            pg.psql(
                "t",
                "SELECT count(*) FROM timescaledb_information.jobs \
                 WHERE proc_name = 'policy_refresh_continuous_aggregate'"
            ),
            "1",
            "a refresh policy"
        );
        pg.psql(
            "t",
            "CALL refresh_continuous_aggregate('scada_rollup_1m', NULL, NULL)",
        );
        assert_eq!(pg.psql("t", &sql), expected, "materialised");
    }
    // A late update of the newest reading of minute 0.
    store
        .upsert(&[row(dev, "voltage", 50, 40.0)])
        .await
        .expect("late update");
    if timescale {
        pg.psql(
            "t",
            "CALL refresh_continuous_aggregate('scada_rollup_1m', NULL, NULL)",
        );
    }
    assert_eq!(
        pg.psql("t", &sql),
        "0 10 40 26.67 40 3, 60 5 7 6.00 7 2, 180 1 1 1.00 1 1",
        "the late update is in the rollup"
    );
}

#[tokio::test]
async fn the_rollup_on_plain_postgresql() {
    the_rollup_gives_min_max_avg_last_count_per_minute(Postgres::start()).await
}

#[tokio::test]
async fn the_rollup_on_timescaledb_is_a_continuous_aggregate() {
    the_rollup_gives_min_max_avg_last_count_per_minute(Postgres::start_timescale()).await
}

/// Retention never drops what was accepted without saying so: TIMESCALE_RETENTION without a
/// shorter INGEST_MAX_PAST refuses to start, naming both; with it, a reading older than the
/// window is answered 400 and a recent one lands. Health and `nsready status` show
/// TimescaleDB and its policies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_refuses_old_readings_at_the_door_and_status_shows_the_policies() {
    let env = TestEnv::new(Kind::ScaleOutTimescale);
    env.import_demo().await;
    let err = App::build(
        &env.settings(&["--timescale-retention", "30d"]),
        Role::Serve,
        Shutdown::new(),
    )
    .await
    .err()
    .expect("retention without INGEST_MAX_PAST is refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("TIMESCALE_RETENTION") && msg.contains("INGEST_MAX_PAST"),
        "{msg}"
    );

    let app = env
        .start(
            Role::Serve,
            &["--timescale-retention", "30d", "--ingest-max-past", "29d"],
        )
        .await;
    let at = |days: i64| {
        let mut ev = event(0, &[("voltage", days as f64)]);
        ev["source_timestamp"] = json!(
            (Utc::now() - chrono::Duration::days(days))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        ev
    };
    let (status, body) = app.post_event(&at(40)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.to_string().contains("INGEST_MAX_PAST"), "{body}");
    assert_eq!(app.post_event(&at(1)).await.0, StatusCode::OK);
    wait_until("the recent one lands", SETTLE, || async {
        env.row_count().await == 1
    })
    .await;

    let h = app.health().await;
    assert_eq!(h["store"]["backend"], "timescaledb", "{h}");
    assert_eq!(h["store"]["timescale"]["retention"], "30 days", "{h}");
    assert_eq!(h["store"]["timescale"]["compress_after"], "7 days", "{h}");
    assert_eq!(h["store"]["timescale"]["hypertable"], true, "{h}");
    let out = tokio::process::Command::from(env.command("status", &["--url", &app.base]))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("nsready status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("store           timescaledb"), "{text}");
    assert!(
        text.contains("compress after 7 days, retention 30 days"),
        "{text}"
    );
    app.stop().await;
}

/// The least-privilege role writes into compressed chunks and reads the rollup view.
#[tokio::test]
async fn the_ingest_role_writes_into_compressed_chunks() {
    let pg = Postgres::start_timescale();
    let store = demo_store(&pg, "t").await;
    store.create_roles().await.expect("roles");
    pause_jobs(&pg, "t");
    let dev = demo_ids::DEVICE_01_1;
    store
        .upsert(&[row(dev, "voltage", 0, 1.0)])
        .await
        .expect("owner writes");
    compress_all(&pg, "t");
    pg.psql(
        "postgres",
        "CREATE ROLE ingest LOGIN IN ROLE nsready_ingest; \
         CREATE ROLE scada LOGIN IN ROLE nsready_read",
    );
    let as_role = |user: &str| {
        let mut pgc = PgConnect::from_url(&pg.url("t")).expect("url");
        pgc.config.user(user);
        PostgresStore::connect(&pgc, 1, TIMEOUT).expect("pool")
    };
    let ingest = as_role("ingest");
    ingest
        .migrate()
        .await
        .expect("a current database needs no DDL");
    let batch = sorted(vec![
        row(dev, "voltage", 0, 2.0),
        row(dev, "current", 30, 3.0),
    ]);
    assert_eq!(ingest.upsert(&batch).await.expect("ingest role upserts"), 2);
    assert_eq!(ingest.count_rows().await.expect("count"), 2);
    // The refresh job may have materialised minute 0 before the late writes; a late write
    // into a materialised bucket shows after the next refresh (the policy's, or this one).
    pg.psql(
        "t",
        "CALL refresh_continuous_aggregate('scada_rollup_1m', NULL, NULL)",
    );
    let scada = pg.psql(
        "t",
        "SET ROLE scada; SELECT sum(value_count) FROM v_scada_history_1m",
    );
    assert_eq!(scada, "2");
}
