//! The PostgreSQL store against a real PostgreSQL: migrations, upserts, error
//! classification (data vs. transient), registry import/export and the SCADA views.
//!
//! Every test starts its server with `support::servers::Postgres::start()` and works in a
//! database of its own; the restart test stops and starts its server. The tests marked
//! `plain_and_timescale!` also run on a PostgreSQL with TimescaleDB preloaded.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nsready::config::PgConnect;
use nsready::registry::{self, RegistryDoc, demo_ids};
use nsready::store::{ErrorLogEntry, PostgresStore, Row, Store, StoreError};
use uuid::Uuid;

use crate::support::servers::Postgres;

/// Runs `async fn name(pg: Postgres)` on plain PostgreSQL and on TimescaleDB.
macro_rules! plain_and_timescale {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn plain() {
                super::$name(crate::support::servers::Postgres::start()).await
            }
            #[tokio::test]
            async fn timescale() {
                super::$name(crate::support::servers::Postgres::start_timescale()).await
            }
        }
    };
}

/// Short enough that a stopped server fails the test quickly, long enough for a loaded CI.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A migrated store on a fresh database `name`.
async fn store(pg: &Postgres, name: &str) -> PostgresStore {
    let url = pg.create_database(name);
    let pg_connect = PgConnect::from_url(&url).expect("the harness gives a valid URL");
    let store = PostgresStore::connect(&pg_connect, 4, TIMEOUT).expect("pool builds");
    store.migrate().await.expect("migrations apply");
    store
}

/// A store with the demo registry imported.
async fn store_with_demo(pg: &Postgres, name: &str) -> PostgresStore {
    let store = store(pg, name).await;
    store
        .import_registry(&registry::demo())
        .await
        .expect("demo registry imports");
    store
}

/// A demo parameter key of Customer 01's project (`voltage`, `current`, `power`).
fn key(name: &str) -> String {
    format!("project:{}:{name}", demo_ids::PROJECT_01)
}

/// One row at `secs` seconds after a fixed instant, good quality, from GPRS.
fn row(device: Uuid, key: &str, secs: i64, value: f64) -> Row {
    let time = DateTime::<Utc>::from_timestamp(1_763_121_600 + secs, 0).expect("valid timestamp");
    Row {
        time,
        device_id: device,
        parameter_key: key.to_string(),
        value: Some(value),
        quality: 192,
        source: "GPRS".into(),
        event_id: format!("{device}:{}:{key}", time.to_rfc3339()),
        attributes: serde_json::json!({"unit": "V"}),
    }
}

/// `psql` output of one value, without surrounding whitespace.
fn psql(pg: &Postgres, db: &str, sql: &str) -> String {
    pg.psql(db, sql).trim().to_string()
}

async fn migrations_apply_twice_and_create_all_tables_and_both_views(pg: Postgres) {
    let store = store(&pg, "t").await;
    store.migrate().await.expect("second migrate is a no-op");

    let tables = psql(
        &pg,
        "t",
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    );
    for table in [
        "customers",
        "devices",
        "error_logs",
        "ingest_events",
        "measurements",
        "missing_intervals",
        "nsready_schema_migrations",
        "parameter_templates",
        "projects",
        "registry_versions",
        "sites",
        "tokens",
    ] {
        assert!(
            tables.split(',').any(|t| t == table),
            "{table} missing in {tables}"
        );
    }
    let views = psql(
        &pg,
        "t",
        "SELECT string_agg(table_name, ',' ORDER BY table_name) FROM information_schema.views \
         WHERE table_schema = 'public' AND table_name LIKE 'v\\_%'",
    );
    assert_eq!(views, "v_scada_history,v_scada_history_1m,v_scada_latest");
    let applied = psql(&pg, "t", "SELECT count(*) FROM nsready_schema_migrations");
    assert_eq!(applied, "2", "each migration is recorded once");
}
plain_and_timescale!(migrations_apply_twice_and_create_all_tables_and_both_views);

async fn concurrent_migrations_of_a_fresh_database_all_succeed(pg: Postgres) {
    let url = pg.create_database("t");
    let pg_connect = PgConnect::from_url(&url).expect("the harness gives a valid URL");
    // Separate pools, as separate processes would have; the advisory lock serialises them.
    let stores: Vec<PostgresStore> = (0..4)
        .map(|_| PostgresStore::connect(&pg_connect, 1, TIMEOUT).expect("pool builds"))
        .collect();
    let results = futures::future::join_all(stores.iter().map(|s| s.migrate())).await;
    for r in results {
        r.expect("every concurrent migrate succeeds");
    }
    assert_eq!(
        psql(&pg, "t", "SELECT count(*) FROM nsready_schema_migrations"),
        "2"
    );
}
plain_and_timescale!(concurrent_migrations_of_a_fresh_database_all_succeed);

