//! Behaviour tests of the SQLite store against real files in temporary directories.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use tempfile::TempDir;
use uuid::Uuid;

use super::{SqliteStore, classify, format_time};
use crate::registry::{self, Device, RegistryDoc, demo_ids};
use crate::store::{ErrorLogEntry, Row, Store, StoreError};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A migrated store holding the demo registry.
async fn demo_store(dir: &TempDir) -> Result<SqliteStore, StoreError> {
    let store = SqliteStore::open(&dir.path().join("nsready.db"))?;
    store.migrate().await?;
    store.import_registry(&registry::demo()).await?;
    Ok(store)
}

fn key(name: &str) -> String {
    format!("project:{}:{name}", demo_ids::PROJECT_01)
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_763_121_600 + secs, 0)
        .single()
        .unwrap_or_default()
}

fn row(device: Uuid, param: &str, time: DateTime<Utc>, value: f64) -> Row {
    Row {
        time,
        device_id: device,
        parameter_key: key(param),
        value: Some(value),
        quality: 192,
        source: "GPRS".into(),
        event_id: format!("{device}:{}:{}", time.to_rfc3339(), key(param)),
        attributes: json!({"unit": "V"}),
    }
}

/// A second connection on the same file, to look at what the store wrote.
fn peek(dir: &TempDir) -> rusqlite::Result<rusqlite::Connection> {
    rusqlite::Connection::open(dir.path().join("nsready.db"))
}

/// Migrating an up-to-date database is a no-op.
#[tokio::test]
async fn migrate_twice_is_fine() -> TestResult {
    let dir = TempDir::new()?;
    let store = SqliteStore::open(&dir.path().join("nsready.db"))?;
    store.migrate().await?;
    store.migrate().await?;
    store.ping().await?;
    let version: i64 = peek(&dir)?.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    assert_eq!(version, 1);
    // A second store on the same file (another process) finds nothing to do either.
    SqliteStore::open(&dir.path().join("nsready.db"))?
        .migrate()
        .await?;
    Ok(())
}

/// Writing the same key twice leaves one row holding the last write.
#[tokio::test]
async fn upsert_of_the_same_key_keeps_one_row_and_the_last_value() -> TestResult {
    let dir = TempDir::new()?;
    let store = demo_store(&dir).await?;
    let dev = demo_ids::DEVICE_01_1;
    assert_eq!(store.upsert(&[row(dev, "voltage", at(0), 230.0)]).await?, 1);
    let mut again = row(dev, "voltage", at(0), 231.5);
    again.quality = 0;
    again.source = "SMS".into();
    assert_eq!(store.upsert(&[again]).await?, 1);
    assert_eq!(store.count_rows().await?, 1);
    let latest = store.latest(Some(dev)).await?;
    assert_eq!(latest.len(), 1);
    assert_eq!((latest[0].value, latest[0].quality), (Some(231.5), 0));
    let source: String =
        peek(&dir)?.query_row("SELECT source FROM ingest_events", [], |r| r.get(0))?;
    assert_eq!(source, "SMS");
    Ok(())
}

/// Timestamps are stored at microsecond precision in fixed-width text; finer digits are
/// truncated, so two writes differing only below the microsecond hit the same row.
#[tokio::test]
async fn timestamps_are_fixed_width_microseconds() -> TestResult {
    let dir = TempDir::new()?;
    let store = demo_store(&dir).await?;
    let t = at(0) + chrono::Duration::nanoseconds(123_456_789);
    assert_eq!(format_time(&t), "2025-11-14T12:00:00.123456Z");
    let dev = demo_ids::DEVICE_01_1;
    store.upsert(&[row(dev, "voltage", t, 1.0)]).await?;
    let t2 = at(0) + chrono::Duration::nanoseconds(123_456_001);
    store.upsert(&[row(dev, "voltage", t2, 2.0)]).await?;
    assert_eq!(store.count_rows().await?, 1);
    let stored: String =
        peek(&dir)?.query_row("SELECT time FROM ingest_events", [], |r| r.get(0))?;
    assert_eq!(stored, "2025-11-14T12:00:00.123456Z");
    let latest = store.latest(None).await?;
    assert_eq!(
        latest[0].time,
        at(0) + chrono::Duration::microseconds(123_456)
    );
    Ok(())
}

