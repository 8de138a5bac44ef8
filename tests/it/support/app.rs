//! `TestEnv` and `RunningApp`: the service under test, on real servers.
//!
//! A [`TestEnv`] owns the backends of one deployment (nats-server + PostgreSQL started by
//! `servers.rs`, or a temp `DATA_DIR` for the embedded mode) and the settings pointing at
//! them; [`TestEnv::start`] builds the real `App` in-process on port 0 and returns a
//! [`RunningApp`] with one method per endpoint. [`TestEnv::command`] gives a `Command` for
//! the real binary with the same settings, for tests that kill processes. Data is read back
//! through the same `Store`/`Queue` implementations, or plain SQL.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Parser;
use nsready::app::{App, Role};
use nsready::config::Settings;
use nsready::queue::jetstream::{self, JetStreamOptions};
use nsready::queue::{DeadLetter, EmbeddedQueue, JetStreamQueue, Queue, QueueStats};
use nsready::shutdown::Shutdown;
use nsready::store::{PostgresStore, SqliteStore, Store};
use reqwest::StatusCode;
use serde_json::Value;

use super::servers::{NatsCluster, NatsServer, Postgres};

/// Which deployment a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ScaleOut,
    Embedded,
    /// Scale-out on a PostgreSQL with TimescaleDB preloaded (`ingest_events` a hypertable).
    ScaleOutTimescale,
}

#[derive(Parser)]
#[command(args_override_self = true)]
struct SettingsOnly {
    #[command(flatten)]
    settings: Settings,
}

/// One row of `ingest_events`, as tests compare it.
#[derive(Clone, Debug, PartialEq)]
pub struct RowView {
    pub time: DateTime<Utc>,
    pub device_id: String,
    pub parameter_key: String,
    pub value: Option<f64>,
    pub quality: i64,
    pub source: Option<String>,
    pub event_id: Option<String>,
    pub attributes: Value,
}

/// Backends of one deployment plus the settings that point at them.
pub struct TestEnv {
    pub kind: Kind,
    pub nats: Option<NatsServer>,
    /// The three-node NATS cluster of [`TestEnv::new_cluster`] (then `nats` is `None`).
    pub cluster: Option<NatsCluster>,
    pub pg: Option<Postgres>,
    pub db_url: Option<String>,
    /// DATA_DIR in embedded mode (also a scratch dir in scale-out mode).
    pub dir: tempfile::TempDir,
    /// Settings every app of this env gets (before the test's own).
    base: Vec<String>,
}

impl TestEnv {
    /// Starts the backends. Blocks (servers start synchronously).
    pub fn new(kind: Kind) -> TestEnv {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut base = Self::base_args();
        let (nats, pg, db_url) = match kind {
            Kind::ScaleOut | Kind::ScaleOutTimescale => {
                let nats = NatsServer::start();
                let pg = if kind == Kind::ScaleOutTimescale {
                    Postgres::start_timescale()
                } else {
                    Postgres::start()
                };
                let db_url = pg.create_database("nsready_test");
                base.extend([
                    "--nats-url".into(),
                    nats.url(),
                    "--database-url".into(),
                    db_url.clone(),
                ]);
                (Some(nats), Some(pg), Some(db_url))
            }
            Kind::Embedded => {
                base.extend(["--data-dir".into(), dir.path().display().to_string()]);
                (None, None, None)
            }
        };
        TestEnv {
            kind,
            nats,
            cluster: None,
            pg,
            db_url,
            dir,
            base,
        }
    }

    /// Scale-out on a three-node NATS cluster: `--nats-url` lists all three nodes and the
    /// streams are created with `--stream-replicas 3`. Blocks until the cluster has formed.
    pub fn new_cluster() -> TestEnv {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut base = Self::base_args();
        let cluster = NatsCluster::start();
        let pg = Postgres::start();
        let db_url = pg.create_database("nsready_test");
        base.extend([
            "--nats-url".into(),
            cluster.urls(),
            "--stream-replicas".into(),
            "3".into(),
            // A delivery whose ack died with a killed consumer leader comes back after the
            // ack wait; keep it short. In the base, so that the env's own queue handles
            // (`queue_stats`, `dead_letters`) see no drift to "repair".
            "--worker-ack-wait".into(),
            "5".into(),
            "--database-url".into(),
            db_url.clone(),
        ]);
        TestEnv {
            kind: Kind::ScaleOut,
            nats: None,
            cluster: Some(cluster),
            pg: Some(pg),
            db_url: Some(db_url),
            dir,
            base,
        }
    }