async fn upsert_of_rows_with_the_same_key_replaces_and_keeps_one_row(pg: Postgres) {
    let store = store_with_demo(&pg, "t").await;
    let voltage = key("voltage");

    let first = row(demo_ids::DEVICE_01_1, &voltage, 0, 230.0);
    assert_eq!(store.upsert(&[first]).await.expect("first write"), 1);
    let created_at = psql(&pg, "t", "SELECT created_at FROM ingest_events");
    let mut second = row(demo_ids::DEVICE_01_1, &voltage, 0, 231.5);
    second.quality = 0;
    second.source = "SMS".into();
    assert_eq!(store.upsert(&[second]).await.expect("second write"), 1);

    assert_eq!(store.count_rows().await.expect("count"), 1);
    assert_eq!(
        psql(
            &pg,
            "t",
            "SELECT value || ' ' || quality || ' ' || source FROM ingest_events"
        ),
        "231.5 0 SMS",
        "the last write wins"
    );
    assert_eq!(
        psql(&pg, "t", "SELECT created_at FROM ingest_events"),
        created_at,
        "created_at is the time of the first write"
    );
    assert_eq!(store.upsert(&[]).await.expect("empty batch"), 0);
}
plain_and_timescale!(upsert_of_rows_with_the_same_key_replaces_and_keeps_one_row);

async fn upsert_of_a_row_for_an_unknown_device_is_a_data_error(pg: Postgres) {
    let store = store_with_demo(&pg, "t").await;
    let stranger = Uuid::from_u128(0xdead_beef);

    let err = store
        .upsert(&[row(stranger, &key("voltage"), 0, 1.0)])
        .await
        .expect_err("unknown device is refused");
    assert!(matches!(err, StoreError::Data(_)), "{err:?}");
    assert!(!err.is_transient());

    let err = store
        .upsert(&[row(demo_ids::DEVICE_01_1, "project:nope:voltage", 0, 1.0)])
        .await
        .expect_err("unknown parameter is refused");
    assert!(matches!(err, StoreError::Data(_)), "{err:?}");
    assert_eq!(store.count_rows().await.expect("count"), 0);
}
plain_and_timescale!(upsert_of_a_row_for_an_unknown_device_is_a_data_error);

#[tokio::test]
async fn a_stopped_database_gives_a_transient_error_and_writes_resume_after_restart() {
    let pg = Postgres::start();
    let store = store_with_demo(&pg, "t").await;
    let voltage = key("voltage");
    store
        .upsert(&[row(demo_ids::DEVICE_01_1, &voltage, 0, 1.0)])
        .await
        .expect("write while up");

    pg.stop();
    let err = store
        .upsert(&[row(demo_ids::DEVICE_01_1, &voltage, 1, 2.0)])
        .await
        .expect_err("no database");
    assert!(err.is_transient(), "{err:?}");
    assert!(store.ping().await.is_err_and(|e| e.is_transient()));

    pg.start_again();
    // The worker retries transient errors; so does this test, until a deadline. Pooled
    // connections from before the restart are dead and may fail one attempt.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store
            .upsert(&[row(demo_ids::DEVICE_01_1, &voltage, 1, 2.0)])
            .await
        {
            Ok(n) => {
                assert_eq!(n, 1);
                break;
            }
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("upsert after restart: {e:?}"),
        }
    }
    assert_eq!(store.count_rows().await.expect("count"), 2);
}

#[tokio::test]
async fn import_is_idempotent_and_export_reimports_identically() {
    let pg = Postgres::start();
    let store = store(&pg, "t").await;
    let demo = registry::demo();

    let first = store.import_registry(&demo).await.expect("first import");
    assert_eq!(
        (first.customers, first.projects, first.sites, first.devices),
        (10, 10, 10, 20)
    );
    assert_eq!(first.parameter_templates, 3);
    let second = store.import_registry(&demo).await.expect("second import");
    assert_eq!(first, second);
    assert_eq!(psql(&pg, "t", "SELECT count(*) FROM devices"), "20");
    assert_eq!(psql(&pg, "t", "SELECT count(*) FROM customers"), "10");

    let exported = store.export_registry().await.expect("export");
    // The export is ordered by name / key; the demo lists templates in another order.
    let mut expected = demo.clone();
    expected
        .parameter_templates
        .sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(exported, expected);

    let other = store_then_import(&pg, "t2", &exported).await;
    assert_eq!(other.export_registry().await.expect("export"), exported);
}

async fn store_then_import(pg: &Postgres, name: &str, doc: &RegistryDoc) -> PostgresStore {
    let store = store(pg, name).await;
    store.import_registry(doc).await.expect("import");
    store
}

