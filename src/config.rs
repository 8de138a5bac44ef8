//! Configuration: command-line flags and environment variables, parsed once.
//!
//! Every setting is a clap argument with `env = "…"` (names from DESIGN.md §8); this is the
//! only module that reads the environment. Raw strings become typed values here
//! (`Duration`, URLs, counts) and the deployment (`Deployment::Embedded` or
//! `Deployment::ScaleOut`) is resolved exactly once, in [`Settings::deployment`].

use std::path::PathBuf;

use clap::{Args, ValueEnum};

mod db;
mod duration;
mod embedded;
mod http;
mod mqtt;
mod nats;
mod queue;
mod secret;
mod secret_files;
mod timescale;
mod tls;
mod tools;
mod validate;
mod worker;

pub use db::{DbArgs, SslMode};
pub use duration::parse_duration;
pub use embedded::EmbeddedArgs;
pub use http::{HttpArgs, IngestAuth};
pub use mqtt::MqttArgs;
pub use nats::NatsArgs;
pub use queue::QueueArgs;
pub use secret::Secret;
pub use secret_files::{SECRET_FILES, read_secret};
pub use timescale::{TimescaleArgs, TimescalePolicy, Toggle};
pub use tls::PgTls;
pub use tools::{ServiceUrl, StatusThresholds};
pub use worker::{ValidationMode, WorkerArgs};

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
    /// A secret given both directly and as a `*_FILE`.
    #[error("{name} and {file_name} are both set; set one of them")]
    SecretFileConflict {
        name: &'static str,
        file_name: &'static str,
    },
    /// A `*_FILE` (or another file a setting names) that cannot be used; the content is
    /// never printed.
    #[error("{name}: cannot use {}: {reason}", path.display())]
    SecretFileUnreadable {
        name: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, readable text otherwise.
    Auto,
    Json,
    Pretty,
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
    pub queue: QueueArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub timescale: TimescaleArgs,
    #[command(flatten)]
    pub embedded: EmbeddedArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub mqtt: MqttArgs,
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
    /// `sslmode` / `sslrootcert` (tokio-postgres knows only part of them).
    pub tls: PgTls,
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
        let tls = PgTls {
            mode: d.db_sslmode.unwrap_or(SslMode::Prefer),
            root_cert: d.db_sslrootcert.clone(),
            root_cert_from: "DB_SSLROOTCERT",
        };
        if let Some(url) = d.database_url.as_ref().filter(|s| !s.0.trim().is_empty()) {
            return PgConnect::from_url_or(url.expose(), tls).map(Some);
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
        config.ssl_mode(tls.driver_mode());
        Ok(Some(PgConnect { config, tls }))
    }
}

/// Test builds only: [`Settings`] parsed from command-line arguments (without the program
/// name), as clap parses them in `nsready`, for the config modules' unit tests.
#[cfg(test)]
pub(crate) fn try_settings_from(args: &[&str]) -> Result<Settings, clap::Error> {
    use clap::Parser;
    #[derive(Parser)]
    struct Only {
        #[command(flatten)]
        settings: Settings,
    }
    let mut all = vec!["nsready"];
    all.extend_from_slice(args);
    Only::try_parse_from(all).map(|o| o.settings)
}

/// Test builds only: as [`try_settings_from`], panicking with clap's message when the
/// arguments do not parse.
#[cfg(test)]
pub(crate) fn settings_from(args: &[&str]) -> Settings {
    match try_settings_from(args) {
        Ok(s) => s,
        Err(e) => panic!("{args:?} should parse: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