    /// The NATS URL(s) of the scale-out backends (comma-separated for a cluster).
    pub fn nats_url(&self) -> String {
        match (&self.nats, &self.cluster) {
            (Some(nats), _) => nats.url(),
            (None, Some(cluster)) => cluster.urls(),
            (None, None) => panic!("no NATS in an embedded env"),
        }
    }

    /// Settings shared by every deployment: fast batches and retries, port 0, debug logs.
    fn base_args() -> Vec<String> {
        [
            "--worker-batch-timeout",
            "0.05",
            "--worker-retry-delay",
            "0.2",
            "--worker-max-retries",
            "3",
            "--worker-pool-size",
            "2",
            "--publish-timeout",
            "2",
            "--db-connect-retries",
            "3",
            "--db-connect-delay",
            "0.5",
            "--nats-connect-retries",
            "3",
            "--nats-connect-delay",
            "0.5",
            "--db-timeout",
            "2",
            "--service-host",
            "127.0.0.1",
            "--service-port",
            "0",
            "--log-level",
            "nsready=debug,warn",
            "--log-format",
            "pretty",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Settings = base + `extra` flags.
    pub fn settings(&self, extra: &[&str]) -> Settings {
        let mut args = vec!["nsready".to_string()];
        args.extend(self.base.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        SettingsOnly::try_parse_from(args)
            .expect("test settings parse")
            .settings
    }

    /// Builds and runs the app in this process.
    pub async fn start(&self, role: Role, extra: &[&str]) -> RunningApp {
        crate::support::init_logs();
        let settings = self.settings(extra);
        let shutdown = Shutdown::new();
        let app = App::build(&settings, role, shutdown.clone())
            .await
            .expect("app builds");
        let port = app.port();
        let handle = tokio::spawn(app.run_until_stopped());
        RunningApp {
            port,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("http client"),
            shutdown,
            handle: Some(handle),
        }
    }

    /// The real binary: `sub`command, this env's settings, then `extra` (which win).
    pub fn command(&self, sub: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nsready"));
        c.arg(sub).args(&self.base).args(extra);
        c
    }

    /// A store handle on the same database.
    pub async fn with_store<T>(&self, f: impl AsyncStoreFn<T>) -> T {
        match self.kind {
            Kind::ScaleOut | Kind::ScaleOutTimescale => {
                let url = self.db_url.as_ref().expect("db url");
                let pg = nsready::config::PgConnect::from_url(url).expect("pg url");
                let s = PostgresStore::connect(&pg, 2, Duration::from_secs(5)).expect("store");
                f.call(s).await
            }
            Kind::Embedded => {
                let s =
                    SqliteStore::open(&self.dir.path().join("nsready.db")).expect("sqlite store");
                f.call(s).await
            }
        }
    }

    /// Imports the demo registry.
    pub async fn import_demo(&self) {
        self.with_store(ImportDemo).await;
    }

    /// Number of rows in `ingest_events`.
    pub async fn row_count(&self) -> u64 {
        self.with_store(CountRows).await
    }

    /// Every row of `ingest_events`, ordered by key.
    pub fn rows(&self) -> Vec<RowView> {
        match self.kind {
            Kind::ScaleOut | Kind::ScaleOutTimescale => {
                let pg = self.pg.as_ref().expect("pg");
                let out = pg.psql(
                    "nsready_test",
                    "SELECT coalesce(json_agg(json_build_object('time', to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                     'device_id', device_id, 'parameter_key', parameter_key, 'value', value, 'quality', quality, 'source', source, \
                     'event_id', event_id, 'attributes', attributes) ORDER BY time, device_id, parameter_key), '[]') FROM ingest_events",
                );
                parse_rows(&out)
            }
            Kind::Embedded => {
                let conn = rusqlite::Connection::open(self.dir.path().join("nsready.db"))
                    .expect("open sqlite");
                let mut st = conn
                    .prepare("SELECT time, device_id, parameter_key, value, quality, source, event_id, attributes FROM ingest_events ORDER BY time, device_id, parameter_key")
                    .expect("prepare");
                let rows = st
                    .query_map([], |r| {
                        Ok(serde_json::json!({
                            "time": r.get::<_, String>(0)?, "device_id": r.get::<_, String>(1)?,
                            "parameter_key": r.get::<_, String>(2)?, "value": r.get::<_, Option<f64>>(3)?,
                            "quality": r.get::<_, i64>(4)?, "source": r.get::<_, Option<String>>(5)?,
                            "event_id": r.get::<_, Option<String>>(6)?,
                            "attributes": serde_json::from_str::<Value>(&r.get::<_, String>(7)?).unwrap_or(Value::Null),
                        }))
                    })
                    .expect("query")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("rows");
                parse_rows(&Value::Array(rows).to_string())
            }
        }
    }

    /// Makes the store itself refuse any row with this value (a CHECK constraint in
    /// PostgreSQL, a trigger in SQLite): poison that only the database can see.
    pub fn refuse_value_in_store(&self, value: f64) {
        match self.kind {
            Kind::ScaleOut | Kind::ScaleOutTimescale => {
                self.pg.as_ref().expect("pg").psql(
                    "nsready_test",
                    &format!(
                        "ALTER TABLE ingest_events ADD CONSTRAINT test_poison \
                         CHECK (value IS DISTINCT FROM {value})"
                    ),
                );
            }
            Kind::Embedded => {
                let conn = rusqlite::Connection::open(self.dir.path().join("nsready.db"))
                    .expect("open sqlite");
                conn.execute_batch(&format!(
                    "CREATE TRIGGER test_poison BEFORE INSERT ON ingest_events \
                     WHEN NEW.value = {value} BEGIN SELECT RAISE(ABORT, 'test poison'); END;"
                ))
                .expect("create trigger");
            }
        }
    }

    /// Runs one SQL query returning a single integer (`SELECT count(*) ...`).
    pub fn count(&self, sql: &str) -> i64 {
        match self.kind {
            Kind::ScaleOut | Kind::ScaleOutTimescale => self
                .pg
                .as_ref()
                .expect("pg")
                .psql("nsready_test", sql)
                .parse()
                .expect("integer"),
            Kind::Embedded => {
                let conn = rusqlite::Connection::open(self.dir.path().join("nsready.db"))
                    .expect("open sqlite");
                conn.query_row(sql, [], |r| r.get(0)).expect("count query")
            }
        }
    }

    /// Rows of a SCADA view for one device, ordered by key (device_id, parameter_key, value).
    pub fn view_rows(&self, view: &str) -> Vec<(String, Option<f64>)> {
        let sql = format!("SELECT parameter_key, value FROM {view} ORDER BY parameter_key, time");
        match self.kind {
            Kind::ScaleOut | Kind::ScaleOutTimescale => {
                let out = self.pg.as_ref().expect("pg").psql("nsready_test", &sql);
                out.lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| {
                        let (k, v) = l.split_once('|').expect("two columns");
                        (k.to_string(), v.parse().ok())
                    })
                    .collect()
            }
            Kind::Embedded => {
                let conn = rusqlite::Connection::open(self.dir.path().join("nsready.db"))
                    .expect("open sqlite");
                let mut st = conn.prepare(&sql).expect("prepare");
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .expect("query")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("rows")
            }
        }
    }

    /// The DLQ and the queue's counters, read through the real queue implementation.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.with_queue(|q| async move { q.dlq_list(0, 100_000).await.expect("dlq list") })
            .await
    }

    /// Queue counters.
    pub async fn queue_stats(&self) -> QueueStats {
        self.with_queue(|q| async move { q.stats().await.expect("stats") })
            .await
    }

    async fn with_queue<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce(AnyQueue) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        match self.kind {
            Kind::ScaleOut | Kind::ScaleOutTimescale => {
                let s = self.settings(&[]);
                let url = self.nats_url();
                let client = jetstream::connect(&url, &s.nats)
                    .await
                    .expect("nats connect");
                let mut opts = JetStreamOptions::from_settings(&s);
                // An observer: never rewrite the settings the app under test gave the consumer.
                opts.manage_config = false;
                let q = JetStreamQueue::provision(client, opts)
                    .await
                    .expect("provision");
                f(AnyQueue::Js(Box::new(q))).await
            }
            Kind::Embedded => {
                let s = self.settings(&[]);
                let q = EmbeddedQueue::open(
                    &self.queue_path(),
                    nsready::app::embedded_queue_options(&s),
                )
                .expect("open embedded queue");
                f(AnyQueue::Embedded(q)).await
            }
        }
    }