#[tokio::test]
async fn import_names_the_row_that_refers_to_a_missing_site() {
    let pg = Postgres::start();
    let store = store_with_demo(&pg, "t").await;
    let mut doc = RegistryDoc::default();
    let mut device = registry::demo().devices[0].clone();
    device.id = Uuid::from_u128(0x77);
    device.name = "DEV_X".into();
    device.external_id = None;
    device.site_id = Uuid::from_u128(0x99);
    doc.devices.push(device);

    let err = store.import_registry(&doc).await.expect_err("missing site");
    let StoreError::Invalid(msg) = &err else {
        panic!("expected Invalid, got {err:?}");
    };
    assert!(msg.starts_with("devices: device `DEV_X`"), "{msg}");
    assert!(msg.contains(&Uuid::from_u128(0x99).to_string()), "{msg}");

    let mut doc = RegistryDoc::default();
    let mut clash = registry::demo().customers[0].clone();
    clash.id = Uuid::from_u128(0x55);
    doc.customers.push(clash);
    let err = store.import_registry(&doc).await.expect_err("name clash");
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.starts_with("customers: customer `Customer 01`")),
        "{err:?}"
    );
    assert_eq!(psql(&pg, "t", "SELECT count(*) FROM customers"), "10");
}

#[tokio::test]
async fn load_registry_sees_imported_devices_with_their_project() {
    let pg = Postgres::start();
    let store = store_with_demo(&pg, "t").await;

    let snapshot = store.load_registry().await.expect("load");
    assert_eq!(snapshot.devices.len(), 20);
    let dev = snapshot
        .devices
        .get(&demo_ids::device(3, 2))
        .expect("device 3/2 is known");
    assert_eq!(dev.project_id, demo_ids::project(3));
    assert_eq!(dev.site_id, demo_ids::site(3));
    assert_eq!(dev.status, "active");
    assert_eq!(
        snapshot.parameters.get(&key("current")),
        Some(&Some(demo_ids::PROJECT_01)),
        "a key knows its project"
    );
    assert_eq!(snapshot.parameters.len(), 3);
}

#[tokio::test]
async fn two_devices_with_the_same_event_id_at_the_same_time_both_insert() {
    let pg = Postgres::start();
    let store = store_with_demo(&pg, "t").await;
    let voltage = key("voltage");
    let mut a = row(demo_ids::device(1, 1), &voltage, 0, 1.0);
    let mut b = row(demo_ids::device(1, 2), &voltage, 0, 2.0);
    a.event_id = "same-event:voltage".into();
    b.event_id = "same-event:voltage".into();
    let mut rows = vec![a, b];
    rows.sort_by(|x, y| x.key().cmp(&y.key()));

    assert_eq!(store.upsert(&rows).await.expect("both insert"), 2);
    assert_eq!(store.count_rows().await.expect("count"), 2);
}

#[tokio::test]
async fn log_errors_writes_one_row_per_entry() {
    let pg = Postgres::start();
    let store = store(&pg, "t").await;
    let entry = |trace: &str| ErrorLogEntry {
        source: "worker".into(),
        level: "ERROR".into(),
        message: "device_id: device is not in the registry".into(),
        context: serde_json::json!({"trace_id": trace, "error_type": "device_not_found"}),
    };

    store
        .log_errors(&[entry("t-1"), entry("t-2")])
        .await
        .expect("log");
    store.log_errors(&[]).await.expect("nothing to log");

    assert_eq!(
        psql(
            &pg,
            "t",
            "SELECT string_agg(context->>'trace_id', ',' ORDER BY id) FROM error_logs \
             WHERE level = 'ERROR' AND source = 'worker' AND time IS NOT NULL"
        ),
        "t-1,t-2"
    );
}

async fn latest_returns_the_newest_value_per_device_and_parameter(pg: Postgres) {
    let store = store_with_demo(&pg, "t").await;
    let (voltage, current) = (key("voltage"), key("current"));
    let dev = demo_ids::DEVICE_01_1;
    let other = demo_ids::device(1, 2);
    let mut rows = vec![
        row(dev, &voltage, 0, 229.0),
        row(dev, &voltage, 2, 231.0),
        row(dev, &voltage, 1, 230.0),
        row(dev, &current, 0, 10.0),
        row(other, &voltage, 5, 1.0),
    ];
    rows.sort_by(|x, y| x.key().cmp(&y.key()));
    store.upsert(&rows).await.expect("write");

    let latest = store.latest(Some(dev)).await.expect("latest");
    let got: Vec<(&str, Option<f64>, i64)> = latest
        .iter()
        .map(|l| {
            (
                l.parameter_key.as_str(),
                l.value,
                l.time.timestamp() - 1_763_121_600,
            )
        })
        .collect();
    // Ordered by parameter key: `...:current` before `...:voltage`.
    let expected = vec![
        (current.as_str(), Some(10.0), 0),
        (voltage.as_str(), Some(231.0), 2),
    ];
    assert_eq!(got, expected);
    assert!(
        latest
            .iter()
            .all(|l| l.device_id == dev && l.quality == 192)
    );

    let all = store.latest(None).await.expect("latest of all");
    assert_eq!(all.len(), 3);
}
plain_and_timescale!(latest_returns_the_newest_value_per_device_and_parameter);
