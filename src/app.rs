//! Wiring: builds a role (serve, collector, worker) for the configured deployment and runs it.
//!
//! This and `config.rs` are the only places that know which deployment runs: here the
//! queue and store implementations are chosen and opened, migrations applied, the worker
//! pool spawned and the HTTP listener bound. Everything downstream is generic over
//! `Q: Queue` and `S: Store`. `App::build` validates the settings, binds (port 0 allowed)
//! and reports the real port; `run_until_stopped` serves (`collector::serve`) until the
//! shutdown handle fires, then drains HTTP and the workers within one SHUTDOWN_TIMEOUT.

use std::future::Future;
use std::pin::Pin;

use tokio::net::TcpListener;

use crate::collector::auth::{self, Auth};
use crate::collector::rate::DeviceLimiter;
use crate::collector::serve::ServerLimits;
use crate::collector::{self, Collector, HttpSettings};
use crate::config::{Deployment, Settings};
use crate::metrics::Metrics;
use crate::queue::embedded::EmbeddedQueueOptions;
use crate::queue::jetstream::{self, JetStreamOptions};
use crate::queue::{EmbeddedQueue, JetStreamQueue, Queue, QueueError};
use crate::shutdown::Shutdown;
use crate::store::sqlite::retention;
use crate::store::{PostgresStore, SqliteStore, Store, StoreError};
use crate::worker::WorkerPool;

/// Embedded queue file inside DATA_DIR.
pub const QUEUE_FILE: &str = "queue.db";
/// Embedded store file inside DATA_DIR.
pub const STORE_FILE: &str = "nsready.db";
/// Lock file inside DATA_DIR: one `nsready serve` per directory.
pub const LOCK_FILE: &str = "nsready.lock";

/// Options of the embedded queue from the settings.
pub fn embedded_queue_options(settings: &Settings) -> EmbeddedQueueOptions {
    EmbeddedQueueOptions {
        max_msgs: settings.embedded.embedded_queue_max_msgs,
        max_bytes: settings.embedded.embedded_queue_max_bytes,
        ack_wait: settings.worker.worker_ack_wait,
        duplicate_window: settings.queue.duplicate_window,
        publish_timeout: settings.queue.publish_timeout,
    }
}

/// An exclusive lock on DATA_DIR (flock on a lock file), released on drop or process death.
#[derive(Debug)]
pub struct DataDirLock {
    /// Held open: closing the file releases the lock.
    _file: std::fs::File,
}

impl DataDirLock {
    /// Creates DATA_DIR if needed (0700, its files 0600; looser modes of an existing one are
    /// tightened with a warning) and takes the lock without waiting.
    ///
    /// # Errors
    /// `Refused` naming the directory when it cannot be created or another process holds it.
    pub fn acquire(dir: &std::path::Path) -> Result<DataDirLock, AppError> {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        crate::private_fs::create_dir(dir).map_err(|e| {
            AppError::Refused(format!("DATA_DIR {} cannot be created: {e}", dir.display()))
        })?;
        // An existing DATA_DIR with looser permissions is tightened, with a warning: the
        // files hold every reading and the registry (SECURITY.md).
        match crate::private_fs::tighten(dir, &[QUEUE_FILE, STORE_FILE, LOCK_FILE]) {
            Ok(changed) => {
                for (path, old) in changed {
                    tracing::warn!(path = %path.display(), old_mode = format!("{old:o}"),
                        "DATA_DIR: group/other could access this; permissions set to 0700 (directory) / 0600 (file)");
                }
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e,
                "DATA_DIR: cannot restrict permissions to the owner"),
        }
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .mode(crate::private_fs::FILE_MODE)
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                AppError::Refused(format!("DATA_DIR {} is not writable: {e}", dir.display()))
            })?;
        // Explicitly, not through the umask.
        use std::os::unix::fs::PermissionsExt;
        let _ = file.set_permissions(std::fs::Permissions::from_mode(
            crate::private_fs::FILE_MODE,
        ));
        // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(AppError::Refused(format!(
                "DATA_DIR {} is in use by another nsready process (pid {}); one process owns \
                 an embedded data directory",
                dir.display(),
                holder.trim()
            )));
        }
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        Ok(DataDirLock { _file: file })
    }
}

