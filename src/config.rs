//! Configuration: command-line flags and environment variables, parsed once.
//!
//! Every setting is a clap argument with `env = "…"` (names from DESIGN.md §8); this is the
//! only module that reads the environment. Raw strings become typed values here
//! (`Duration`, URLs, counts) and the deployment (`Deployment::Embedded` or
//! `Deployment::ScaleOut`) is resolved exactly once, in [`Settings::deployment`].

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

mod tools;
mod validate;

pub use tools::{ServiceUrl, StatusThresholds};

/// Errors in the configuration; each names the variable to set or fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "half-configured deployment: the queue is {queue} but the store is {store}. \
         Set both {hint}, or neither (embedded single-node mode)"
    )]
    HalfConfigured {
        queue: &'static str,
        store: &'static str,
        hint: &'static str,
    },
    #[error("invalid value for {name}: {reason}")]
    Invalid { name: &'static str, reason: String },
    /// A secret set to the empty string (or only whitespace): refused rather than read as
    /// "not set" (an empty INGEST_AUTH_TOKEN used to turn authentication off). The value is
    /// never printed.
    #[error(
        "{name} is set but empty (or only whitespace); give it a value, or unset the variable{hint}"
    )]
    EmptySecret {
        name: &'static str,
        hint: &'static str,
    },
}

/// A secret string whose `Debug` and `Display` never print it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that hands it to a driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Longest duration any setting accepts (10 years): past it deadlines would overflow.
const MAX_DURATION_SECS: f64 = 10.0 * 365.0 * 86_400.0;

