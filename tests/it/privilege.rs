//! Least privilege (issue 10, item 7), against real servers:
//! - PostgreSQL: `nsready migrate --create-roles` makes `nsready_ingest` and `nsready_read`;
//!   a collector and a worker running as a login member of `nsready_ingest` land rows and
//!   dead letters, and that user can neither drop nor delete nor read `error_logs`; a member
//!   of `nsready_read` reads the SCADA views and nothing else.
//! - NATS: `deploy/nats/accounts.conf` on a real nats-server: the pipeline runs with the
//!   collector and worker users as separate processes, and the collector user is refused
//!   on the DLQ subject, on another subject and on the consumer.
//! - Embedded: `DATA_DIR` 0700 and every file in it 0600, whatever the umask.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nsready::app::Role;
use reqwest::StatusCode;
use serde_json::Value;
use tokio_postgres::error::SqlState;

use crate::support::app::{Kind, TestEnv, wait_ready, wait_until};
use crate::support::servers::{NatsServer, Postgres, free_port};
use crate::support::{Proc, event, event_for};

const SETTLE: Duration = Duration::from_secs(30);
const DB: &str = "nsready_test";

/// The sample config, as shipped.
const ACCOUNTS_CONF: &str = include_str!("../../deploy/nats/accounts.conf");
const COLLECTOR_PW: &str = "collector-secret-1";
const WORKER_PW: &str = "worker-secret-2";
const ADMIN_PW: &str = "admin-secret-3";

/// A nsready child process with its output in a file (shown when a test fails).
struct Child {
    _proc: Proc,
    log: PathBuf,
    base: String,
}