/// Which parts of the service this process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Collector and workers in one process (the default; the only role in embedded mode).
    Serve,
    /// HTTP ingest only.
    Collector,
    /// Workers only (plus health and metrics).
    Worker,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::Collector => "collector",
            Role::Worker => "worker",
        }
    }
    fn has_collector(self) -> bool {
        matches!(self, Role::Serve | Role::Collector)
    }
    fn has_workers(self) -> bool {
        matches!(self, Role::Serve | Role::Worker)
    }
}

/// Errors while building or running the service.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Tls(#[from] crate::collector::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

type Running = Pin<Box<dyn Future<Output = Result<(), AppError>> + Send>>;

/// A built service, listening, not yet serving.
pub struct App {
    port: u16,
    run: Running,
}

impl App {
    /// Opens queue and store for the configured deployment, migrates, binds the listener.
    ///
    /// # Errors
    /// Configuration errors (half-configured deployment, a role the deployment refuses),
    /// the queue or the store unreachable after the start-up retries, the port taken.
    pub async fn build(
        settings: &Settings,
        role: Role,
        shutdown: Shutdown,
    ) -> Result<App, AppError> {
        if role.has_collector() {
            settings.validate()?;
            auth::protected_mode(&settings.http).map_err(|e| AppError::Refused(e.to_string()))?;
            for h in settings.mqtt.listen_hosts() {
                auth::check_exposure(settings.http.auth_mode(), h)
                    .map_err(|e| AppError::Refused(format!("MQTT_LISTEN: {e}")))?;
            }
        }
        let task = Assemble {
            settings,
            role,
            shutdown: shutdown.clone(),
        };
        let (mut app, lock) = open(settings, Purpose::Service(role), &shutdown, task).await?;
        if let Some(lock) = lock {
            // The embedded DATA_DIR lock lives as long as the service runs.
            let run = app.run;
            app.run = Box::pin(async move {
                let r = run.await;
                drop(lock);
                r
            });
        }
        Ok(app)
    }

    /// The port the HTTP listener is bound to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the shutdown handle fires, then drains within SHUTDOWN_TIMEOUT.
    ///
    /// # Errors
    /// The HTTP server failed.
    pub async fn run_until_stopped(self) -> Result<(), AppError> {
        self.run.await
    }
}

/// What a deployment is opened for; it decides the lock, the pool, the migrations and
/// who may rewrite the queue's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// A service role: DB_POOL_SIZE connections; processes with workers migrate (with the
    /// start-up retries) and own the stream and consumer settings.
    Service(Role),
    /// A CLI command: two connections (one statement at a time; two cover a command that
    /// reads while it writes); never rewrites a live consumer's settings with its own
    /// environment. Embedded: the queue file must exist (a wrong DATA_DIR is not an empty
    /// one to create), and `nsready serve` must not be running on it.
    Command,
}