/// A row for a device the registry does not know is refused as bad data, not as an outage.
#[tokio::test]
async fn unknown_device_or_parameter_is_a_data_error() -> TestResult {
    let dir = TempDir::new()?;
    let store = demo_store(&dir).await?;
    let unknown = row(Uuid::new_v4(), "voltage", at(0), 1.0);
    let err = store.upsert(&[unknown]).await.err().ok_or("accepted")?;
    assert!(matches!(err, StoreError::Data(_)), "{err:?}");
    assert!(!err.is_transient());
    let mut bad_param = row(demo_ids::DEVICE_01_1, "voltage", at(0), 1.0);
    bad_param.parameter_key = "project:nope:voltage".into();
    let good = row(demo_ids::DEVICE_01_1, "current", at(0), 1.0);
    let err = store
        .upsert(&[good, bad_param])
        .await
        .err()
        .ok_or("accepted")?;
    assert!(matches!(err, StoreError::Data(_)), "{err:?}");
    // The batch is all or nothing: the good row was rolled back with it.
    assert_eq!(store.count_rows().await?, 0);
    Ok(())
}

/// Two devices sending the same event id for the same second both land.
#[tokio::test]
async fn two_devices_with_the_same_event_id_and_time_both_land() -> TestResult {
    let dir = TempDir::new()?;
    let store = demo_store(&dir).await?;
    let mut a = row(demo_ids::device(1, 1), "voltage", at(0), 1.0);
    let mut b = row(demo_ids::device(1, 2), "voltage", at(0), 2.0);
    a.event_id = format!("same-event:{}", key("voltage"));
    b.event_id = a.event_id.clone();
    assert_eq!(store.upsert(&[a, b]).await?, 2);
    assert_eq!(store.count_rows().await?, 2);
    Ok(())
}

/// `latest` gives the newest row per device and parameter, for one device or all.
#[tokio::test]
async fn latest_is_the_newest_row_per_device_and_parameter() -> TestResult {
    let dir = TempDir::new()?;
    let store = demo_store(&dir).await?;
    let (d1, d2) = (demo_ids::device(1, 1), demo_ids::device(1, 2));
    let mut rows = vec![
        row(d1, "voltage", at(0), 1.0),
        row(d1, "voltage", at(2), 3.0),
        row(d1, "voltage", at(1), 2.0),
        row(d1, "current", at(0), 10.0),
        row(d2, "voltage", at(5), 50.0),
    ];
    rows.sort_by(|a, b| a.key().cmp(&b.key()));
    store.upsert(&rows).await?;
    let one = store.latest(Some(d1)).await?;
    let got: Vec<_> = one
        .iter()
        .map(|l| (l.parameter_key.clone(), l.time, l.value))
        .collect();
    assert_eq!(
        got,
        vec![
            (key("current"), at(0), Some(10.0)),
            (key("voltage"), at(2), Some(3.0)),
        ]
    );
    let all = store.latest(None).await?;
    assert_eq!(all.len(), 3);
    assert!(
        all.iter()
            .any(|l| l.device_id == d2 && l.value == Some(50.0))
    );
    assert!(store.latest(Some(Uuid::new_v4())).await?.is_empty());
    Ok(())
}

/// Importing the same document twice changes nothing the second time.
#[tokio::test]
async fn import_is_idempotent() -> TestResult {
    let dir = TempDir::new()?;
    let store = demo_store(&dir).await?;
    let first = store.export_registry().await?;
    let report = store.import_registry(&registry::demo()).await?;
    assert_eq!(
        (report.customers, report.devices, report.parameter_templates),
        (10, 20, 3)
    );
    assert_eq!(store.export_registry().await?, first);
    Ok(())
}

/// What one store exports, another imports into the same registry; and it is the demo's.
#[tokio::test]
async fn export_then_import_round_trips() -> TestResult {
    let dir = TempDir::new()?;
    let a = demo_store(&dir).await?;
    let exported = a.export_registry().await?;
    let mut demo = registry::demo();
    demo.customers.sort_by(|x, y| x.name.cmp(&y.name));
    demo.projects.sort_by(|x, y| x.name.cmp(&y.name));
    demo.sites.sort_by(|x, y| x.name.cmp(&y.name));
    demo.devices.sort_by(|x, y| x.name.cmp(&y.name));
    demo.parameter_templates.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(exported, demo);

    let other = TempDir::new()?;
    let b = SqliteStore::open(&other.path().join("nsready.db"))?;
    b.migrate().await?;
    // Through the file format, as `registry export | registry import` would.
    let text = serde_json::to_string_pretty(&exported)?;
    b.import_registry(&RegistryDoc::parse(&text)?).await?;
    assert_eq!(b.export_registry().await?, exported);
    Ok(())
}