impl Child {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs `nsready <sub> <args>` to completion; panics with its output when it fails.
fn run_ok(sub: &str, args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nsready"))
        .arg(sub)
        .args(args)
        .output()
        .expect("nsready runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "nsready {sub} failed:\n{text}");
    text
}

/// Starts `nsready <role>` on a free port with `args` and waits until it is ready.
async fn spawn(dir: &Path, role: &str, args: &[String]) -> Child {
    let port = free_port();
    let log = dir.join(format!("{role}-{port}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_nsready"))
        .arg(role)
        .args(args)
        .args([
            "--service-host",
            "127.0.0.1",
            "--service-port",
            &port.to_string(),
            "--log-format",
            "json",
            "--log-level",
            "nsready=debug,warn",
        ])
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .expect("spawn nsready");
    let c = Child {
        _proc: Proc(child),
        log,
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_ready(&c.base).await;
    c
}

/// Settings of every process of a test: fast batches and retries.
fn common(nats_url: &str, db_url: &str) -> Vec<String> {
    [
        "--nats-url",
        nats_url,
        "--database-url",
        db_url,
        "--worker-batch-timeout",
        "0.05",
        "--worker-retry-delay",
        "0.2",
        "--worker-max-retries",
        "3",
        "--worker-pool-size",
        "2",
        "--db-connect-retries",
        "3",
        "--nats-connect-retries",
        "3",
        "--nats-connect-delay",
        "0.5",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn with(mut base: Vec<String>, extra: &[&str]) -> Vec<String> {
    base.extend(extra.iter().map(|s| s.to_string()));
    base
}

async fn post(base: &str, body: &Value) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{base}/v1/ingest"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

async fn health(base: &str) -> Value {
    reqwest::get(format!("{base}/v1/health"))
        .await
        .expect("health")
        .json()
        .await
        .expect("health json")
}

/// A tokio-postgres client as `user` (trust auth: no password).
async fn connect_as(pg: &Postgres, user: &str) -> tokio_postgres::Client {
    let url = format!("postgres://{user}@127.0.0.1:{}/{DB}", pg.port());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    tokio::spawn(conn);
    client
}

/// Runs `sql` as the client and asserts PostgreSQL refuses it for lack of privilege.
async fn refused(client: &tokio_postgres::Client, sql: &str) {
    let err = client
        .batch_execute(sql)
        .await
        .err()
        .unwrap_or_else(|| panic!("`{sql}` was allowed"));
    assert_eq!(
        err.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "`{sql}`: {err:?}"
    );
}

/// Waits until `count` rows are in ingest_events and `dead` rows in error_logs, with the
/// queue drained (the worker's own health), then checks the counts stay exact.
async fn settled(pg: &Postgres, worker: &Child, rows: i64, dead: i64) {
    let count = |sql: &str| pg.psql(DB, sql).parse::<i64>().expect("integer");
    wait_until("rows and dead letters land", SETTLE, || async {
        count("SELECT count(*) FROM ingest_events") == rows
            && count("SELECT count(*) FROM error_logs") == dead
    })
    .await;
    wait_until("the queue drains", SETTLE, || async {
        health(&worker.base).await["queue_depth"] == 0
    })
    .await;
    assert_eq!(count("SELECT count(*) FROM ingest_events"), rows);
    assert_eq!(count("SELECT count(*) FROM error_logs"), dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_as_nsready_ingest_which_cannot_drop_or_delete() {
    crate::support::init_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = Postgres::start();
    let owner_url = pg.create_database(DB);
    let nats = NatsServer::start();
    let owner = common(&nats.url(), &owner_url);

    // Twice: the roles and grants are idempotent.
    for _ in 0..2 {
        let out = run_ok("migrate", &with(owner.clone(), &["--create-roles"]));
        assert!(out.contains("nsready_ingest"), "{out}");
    }
    run_ok("registry", &with(owner.clone(), &["demo"]));
    pg.psql(
        DB,
        "CREATE ROLE ingest_login LOGIN IN ROLE nsready_ingest; \
         CREATE ROLE scada_login LOGIN IN ROLE nsready_read",
    );
    let ingest_url = format!("postgres://ingest_login@127.0.0.1:{}/{DB}", pg.port());
    let ingest = common(&nats.url(), &ingest_url);

    // A current schema is only read: `migrate` as the ingest role succeeds.
    run_ok("migrate", &ingest);

    let worker = spawn(dir.path(), "worker", &ingest).await;
    let collector = spawn(dir.path(), "collector", &ingest).await;
    for i in 0..5 {
        let e = event(i, &[("voltage", 230.0 + i as f64), ("current", 1.0)]);
        assert_eq!(post(&collector.base, &e).await, StatusCode::OK);
    }
    // Unknown device: retried, dead-lettered, an error_logs row written by the ingest role.
    let stranger = event_for(uuid::Uuid::from_u128(7), 0, &[("voltage", 1.0)]);
    assert_eq!(post(&collector.base, &stranger).await, StatusCode::OK);
    // Counting: 6 accepted = 5 events as 10 rows + 1 dead letter.
    settled(&pg, &worker, 10, 1).await;
    for c in [&worker, &collector] {
        let log = c.log();
        assert!(!log.contains("permission denied"), "{log}");
    }

    let ing = connect_as(&pg, "ingest_login").await;
    for sql in [
        "DROP TABLE ingest_events",
        "DELETE FROM ingest_events",
        "TRUNCATE ingest_events",
        "ALTER TABLE ingest_events ADD COLUMN x int",
        "SELECT message FROM error_logs",
        "DELETE FROM error_logs",
        "INSERT INTO devices (site_id, name, device_type) \
         SELECT site_id, 'rogue', 'sensor' FROM devices LIMIT 1",
        "UPDATE parameter_templates SET name = 'x'",
        "CREATE TABLE rogue (a int)",
        "CREATE ROLE rogue",
    ] {
        refused(&ing, sql).await;
    }
    // Still there, untouched.
    assert_eq!(pg.psql(DB, "SELECT count(*) FROM ingest_events"), "10");

    let scada = connect_as(&pg, "scada_login").await;
    let latest: i64 = scada
        .query_one("SELECT count(*) FROM v_scada_latest", &[])
        .await
        .expect("nsready_read reads v_scada_latest")
        .get(0);
    assert_eq!(latest, 2, "one newest row per (device, parameter)");
    let history: i64 = scada
        .query_one("SELECT count(*) FROM v_scada_history", &[])
        .await
        .expect("nsready_read reads v_scada_history")
        .get(0);
    assert_eq!(history, 10);
    for sql in [
        "SELECT count(*) FROM ingest_events",
        "SELECT count(*) FROM devices",
        "INSERT INTO ingest_events (time, device_id, parameter_key) \
         SELECT now(), id, 'x' FROM (SELECT gen_random_uuid() AS id) d",
        "DELETE FROM ingest_events",
    ] {
        refused(&scada, sql).await;
    }
    drop((worker, collector));
}

/// A worker running as the ingest role against a database nobody migrated is refused at
/// start with what to do, instead of half a schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_role_does_not_migrate_a_fresh_database() {
    let pg = Postgres::start();
    pg.create_database(DB);
    let nats = NatsServer::start();
    pg.psql(
        DB,
        "CREATE ROLE nsready_ingest NOLOGIN; CREATE ROLE ingest_login LOGIN IN ROLE nsready_ingest",
    );
    let url = format!("postgres://ingest_login@127.0.0.1:{}/{DB}", pg.port());
    let out = Command::new(env!("CARGO_BIN_EXE_nsready"))
        .arg("migrate")
        .args(common(&nats.url(), &url))
        .output()
        .expect("nsready runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run `nsready migrate` as the database owner first"),
        "{err}"
    );
    assert_eq!(
        pg.psql(
            DB,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0",
        "nothing created"
    );
}

/// The sample config with the passwords nats-server would read from its environment.
fn accounts_conf(dir: &Path) -> PathBuf {
    let text = ACCOUNTS_CONF
        .replace(
            "$NSREADY_COLLECTOR_PASSWORD",
            &format!("\"{COLLECTOR_PW}\""),
        )
        .replace("$NSREADY_WORKER_PASSWORD", &format!("\"{WORKER_PW}\""))
        .replace("$NSREADY_ADMIN_PASSWORD", &format!("\"{ADMIN_PW}\""));
    let path = dir.join("accounts.conf");
    std::fs::write(&path, text).expect("write config");
    path
}

/// A plain async-nats client as `user`, collecting the server's error events.
async fn nats_as(
    nats: &NatsServer,
    user: &str,
    pw: &str,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), pw.into())
        .event_callback(move |ev| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(ev.to_string());
            }
        })
        .connect(nats.url())
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
    (client, rx)
}

/// Waits for a server error event that mentions `subject`.
async fn violation(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, subject: &str) {
    let found = tokio::time::timeout(SETTLE, async {
        while let Some(ev) = rx.recv().await {
            if ev.to_lowercase().contains("permissions violation") && ev.contains(subject) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no permissions violation for {subject}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_accounts_sample_lets_each_role_do_only_its_part() {
    crate::support::init_logs();
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = accounts_conf(dir.path());
    let nats = NatsServer::start_with_args(&["-c", &conf.display().to_string()]);
    let pg = Postgres::start();
    let db_url = pg.create_database(DB);
    let base = common(&nats.url(), &db_url);
    run_ok(
        "registry",
        &with(
            base.clone(),
            &[
                "demo",
                "--nats-user",
                "nsready_admin",
                "--nats-password",
                ADMIN_PW,
            ],
        ),
    );

    // Separate processes, each with its own user; the worker first (it provisions).
    let worker = spawn(
        dir.path(),
        "worker",
        &with(
            base.clone(),
            &["--nats-user", "worker", "--nats-password", WORKER_PW],
        ),
    )
    .await;
    let collector = spawn(
        dir.path(),
        "collector",
        &with(
            base.clone(),
            &["--nats-user", "collector", "--nats-password", COLLECTOR_PW],
        ),
    )
    .await;
    for i in 0..5 {
        assert_eq!(
            post(&collector.base, &event(i, &[("voltage", 1.0)])).await,
            StatusCode::OK
        );
    }
    let stranger = event_for(uuid::Uuid::from_u128(7), 0, &[("voltage", 1.0)]);
    assert_eq!(post(&collector.base, &stranger).await, StatusCode::OK);
    // 6 accepted = 5 rows + 1 dead letter (published by the worker user).
    settled(&pg, &worker, 5, 1).await;
    let (admin, _) = nats_as(&nats, "nsready_admin", ADMIN_PW).await;
    let js = async_nats::jetstream::new(admin.clone());
    let mut dlq = js.get_stream("INGRESS_DLQ").await.expect("DLQ stream");
    assert_eq!(dlq.info().await.expect("info").state.messages, 1);
    for c in [&worker, &collector] {
        let log = c.log();
        assert!(
            !log.to_lowercase().contains("permissions violation"),
            "{log}"
        );
    }
    // Both roles read the queue state for /v1/health, the DLQ counted by error type
    // included (`nsready status`).
    for c in [&collector, &worker] {
        wait_until("health sees the dead letter by type", SETTLE, || async {
            let h = health(&c.base).await;
            h["queue_depth"] == 0
                && h["dlq_depth"] == 1
                && h["dlq_by_reason"]["device_not_found"] == 1
        })
        .await;
    }
    for c in [&worker, &collector] {
        let log = c.log();
        assert!(
            !log.to_lowercase().contains("permissions violation"),
            "{log}"
        );
    }

    // The collector user, directly: refused on the DLQ subject, another subject, the
    // consumer's pull API and stream deletion; nothing of it is stored.
    let (col, mut events) = nats_as(&nats, "collector", COLLECTOR_PW).await;
    for subject in [
        "ingress.events.dlq",
        "other.subject",
        "$JS.API.CONSUMER.MSG.NEXT.INGRESS.ingest_workers",
        "$JS.API.STREAM.DELETE.INGRESS",
    ] {
        col.publish(subject, "rogue".into()).await.expect("sent");
        col.flush().await.expect("flush");
        violation(&mut events, subject).await;
    }
    // A JetStream publish to the DLQ gets no ack (the server dropped it).
    let cjs = async_nats::jetstream::new(col.clone());
    let ack = tokio::time::timeout(Duration::from_secs(5), async {
        cjs.publish("ingress.events.dlq", "rogue".into())
            .await?
            .await
            .map(drop)
            .map_err(async_nats::Error::from)
    })
    .await;
    assert!(
        !matches!(ack, Ok(Ok(()))),
        "the collector wrote a dead letter"
    );
    // Subscribing to the ingest subject (reading other devices' events) is refused too.
    let _sub = col.subscribe("ingress.events").await.expect("sent");
    col.flush().await.expect("flush");
    violation(&mut events, "ingress.events").await;
    assert_eq!(dlq.info().await.expect("info").state.messages, 1);

    // The worker user may not publish events (only consume them).
    let (wrk, mut wevents) = nats_as(&nats, "worker", WORKER_PW).await;
    wrk.publish("ingress.events", "rogue".into())
        .await
        .expect("sent");
    wrk.flush().await.expect("flush");
    violation(&mut wevents, "ingress.events").await;
    assert_eq!(pg.psql(DB, "SELECT count(*) FROM ingest_events"), "5");
    drop((worker, collector));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file in `dir`, by name, with its mode.
fn modes(dir: &Path) -> Vec<(String, u32)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("read DATA_DIR")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                mode(&e.path()),
            )
        })
        .collect();
    v.sort();
    v
}

/// With umask 0 (files would be 0666), a new DATA_DIR is 0700 and its files, WAL and
/// shared memory included, 0600; an existing looser one is tightened at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_data_dir_is_private_whatever_the_umask() {
    // SAFETY: umask(2) only sets this process's mask; nextest runs one test per process.
    unsafe {
        libc::umask(0);
    }
    let env = TestEnv::new(Kind::Embedded);
    let data = env.dir.path().join("new/data");
    let data_arg = data.display().to_string();
    let app = env.start(Role::Serve, &["--data-dir", &data_arg]).await;
    // Registry import through the running app's files (WAL writes), then one event.
    let out = env
        .command("registry", &["demo", "--data-dir", &data_arg])
        .output()
        .expect("registry demo");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        app.post_event(&event(0, &[("voltage", 1.0)])).await.0,
        StatusCode::OK
    );
    wait_until("the row lands", SETTLE, || async {
        let conn = rusqlite::Connection::open(data.join("nsready.db")).expect("open");
        conn.query_row("SELECT count(*) FROM ingest_events", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap_or(0)
            == 1
    })
    .await;
    assert_eq!(mode(&data), 0o700);
    let files = modes(&data);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "nsready.db",
        "nsready.db-wal",
        "nsready.lock",
        "queue.db",
        "queue.db-wal",
    ] {
        assert!(names.contains(&want), "{want} missing: {files:?}");
    }
    for (name, m) in &files {
        assert_eq!(*m, 0o600, "{name}: {m:o} in {files:?}");
    }
    app.stop().await;

    // Loosen everything, start again: tightened.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    for (name, _) in &files {
        let _ = std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(0o644));
    }
    let app = env.start(Role::Serve, &["--data-dir", &data_arg]).await;
    assert_eq!(mode(&data), 0o700);
    for (name, m) in modes(&data) {
        assert_eq!(m, 0o600, "{name}: {m:o}");
    }
    app.stop().await;
}

/// With the sample NATS config the collector user may not create the streams: a collector
/// started before any worker exits with an error instead of provisioning (workers own the
/// JetStream settings), and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_user_cannot_provision_the_streams() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = accounts_conf(dir.path());
    let nats = NatsServer::start_with_args(&["-c", &conf.display().to_string()]);
    let pg = Postgres::start();
    let db_url = pg.create_database(DB);
    let args = with(
        common(&nats.url(), &db_url),
        &[
            "--nats-user",
            "collector",
            "--nats-password",
            COLLECTOR_PW,
            "--publish-timeout",
            "1",
            "--service-port",
            "0",
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_nsready"))
        .arg("collector")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .expect("nsready runs");
    assert!(!out.status.success(), "the collector started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stream INGRESS"), "{err}");
    assert!(!err.contains(COLLECTOR_PW), "a secret in the output: {err}");
    let (admin, _) = nats_as(&nats, "nsready_admin", ADMIN_PW).await;
    let js = async_nats::jetstream::new(admin);
    assert!(
        js.get_stream("INGRESS").await.is_err(),
        "the collector created the stream"
    );
}