/// The one place that opens queue and store for the configured deployment, for services
/// (`App::build`) and commands (`with_deployment`) alike, and runs `task` with them.
/// Returns the task's output and, in embedded mode, the DATA_DIR lock the caller holds for
/// as long as it uses the files.
async fn open<T: DeploymentTask>(
    settings: &Settings,
    purpose: Purpose,
    shutdown: &Shutdown,
    task: T,
) -> Result<(T::Output, Option<DataDirLock>), AppError> {
    settings.validate()?;
    match settings.deployment()? {
        Deployment::Embedded { data_dir } => {
            let queue_file = data_dir.join(QUEUE_FILE);
            match purpose {
                Purpose::Service(Role::Serve) => {}
                Purpose::Service(role) => {
                    return Err(AppError::Refused(format!(
                        "`nsready {}` needs the scale-out deployment: in embedded mode one \
                         process owns the files in DATA_DIR, so run `nsready serve` (or set \
                         NATS_URL and DATABASE_URL to run collectors and workers apart)",
                        role.name()
                    )));
                }
                Purpose::Command if !queue_file.exists() => {
                    return Err(AppError::Refused(format!(
                        "no nsready queue at {} (set DATA_DIR, or --data-dir, to the directory \
                         `nsready serve` uses)",
                        std::path::absolute(&queue_file)
                            .unwrap_or(queue_file)
                            .display()
                    )));
                }
                Purpose::Command => {}
            }
            let lock = DataDirLock::acquire(&data_dir).map_err(|e| match purpose {
                Purpose::Command => {
                    AppError::Refused(format!("{e}; stop `nsready serve` first for this command"))
                }
                Purpose::Service(_) => e,
            })?;
            let store = SqliteStore::open(&data_dir.join(STORE_FILE))?;
            store.migrate().await?;
            let queue = EmbeddedQueue::open(&queue_file, embedded_queue_options(settings))?;
            let out = task.run(queue, store.clone()).await?;
            if let Purpose::Service(_) = purpose {
                spawn_retention(settings, store, shutdown);
            }
            Ok((out, Some(lock)))
        }
        Deployment::ScaleOut { nats_url, pg } => {
            let client = jetstream::connect(&nats_url, &settings.nats).await?;
            let mut opts = JetStreamOptions::from_settings(settings);
            let (pool_size, migrate) = match purpose {
                Purpose::Service(role) => {
                    // Unacknowledged messages the consumer allows: what this process's
                    // workers hold at once (pool × batch), times 8 for the other worker
                    // processes on the same consumer and for NAKed messages waiting out
                    // their delay (they stay ack-pending); never below JetStreamOptions'
                    // 100,000.
                    opts.max_ack_pending = opts.max_ack_pending.max(
                        (settings.worker.worker_pool_size * settings.worker.worker_batch_size * 8)
                            as i64,
                    );
                    // Processes with workers own the stream and consumer settings (they use
                    // the ack wait); a collector creates what is missing but never rewrites.
                    opts.manage_config = role.has_workers();
                    (settings.db.db_pool_size, role.has_workers())
                }
                Purpose::Command => {
                    opts.manage_config = false;
                    (CLI_POOL_SIZE, false)
                }
            };
            let queue = JetStreamQueue::provision(client, opts)
                .await?
                .with_shutdown(shutdown);
            let store = PostgresStore::connect(&pg, pool_size, settings.db.db_timeout)?
                .with_timescale(settings.timescale.policy());
            if migrate {
                migrate_with_retries(&store, settings).await?;
            }
            Ok((task.run(queue, store).await?, None))
        }
    }
}

/// Starts the embedded retention loop when `EMBEDDED_RETENTION` is set (non-zero).
fn spawn_retention(settings: &Settings, store: SqliteStore, shutdown: &Shutdown) {
    let e = &settings.embedded;
    if let Some(keep) = e.embedded_retention.filter(|d| !d.is_zero()) {
        let policy = retention::RetentionPolicy {
            keep,
            interval: e.embedded_retention_interval,
            batch_rows: retention::BATCH_ROWS,
        };
        shutdown.spawn(retention::run(store, policy, shutdown.token()));
    }
}

/// PostgreSQL connections of a CLI command (see [`Purpose::Command`]).
const CLI_POOL_SIZE: usize = 2;

/// `App::build`'s work once queue and store are open.
struct Assemble<'a> {
    settings: &'a Settings,
    role: Role,
    shutdown: Shutdown,
}

impl DeploymentTask for Assemble<'_> {
    type Output = App;
    async fn run<Q: Queue, S: Store>(self, queue: Q, store: S) -> Result<App, AppError> {
        assemble(queue, store, self.settings, self.role, self.shutdown).await
    }
}