/// An import that changes a row updates it in place (keyed by id).
#[tokio::test]
async fn import_updates_existing_rows_by_id() -> TestResult {
    let dir = TempDir::new()?;
    let store = demo_store(&dir).await?;
    let mut doc = RegistryDoc::default();
    let mut dev = registry::demo().devices[0].clone();
    dev.status = "inactive".into();
    doc.devices.push(dev);
    let mut template = registry::demo().parameter_templates[0].clone();
    template.unit = Some("kV".into());
    doc.parameter_templates.push(template.clone());
    store.import_registry(&doc).await?;
    let snap = store.load_registry().await?;
    let info = snap
        .devices
        .get(&demo_ids::DEVICE_01_1)
        .ok_or("device gone")?;
    assert_eq!(info.status, "inactive");
    let exported = store.export_registry().await?;
    assert_eq!(exported.devices.len(), 20);
    let t = exported
        .parameter_templates
        .iter()
        .find(|t| t.key == template.key)
        .ok_or("template gone")?;
    assert_eq!(t.unit.as_deref(), Some("kV"));
    Ok(())
}

/// A device whose site does not exist is refused with a sentence naming table and row,
/// and nothing of the document is written.
#[tokio::test]
async fn import_names_the_row_that_refers_to_a_missing_parent() -> TestResult {
    let dir = TempDir::new()?;
    let store = SqliteStore::open(&dir.path().join("nsready.db"))?;
    store.migrate().await?;
    let mut doc = registry::demo();
    let missing = Uuid::new_v4();
    doc.devices.push(Device {
        id: Uuid::new_v4(),
        site_id: missing,
        name: "orphan".into(),
        device_type: "sensor".into(),
        external_id: None,
        status: "active".into(),
    });
    match store.import_registry(&doc).await {
        Err(StoreError::Invalid(m)) => {
            assert!(m.starts_with("devices: device `orphan` (id "), "{m}");
            assert!(
                m.contains(&format!("refers to site {missing} which does not exist")),
                "{m}"
            );
        }
        other => return Err(format!("expected Invalid, got {other:?}").into()),
    }
    assert_eq!(store.export_registry().await?, RegistryDoc::default());
    Ok(())
}

/// A unique value used by another row is refused naming the column.
#[tokio::test]
async fn import_names_a_unique_clash() -> TestResult {
    let dir = TempDir::new()?;
    let store = demo_store(&dir).await?;
    let mut doc = RegistryDoc::default();
    let mut copy = registry::demo().devices[0].clone();
    copy.id = Uuid::new_v4();
    copy.name = "another name".into();
    doc.devices.push(copy);
    match store.import_registry(&doc).await {
        Err(StoreError::Invalid(m)) => {
            assert!(m.starts_with("devices: device `another name`"), "{m}");
            assert!(
                m.ends_with("external_id is already used by another row"),
                "{m}"
            );
        }
        other => return Err(format!("expected Invalid, got {other:?}").into()),
    }
    Ok(())
}

/// The snapshot has every device with its site and project, and every parameter key.
#[tokio::test]
async fn load_registry_reads_devices_and_parameters() -> TestResult {
    let dir = TempDir::new()?;
    let store = demo_store(&dir).await?;
    let snap = store.load_registry().await?;
    assert_eq!(snap.devices.len(), 20);
    assert_eq!(snap.parameters.len(), 3);
    assert_eq!(
        snap.parameters.get(&key("power")),
        Some(&Some(demo_ids::PROJECT_01))
    );
    let info = snap.devices.get(&demo_ids::device(3, 2)).ok_or("missing")?;
    assert_eq!(info.site_id, demo_ids::site(3));
    assert_eq!(info.project_id, demo_ids::project(3));
    assert_eq!(info.status, "active");
    Ok(())
}

/// Error log entries land with their JSON context.
#[tokio::test]
async fn log_errors_appends_rows() -> TestResult {
    let dir = TempDir::new()?;
    let store = demo_store(&dir).await?;
    let entry = ErrorLogEntry {
        source: "worker".into(),
        level: "error".into(),
        message: "dead-lettered: device_not_found".into(),
        context: json!({"trace_id": "t-1", "error_type": "device_not_found"}),
    };
    store.log_errors(&[entry.clone(), entry]).await?;
    store.log_errors(&[]).await?;
    let conn = peek(&dir)?;
    let (n, ctx, time): (i64, String, String) = conn.query_row(
        "SELECT count(*), max(context), max(time) FROM error_logs",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    assert_eq!(n, 2);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&ctx)?["trace_id"],
        "t-1"
    );
    assert_eq!(time.len(), "2025-11-14T12:00:00.000000Z".len());
    Ok(())
}