/// Parses a duration: a plain number is seconds (`0.5`, `30`, as the seed writes them), or a
/// number with a unit `ms`, `s`, `m`, `h`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let s = raw.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('d') {
        (n, 86_400.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration (examples: 0.5, 30, 250ms, 2m, 24h)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("`{raw}` must be a non-negative duration"));
    }
    let secs = value * mult;
    if secs > MAX_DURATION_SECS {
        return Err(format!("`{raw}` is longer than 10 years"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{raw}` is not a duration"))
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, readable text otherwise.
    Auto,
    Json,
    Pretty,
}

/// How strictly the worker checks events against the registry (DESIGN.md §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ValidationMode {
    /// Device exists and is active, project and site own it, every parameter exists.
    Strict,
    /// As strict, without the project/site ownership check.
    Lenient,
}

/// NATS JetStream connection and queue layout.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Queue: NATS JetStream (scale-out)")]
pub struct NatsArgs {
    /// NATS server URL (e.g. nats://127.0.0.1:4222), or a comma-separated list of a
    /// cluster's servers. Setting it (or NATS_HOST) selects the scale-out deployment.
    #[arg(long, env = "NATS_URL", global = true)]
    pub nats_url: Option<String>,
    /// NATS host (seed name); used when NATS_URL is not set.
    #[arg(long, env = "NATS_HOST", global = true)]
    pub nats_host: Option<String>,
    /// NATS port, with NATS_HOST.
    #[arg(long, env = "NATS_PORT", default_value_t = 4222, global = true)]
    pub nats_port: u16,
    /// NATS user (with NATS_PASSWORD).
    #[arg(long, env = "NATS_USER", global = true)]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(long, env = "NATS_PASSWORD", global = true, hide_env_values = true)]
    pub nats_password: Option<Secret>,
    /// NATS token.
    #[arg(long, env = "NATS_TOKEN", global = true, hide_env_values = true)]
    pub nats_token: Option<Secret>,
    /// Path to a NATS credentials file (.creds).
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,
    /// Require TLS towards NATS.
    #[arg(long, env = "NATS_TLS", global = true)]
    pub nats_tls: bool,
    /// Extra root certificate (PEM) to trust for NATS TLS.
    #[arg(long, env = "NATS_TLS_CA", global = true)]
    pub nats_tls_ca: Option<PathBuf>,
    /// Connection attempts at start before giving up (the seed's 10).
    #[arg(
        long,
        env = "NATS_CONNECT_RETRIES",
        default_value_t = 10,
        global = true
    )]
    pub nats_connect_retries: u32,
    /// Pause between connection attempts at start.
    #[arg(long, env = "NATS_CONNECT_DELAY", default_value = "2", value_parser = parse_duration, global = true)]
    pub nats_connect_delay: Duration,
    /// JetStream stream holding events to process.
    #[arg(long, env = "STREAM_NAME", default_value = "INGRESS", global = true)]
    pub stream_name: String,
    /// Subject the collector publishes to (the stream's only subject).
    #[arg(
        long,
        env = "QUEUE_SUBJECT",
        default_value = "ingress.events",
        global = true
    )]
    pub queue_subject: String,
    /// Durable pull consumer shared by every worker.
    #[arg(
        long,
        env = "CONSUMER_NAME",
        default_value = "ingest_workers",
        global = true
    )]
    pub consumer_name: String,
    /// Stream holding dead letters (limits retention).
    #[arg(long, env = "DLQ_STREAM", default_value = "INGRESS_DLQ", global = true)]
    pub dlq_stream: String,
    /// Subject of dead letters; must lie outside the INGRESS subject.
    #[arg(
        long,
        env = "DLQ_SUBJECT",
        default_value = "ingress.events.dlq",
        global = true
    )]
    pub dlq_subject: String,
    /// Stream replicas (3 in a production cluster).
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1, global = true)]
    pub stream_replicas: usize,
    /// Most messages the stream holds; beyond it ingest answers 503 (discard: new).
    #[arg(
        long,
        env = "STREAM_MAX_MSGS",
        default_value_t = 1_000_000,
        global = true
    )]
    pub stream_max_msgs: i64,
    /// Most bytes the stream holds; beyond it ingest answers 503.
    #[arg(long, env = "STREAM_MAX_BYTES", default_value_t = 1 << 30, global = true)]
    pub stream_max_bytes: i64,
    /// Oldest message the stream keeps; 0 (the default) = no age limit: an accepted event
    /// stays until a worker has committed or dead-lettered it, however long an outage
    /// lasts (the stream is bounded by STREAM_MAX_MSGS and STREAM_MAX_BYTES instead, and
    /// ingest answers 503 when they are reached). A non-zero value lets JetStream delete
    /// unprocessed messages older than it WITHOUT a dead letter: set one only if losing
    /// them is acceptable. Workers repair an existing stream's age limit to this value.
    #[arg(long, env = "STREAM_MAX_AGE", default_value = "0", value_parser = parse_duration, global = true)]
    pub stream_max_age: Duration,
    /// Window in which a repeated Nats-Msg-Id (a client retry) is stored once.
    #[arg(long, env = "DUPLICATE_WINDOW", default_value = "2m", value_parser = parse_duration, global = true)]
    pub duplicate_window: Duration,
    /// Longest wait for the queue's durable acknowledgement of a publish; past it ingest
    /// answers 503.
    #[arg(long, env = "PUBLISH_TIMEOUT", default_value = "5", value_parser = parse_duration, global = true)]
    pub publish_timeout: Duration,
}

/// PostgreSQL connection.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Store: PostgreSQL (scale-out)")]
pub struct DbArgs {
    /// PostgreSQL URL (postgres://user:pass@host:port/db). Setting it (or DB_HOST /
    /// POSTGRES_HOST) selects the scale-out deployment.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// PostgreSQL host (seed name).
    #[arg(long, env = "DB_HOST", global = true)]
    pub db_host: Option<String>,
    /// PostgreSQL host (alternative name).
    #[arg(long, env = "POSTGRES_HOST", global = true)]
    pub postgres_host: Option<String>,
    /// PostgreSQL port.
    #[arg(long, env = "DB_PORT", global = true)]
    pub db_port: Option<u16>,
    /// PostgreSQL port (alternative name).
    #[arg(long, env = "POSTGRES_PORT", global = true)]
    pub postgres_port: Option<u16>,
    /// Database name.
    #[arg(long, env = "POSTGRES_DB", default_value = "nsready", global = true)]
    pub postgres_db: String,
    /// Database user.
    #[arg(long, env = "POSTGRES_USER", default_value = "postgres", global = true)]
    pub postgres_user: String,
    /// Database password.
    #[arg(long, env = "POSTGRES_PASSWORD", global = true, hide_env_values = true)]
    pub postgres_password: Option<Secret>,
    /// Connections in the pool (per process).
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 8, global = true)]
    pub db_pool_size: usize,
    /// Longest wait for a pooled connection or a statement before the attempt counts as the
    /// database being unavailable.
    #[arg(long, env = "DB_TIMEOUT", default_value = "10", value_parser = parse_duration, global = true)]
    pub db_timeout: Duration,
    /// Start-up attempts to reach PostgreSQL (migrations) before giving up; the store's own,
    /// not NATS's (the seed's 10 tries, 2 s apart).
    #[arg(long, env = "DB_CONNECT_RETRIES", default_value_t = 10, global = true)]
    pub db_connect_retries: u32,
    /// Pause between the start-up attempts of DB_CONNECT_RETRIES.
    #[arg(long, env = "DB_CONNECT_DELAY", default_value = "2", value_parser = parse_duration, global = true)]
    pub db_connect_delay: Duration,
}

/// Embedded single-node mode.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Embedded queue and store (single node)")]
pub struct EmbeddedArgs {
    /// Directory of the embedded queue and store (single-node mode).
    #[arg(
        long,
        env = "DATA_DIR",
        default_value = "./nsready-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Most messages the embedded queue holds before ingest answers 503.
    #[arg(
        long,
        env = "EMBEDDED_QUEUE_MAX_MSGS",
        default_value_t = 1_000_000,
        global = true
    )]
    pub embedded_queue_max_msgs: u64,
    /// Most payload bytes the embedded queue holds before ingest answers 503.
    #[arg(long, env = "EMBEDDED_QUEUE_MAX_BYTES", default_value_t = 1 << 30, global = true)]
    pub embedded_queue_max_bytes: u64,
}

/// The worker pool.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Workers")]
pub struct WorkerArgs {
    /// Parallel workers per process, all on the one durable consumer.
    #[arg(long, env = "WORKER_POOL_SIZE", default_value_t = 4, global = true)]
    pub worker_pool_size: usize,
    /// Most messages a worker pulls and commits as one batch.
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = 500, global = true)]
    pub worker_batch_size: usize,
    /// Most payload bytes a worker pulls as one batch (besides WORKER_BATCH_SIZE); bounds a
    /// worker's memory by the limits, not by the content. 4 MiB: a full batch of typical
    /// events (500 × ~600 bytes) is far below it; a batch of the largest events decodes to
    /// about 5 × its bytes, times WORKER_POOL_SIZE workers. A batch always holds at least one
    /// message, however large (on JetStream the pull's byte budget is never below the
    /// server's max_payload).
    #[arg(long, env = "WORKER_BATCH_MAX_BYTES", default_value_t = 4 << 20, global = true)]
    pub worker_batch_max_bytes: usize,
    /// Longest a worker waits to fill a batch before committing what it has.
    #[arg(long, env = "WORKER_BATCH_TIMEOUT", default_value = "0.1", value_parser = parse_duration, global = true)]
    pub worker_batch_timeout: Duration,
    /// Deliveries a message may use for failures that belong to it (unknown device, …)
    /// before it is dead-lettered. Infrastructure failures never count.
    #[arg(long, env = "WORKER_MAX_RETRIES", default_value_t = 5, global = true)]
    pub worker_max_retries: u64,
    /// Time the queue waits for an ack before redelivering.
    #[arg(long, env = "WORKER_ACK_WAIT", default_value = "30", value_parser = parse_duration, global = true)]
    pub worker_ack_wait: Duration,
    /// First NAK delay for retryable failures; doubles per delivery, capped at 30 s.
    #[arg(long, env = "WORKER_RETRY_DELAY", default_value = "1", value_parser = parse_duration, global = true)]
    pub worker_retry_delay: Duration,
    /// Registry checks: strict or lenient (skips project/site ownership).
    #[arg(long, env = "VALIDATION_MODE", value_enum, default_value_t = ValidationMode::Strict, global = true)]
    pub validation_mode: ValidationMode,
    /// Periodic registry cache refresh (a miss also refreshes, at most once per second).
    #[arg(long, env = "REGISTRY_REFRESH_INTERVAL", default_value = "30", value_parser = parse_duration, global = true)]
    pub registry_refresh_interval: Duration,
    /// Health reports `degraded` when the queue is not empty and nothing was committed for
    /// this long.
    #[arg(long, env = "STALL_AFTER", default_value = "60", value_parser = parse_duration, global = true)]
    pub stall_after: Duration,
    /// Fault injection for tests: `crash-after-commit` aborts the process after the first
    /// batch commit, before its acks (proves redelivery adds no rows). Exists only in builds
    /// with the `test-failpoints` feature (the test suite's); a release build has no such
    /// setting.
    #[cfg(feature = "test-failpoints")]
    #[arg(long, env = "NSREADY_FAILPOINT", hide = true, global = true)]
    pub failpoint: Option<String>,
}

impl WorkerArgs {
    /// True when the `crash-after-commit` failpoint is set (never without the
    /// `test-failpoints` feature).
    pub fn crash_after_commit(&self) -> bool {
        #[cfg(feature = "test-failpoints")]
        {
            self.failpoint.as_deref() == Some("crash-after-commit")
        }
        #[cfg(not(feature = "test-failpoints"))]
        {
            false
        }
    }
}

/// HTTP service.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "HTTP service and ingest limits")]
pub struct HttpArgs {
    /// Port for ingest, health, readiness and metrics.
    #[arg(long, env = "SERVICE_PORT", default_value_t = 8001, global = true)]
    pub service_port: u16,
    /// Address to listen on.
    #[arg(long, env = "SERVICE_HOST", default_value = "0.0.0.0", global = true)]
    pub service_host: String,
    /// Largest request body for /v1/ingest (bytes); larger gets 413.
    #[arg(long, env = "INGEST_MAX_BODY_BYTES", default_value_t = 1 << 20, global = true)]
    pub ingest_max_body_bytes: usize,
    /// Largest (decompressed) request body for /v1/ingest/batch (bytes).
    #[arg(long, env = "INGEST_MAX_BATCH_BYTES", default_value_t = 16 << 20, global = true)]
    pub ingest_max_batch_bytes: usize,
    /// When set, ingest requires `Authorization: Bearer <token>`; otherwise 401.
    #[arg(long, env = "INGEST_AUTH_TOKEN", global = true, hide_env_values = true)]
    pub ingest_auth_token: Option<Secret>,
    /// Time allowed for a clean stop after SIGTERM, counted from the signal: HTTP stops
    /// accepting and finishes in-flight requests, workers flush their batches; connections
    /// still open at the end (a client stalled in a body) are dropped and the process exits.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30", value_parser = parse_duration, global = true)]
    pub shutdown_timeout: Duration,
    /// Longest time from the first byte of a request to the end of its headers; a slower
    /// client is disconnected (no answer: it has not said what it wants yet).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10", value_parser = parse_duration, global = true)]
    pub http_header_timeout: Duration,
    /// Longest time to receive a whole request body, counted from the end of the headers;
    /// past it the answer is 408 and nothing is queued.
    #[arg(long, env = "HTTP_BODY_TIMEOUT", default_value = "30", value_parser = parse_duration, global = true)]
    pub http_body_timeout: Duration,
    /// A connection with no request in progress and nothing received for this long (after
    /// connecting, or between keep-alive requests) is closed.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT", default_value = "60", value_parser = parse_duration, global = true)]
    pub http_idle_timeout: Duration,
    /// Most open client connections; at the cap the server stops accepting and new
    /// connections wait in the listen backlog until an open one closes.
    #[arg(
        long,
        env = "HTTP_MAX_CONNECTIONS",
        default_value_t = 1024,
        global = true
    )]
    pub http_max_connections: usize,
    /// Most ingest requests handled at once (both ingest routes together); past it 503 with
    /// Retry-After. Health, readiness and metrics are not counted.
    #[arg(long, env = "HTTP_MAX_INFLIGHT", default_value_t = 256, global = true)]
    pub http_max_inflight: usize,
    /// Most bytes of request bodies held at once by all ingest requests together (a request
    /// holds the bytes it received so far, plus room for the inflated copy of a gzip body);
    /// past it 503 with Retry-After. At least twice INGEST_MAX_BATCH_BYTES.
    #[arg(long, env = "INGEST_MAX_INFLIGHT_BYTES", default_value_t = 128 << 20, global = true)]
    pub ingest_max_inflight_bytes: usize,
    /// Latest accepted `source_timestamp`, ahead of the server's clock (400 beyond; 0 = no
    /// bound). A far-future reading would otherwise stay the "latest" value for ever.
    #[arg(long, env = "INGEST_MAX_FUTURE", default_value = "24h", value_parser = parse_duration, global = true)]
    pub ingest_max_future: Duration,
    /// Earliest accepted `source_timestamp`, behind the server's clock (400 beyond; 0 = no
    /// bound, the default: offline devices and backfills send old readings).
    #[arg(long, env = "INGEST_MAX_PAST", default_value = "0", value_parser = parse_duration, global = true)]
    pub ingest_max_past: Duration,
}

impl HttpArgs {
    /// The time window of `INGEST_MAX_FUTURE` / `INGEST_MAX_PAST` (0 = unbounded).
    pub fn time_window(&self) -> crate::event::TimeWindow {
        let bound = |d: Duration| {
            (!d.is_zero())
                .then(|| chrono::Duration::from_std(d).ok())
                .flatten()
        };
        crate::event::TimeWindow {
            max_future: bound(self.ingest_max_future),
            max_past: bound(self.ingest_max_past),
        }
    }
}

/// Logging.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, env = "LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub log_format: LogFormat,
}

/// Every setting, as one struct that each subcommand receives.
#[derive(Args, Clone, Debug)]
pub struct Settings {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub embedded: EmbeddedArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Where the queue and the store live: decided once from the settings.
#[derive(Clone, Debug)]
pub enum Deployment {
    /// Embedded durable queue and SQLite store in `data_dir`; one process owns them.
    Embedded { data_dir: PathBuf },
    /// NATS JetStream and PostgreSQL.
    ScaleOut {
        nats_url: String,
        pg: Box<PgConnect>,
    },
}

/// Resolved PostgreSQL connection parameters.
#[derive(Clone, Debug)]
pub struct PgConnect {
    pub config: tokio_postgres::Config,
}

impl Settings {
    /// Resolves the deployment: both external, or both embedded.
    ///
    /// # Errors
    /// `HalfConfigured` naming what to set when only one of queue and store is external;
    /// `Invalid` when a URL does not parse.
    pub fn deployment(&self) -> Result<Deployment, ConfigError> {
        let nats = self.nats_url();
        let pg = self.pg_connect()?;
        match (nats, pg) {
            (None, None) => Ok(Deployment::Embedded {
                data_dir: self.embedded.data_dir.clone(),
            }),
            (Some(nats_url), Some(pg)) => Ok(Deployment::ScaleOut {
                nats_url,
                pg: Box::new(pg),
            }),
            (Some(_), None) => Err(ConfigError::HalfConfigured {
                queue: "external (NATS_URL/NATS_HOST is set)",
                store: "embedded",
                hint: "DATABASE_URL (or DB_HOST/POSTGRES_HOST)",
            }),
            (None, Some(_)) => Err(ConfigError::HalfConfigured {
                queue: "embedded",
                store: "external (DATABASE_URL/DB_HOST/POSTGRES_HOST is set)",
                hint: "NATS_URL (or NATS_HOST)",
            }),
        }
    }

    /// The NATS URL from NATS_URL, or NATS_HOST and NATS_PORT.
    fn nats_url(&self) -> Option<String> {
        let n = &self.nats;
        if let Some(url) = n.nats_url.as_deref().filter(|s| !s.trim().is_empty()) {
            return Some(url.to_string());
        }
        n.nats_host
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|h| format!("nats://{h}:{}", n.nats_port))
    }

    /// PostgreSQL parameters from DATABASE_URL, or the seed's DB_HOST / POSTGRES_* names.
    fn pg_connect(&self) -> Result<Option<PgConnect>, ConfigError> {
        let d = &self.db;
        if let Some(url) = d.database_url.as_ref().filter(|s| !s.0.trim().is_empty()) {
            let config: tokio_postgres::Config =
                url.expose()
                    .parse()
                    .map_err(|e: tokio_postgres::Error| ConfigError::Invalid {
                        name: "DATABASE_URL",
                        reason: format!("not a PostgreSQL URL ({e})"),
                    })?;
            return Ok(Some(PgConnect { config }));
        }
        let host = d
            .db_host
            .as_deref()
            .or(d.postgres_host.as_deref())
            .filter(|s| !s.trim().is_empty());
        let Some(host) = host else {
            return Ok(None);
        };
        let mut config = tokio_postgres::Config::new();
        config
            .host(host)
            .port(d.db_port.or(d.postgres_port).unwrap_or(5432))
            .dbname(&d.postgres_db)
            .user(&d.postgres_user);
        if let Some(pw) = &d.postgres_password {
            config.password(pw.expose());
        }
        Ok(Some(PgConnect { config }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_seed_seconds_and_units() {
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("1e300d").is_err());
        // Huge values are refused, not a panic or an overflowing deadline.
        assert!(parse_duration("1e30").is_err());
        assert!(parse_duration("99999999999h").is_err());
        assert!(parse_duration("NaN").is_err());
    }

    #[test]
    fn secrets_never_print() {
        let s: Secret = "hunter2".parse().unwrap_or_default();
        assert_eq!(format!("{s:?}"), "***");
    }
}