/// Applies migrations, retrying while the database is unreachable (it may start after us):
/// DB_CONNECT_RETRIES attempts, DB_CONNECT_DELAY apart (plus up to as much jitter, so
/// several workers restarted together do not knock in step).
async fn migrate_with_retries<S: Store>(store: &S, settings: &Settings) -> Result<(), AppError> {
    use backon::Retryable;
    // At least 1: `Settings::validate` refuses 0.
    let tries = settings.db.db_connect_retries;
    let policy = backon::ConstantBuilder::default()
        .with_delay(settings.db.db_connect_delay)
        .with_max_times(tries.saturating_sub(1) as usize)
        .with_jitter();
    let mut attempt = 0u32;
    (|| store.migrate())
        .retry(policy)
        .when(StoreError::is_transient)
        .notify(|e, _| {
            attempt += 1;
            tracing::warn!(attempt, tries, error = %e, "database not ready; retrying migrations");
        })
        .await
        .map_err(AppError::from)
}

/// Builds the generic service over a ready queue and store.
async fn assemble<Q: Queue, S: Store>(
    queue: Q,
    store: S,
    settings: &Settings,
    role: Role,
    shutdown: Shutdown,
) -> Result<App, AppError> {
    // Before anything is spawned: an unusable certificate stops the start.
    let tls = collector::tls::acceptor(&settings.http)?;
    let metrics = Metrics::new();
    let pool_state = if role.has_workers() {
        let pool = WorkerPool::new(
            queue.clone(),
            store.clone(),
            metrics.clone(),
            &settings.worker,
            settings.http.time_window(),
        );
        let state = pool.state();
        pool.spawn(&shutdown);
        Some(state)
    } else {
        None
    };
    let (auth, rate) = if role.has_collector() {
        let auth = auth::setup(&store, settings, &shutdown)
            .await
            .map_err(|e| AppError::Refused(e.to_string()))?;
        let rate = DeviceLimiter::from_settings(
            settings.http.ingest_rate_limit,
            settings.http.ingest_rate_burst,
        )
        .map(std::sync::Arc::new);
        if let Some(r) = &rate {
            r.spawn_pruning(&shutdown);
        }
        (auth, rate)
    } else {
        (Auth::Open, None)
    };
    let http = HttpSettings {
        max_body: settings.http.ingest_max_body_bytes,
        max_batch: settings.http.ingest_max_batch_bytes,
        window: settings.http.time_window(),
        body_timeout: settings.http.http_body_timeout,
        max_inflight: settings.http.http_max_inflight,
        max_inflight_bytes: settings.http.ingest_max_inflight_bytes,
        auth,
        rate,
        stall_after: settings.worker.stall_after,
        consumer_name: settings.nats.consumer_name.clone(),
        role: role.name(),
    };
    let pool_state = pool_state.map(|p| p as std::sync::Arc<dyn collector::WorkerHealth>);
    let state = Collector::new(queue, store, metrics, http, pool_state, shutdown.clone());
    if role.has_collector() {
        collector::mqtt::start(&state, settings, tls.clone(), &shutdown)
            .await
            .map_err(|(addr, source)| AppError::Bind { addr, source })?;
    }
    let router = collector::router(state, role.has_collector());
    let addr = format!(
        "{}:{}",
        settings.http.service_host, settings.http.service_port
    );
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| AppError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    tracing::info!(role = role.name(), port, tls = tls.is_some(), "listening");
    let limits = ServerLimits {
        header_timeout: settings.http.http_header_timeout,
        idle_timeout: settings.http.http_idle_timeout,
        max_connections: settings.http.http_max_connections,
        shutdown_timeout: settings.http.shutdown_timeout,
    };
    let run = Box::pin(serve(listener, router, limits, tls, shutdown));
    Ok(App { port, run })
}