/// The schema defaults build the same text formats the store writes.
#[tokio::test]
async fn schema_defaults_make_uuid_and_timestamp_text() -> TestResult {
    let dir = TempDir::new()?;
    let _store = demo_store(&dir).await?;
    let conn = peek(&dir)?;
    conn.execute("INSERT INTO customers (name) VALUES ('by hand')", [])?;
    let (id, created): (String, String) = conn.query_row(
        "SELECT id, created_at FROM customers WHERE name = 'by hand'",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let uuid = Uuid::parse_str(&id)?;
    assert_eq!(uuid.to_string(), id, "lower-case hyphenated");
    assert_eq!(uuid.get_version_num(), 4);
    assert!(DateTime::parse_from_rfc3339(&created).is_ok(), "{created}");
    assert_eq!(created.len(), 27, "{created}");
    Ok(())
}

/// Failures are classed once: busy is a transient conflict, a full disk is unavailable,
/// a constraint is the data's fault.
#[test]
fn sqlite_errors_are_classified() {
    use rusqlite::ffi;
    let err = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
    assert!(matches!(
        classify(err(ffi::SQLITE_BUSY)),
        StoreError::Conflict(_)
    ));
    assert!(matches!(
        classify(err(ffi::SQLITE_LOCKED)),
        StoreError::Conflict(_)
    ));
    assert!(matches!(
        classify(err(ffi::SQLITE_FULL)),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        classify(err(ffi::SQLITE_IOERR)),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        classify(err(ffi::SQLITE_CANTOPEN)),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        classify(err(ffi::SQLITE_CONSTRAINT_NOTNULL)),
        StoreError::Data(_)
    ));
    assert!(matches!(
        classify(err(ffi::SQLITE_CORRUPT)),
        StoreError::Other(_)
    ));
    assert!(classify(err(ffi::SQLITE_BUSY)).is_transient());
    assert!(!classify(err(ffi::SQLITE_CONSTRAINT_FOREIGNKEY)).is_transient());
}

/// The worker's classes: busy, locked, I/O, full, unopenable, read-only are the
/// infrastructure's; a type mismatch or a value too big can never be stored; a constraint
/// and anything else (corrupt, schema, unknown) are unclear, so the worker pings and
/// bisects.
#[test]
fn sqlite_errors_map_to_the_worker_classes() {
    use crate::store::Failure;
    use rusqlite::ffi;
    let class =
        |code| classify(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)).failure();
    for code in [
        ffi::SQLITE_BUSY,
        ffi::SQLITE_LOCKED,
        ffi::SQLITE_IOERR,
        ffi::SQLITE_FULL,
        ffi::SQLITE_CANTOPEN,
        ffi::SQLITE_READONLY,
        ffi::SQLITE_PERM,
    ] {
        assert_eq!(class(code), Failure::Infrastructure, "{code}");
    }
    for code in [ffi::SQLITE_MISMATCH, ffi::SQLITE_TOOBIG] {
        assert_eq!(class(code), Failure::Unstorable, "{code}");
    }
    for code in [
        ffi::SQLITE_CONSTRAINT_FOREIGNKEY,
        ffi::SQLITE_CONSTRAINT_TRIGGER,
        ffi::SQLITE_CORRUPT,
        ffi::SQLITE_ERROR,
        ffi::SQLITE_SCHEMA,
        ffi::SQLITE_INTERNAL,
        // Out of memory may be a huge batch's doing: bisect, like PostgreSQL's 53200.
        ffi::SQLITE_NOMEM,
    ] {
        assert_eq!(class(code), Failure::Unclear, "{code}");
    }
    let unbindable = rusqlite::Error::ToSqlConversionFailure("no".into());
    assert_eq!(classify(unbindable).failure(), Failure::Unstorable);
}

/// A file that is not a database is an error naming it, not a panic.
#[test]
fn a_corrupt_file_is_an_error() -> TestResult {
    let dir = TempDir::new()?;
    let path = dir.path().join("nsready.db");
    std::fs::write(&path, vec![0x5Au8; 8192])?;
    let err = SqliteStore::open(&path).err().ok_or("opened garbage")?;
    assert!(err.to_string().contains("nsready.db"), "{err}");
    Ok(())
}