    fn queue_path(&self) -> PathBuf {
        self.dir.path().join("queue.db")
    }
}

/// Either queue, for read-only inspection in tests.
pub enum AnyQueue {
    Js(Box<JetStreamQueue>),
    Embedded(EmbeddedQueue),
}

impl AnyQueue {
    pub async fn dlq_list(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, nsready::queue::QueueError> {
        match self {
            AnyQueue::Js(q) => q.dlq_list(from, limit).await,
            AnyQueue::Embedded(q) => q.dlq_list(from, limit).await,
        }
    }
    pub async fn stats(&self) -> Result<QueueStats, nsready::queue::QueueError> {
        match self {
            AnyQueue::Js(q) => q.stats().await,
            AnyQueue::Embedded(q) => q.stats().await,
        }
    }
    pub async fn publish_raw(&self, payload: &[u8]) {
        let msg = nsready::queue::Outgoing {
            msg_id: uuid::Uuid::new_v4().to_string(),
            trace_id: uuid::Uuid::new_v4().to_string(),
            payload: bytes::Bytes::copy_from_slice(payload),
        };
        match self {
            AnyQueue::Js(q) => q.publish(msg).await.map(|_| ()),
            AnyQueue::Embedded(q) => q.publish(msg).await.map(|_| ()),
        }
        .expect("raw publish");
    }
}

impl TestEnv {
    /// Publishes bytes straight to the ingest subject, bypassing the collector (another
    /// producer).
    pub async fn publish_raw(&self, payload: &[u8]) {
        let p = payload.to_vec();
        self.with_queue(|q| async move { q.publish_raw(&p).await })
            .await
    }
}

fn parse_rows(json: &str) -> Vec<RowView> {
    let v: Value = serde_json::from_str(json).expect("rows json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|r| RowView {
            time: r["time"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("time"),
            device_id: r["device_id"].as_str().expect("device").to_string(),
            parameter_key: r["parameter_key"].as_str().expect("key").to_string(),
            value: r["value"].as_f64(),
            quality: r["quality"].as_i64().expect("quality"),
            source: r["source"].as_str().map(str::to_string),
            event_id: r["event_id"].as_str().map(str::to_string),
            attributes: r["attributes"].clone(),
        })
        .collect()
}

/// A store closure (generic over the store type).
pub trait AsyncStoreFn<T> {
    fn call<S: Store>(self, s: S) -> impl std::future::Future<Output = T>;
}

struct ImportDemo;
impl AsyncStoreFn<()> for ImportDemo {
    async fn call<S: Store>(self, s: S) {
        s.migrate().await.expect("migrate");
        s.import_registry(&nsready::registry::demo())
            .await
            .expect("import demo");
    }
}

struct CountRows;
impl AsyncStoreFn<u64> for CountRows {
    async fn call<S: Store>(self, s: S) -> u64 {
        s.count_rows().await.expect("count rows")
    }
}

/// Imports a registry document.
pub struct Import(pub nsready::registry::RegistryDoc);
impl AsyncStoreFn<()> for Import {
    async fn call<S: Store>(self, s: S) {
        s.migrate().await.expect("migrate");
        s.import_registry(&self.0).await.expect("import");
    }
}

/// The app running in this process.
pub struct RunningApp {
    pub port: u16,
    pub base: String,
    pub http: reqwest::Client,
    shutdown: Shutdown,
    handle: Option<tokio::task::JoinHandle<Result<(), nsready::app::AppError>>>,
}

impl RunningApp {
    /// POSTs one event; returns status, headers and JSON body.
    pub async fn post_event(&self, body: &Value) -> (StatusCode, Value) {
        self.post(
            "/v1/ingest",
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    }

    /// POSTs raw bytes with a content type.
    pub async fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let r = self.post_full(path, content_type, body).await;
        (r.0, r.2)
    }

    /// POSTs raw bytes; returns status, headers and JSON body (Null when not JSON).
    pub async fn post_full(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POSTs a JSON array to the batch endpoint.
    pub async fn post_batch(&self, events: &[Value]) -> (StatusCode, Value) {
        self.post(
            "/v1/ingest/batch",
            "application/json",
            Value::Array(events.to_vec()).to_string().into_bytes(),
        )
        .await
    }

    /// GET /v1/health.
    pub async fn health(&self) -> Value {
        self.http
            .get(format!("{}/v1/health", self.base))
            .send()
            .await
            .expect("health")
            .json()
            .await
            .expect("health json")
    }

    /// GET /metrics as text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Stops the app and waits for it (clean stop).
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
        }
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Waits until the process at `base` (`http://127.0.0.1:PORT`) answers `/v1/ready` with 200.
pub async fn wait_ready(base: &str) {
    let url = format!("{base}/v1/ready");
    wait_until("the process is ready", Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        }
    })
    .await;
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A value from the Prometheus text: the sample named exactly `series` (with labels).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}