/// Serves HTTP until shutdown fires, then gives HTTP and the workers one SHUTDOWN_TIMEOUT,
/// counted from the signal: in-flight requests finish (and so their publishes), workers
/// flush their batches; what is still open at the deadline is dropped, and this returns.
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ServerLimits,
    tls: Option<collector::tls::TlsAcceptor>,
    shutdown: Shutdown,
) -> Result<(), AppError> {
    let deadline = collector::serve::run(listener, router, limits, tls, &shutdown).await;
    tracing::info!("HTTP stopped; waiting for workers to flush their batches");
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if shutdown.drained(left).await {
        tracing::info!("clean stop");
    } else {
        tracing::warn!(
            timeout_secs = limits.shutdown_timeout.as_secs_f64(),
            "SHUTDOWN_TIMEOUT passed before every task finished; unacknowledged messages will be redelivered"
        );
    }
    Ok(())
}

/// Work that needs the queue and the store of the configured deployment (CLI commands).
pub trait DeploymentTask: Send {
    type Output: Send;
    /// Runs with opened handles.
    fn run<Q: Queue, S: Store>(
        self,
        queue: Q,
        store: S,
    ) -> impl Future<Output = Result<Self::Output, AppError>> + Send;
}

/// Work that needs only the store.
pub trait StoreTask: Send {
    type Output: Send;
    /// Runs with an opened store.
    fn run<S: Store>(self, store: S)
    -> impl Future<Output = Result<Self::Output, AppError>> + Send;
}

/// Opens the configured store (without migrating) and runs `task` with it.
///
/// # Errors
/// The configuration, the store, or the task failed.
pub async fn with_store<T: StoreTask>(settings: &Settings, task: T) -> Result<T::Output, AppError> {
    settings.validate()?;
    match settings.deployment()? {
        Deployment::Embedded { data_dir } => {
            // No lock: SQLite serialises writers itself, so registry commands work while
            // `nsready serve` runs (and the worker sees imports without a restart).
            let store = SqliteStore::open(&data_dir.join(STORE_FILE))?;
            task.run(store).await
        }
        Deployment::ScaleOut { pg, .. } => {
            let store = PostgresStore::connect(&pg, CLI_POOL_SIZE, settings.db.db_timeout)?
                .with_timescale(settings.timescale.policy());
            task.run(store).await
        }
    }
}

/// Where the configured store lives, for messages: the embedded file's path, or the
/// PostgreSQL database and host (never a password).
///
/// # Errors
/// The configuration is invalid.
pub fn store_location(settings: &Settings) -> Result<String, AppError> {
    Ok(match settings.deployment()? {
        Deployment::Embedded { data_dir } => {
            let file = data_dir.join(STORE_FILE);
            let file = std::path::absolute(&file).unwrap_or(file);
            format!("{}", file.display())
        }
        Deployment::ScaleOut { pg, .. } => {
            let db = pg.config.get_dbname().unwrap_or("postgres");
            let host = match pg.config.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                None => "localhost".into(),
            };
            format!("PostgreSQL database {db} on {host}")
        }
    })
}

/// As [`with_store`], for commands that only read: in embedded mode a `DATA_DIR` without a
/// store file is refused with its path (instead of creating an empty store there and
/// reporting "nothing").
///
/// # Errors
/// As [`with_store`], and `Refused` when the embedded store does not exist.
pub async fn with_existing_store<T: StoreTask>(
    settings: &Settings,
    task: T,
) -> Result<T::Output, AppError> {
    settings.validate()?;
    if let Deployment::Embedded { data_dir } = settings.deployment()? {
        let file = data_dir.join(STORE_FILE);
        if !file.exists() {
            return Err(AppError::Refused(format!(
                "no nsready store at {} (set DATA_DIR, or --data-dir, to the directory \
                 `nsready serve` uses)",
                std::path::absolute(&file).unwrap_or(file).display()
            )));
        }
    }
    with_store(settings, task).await
}

/// Opens the configured queue and store (without provisioning workers) and runs `task`.
///
/// # Errors
/// The configuration, queue, store, or the task failed.
pub async fn with_deployment<T: DeploymentTask>(
    settings: &Settings,
    task: T,
) -> Result<T::Output, AppError> {
    // The lock (embedded) is released when the command is done.
    let (out, _lock) = open(settings, Purpose::Command, &Shutdown::new(), task).await?;
    Ok(out)
}
