//! PostgreSQL settings (scale-out store).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{Secret, parse_duration};

/// PostgreSQL connection.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Store: PostgreSQL (scale-out)")]
pub struct DbArgs {
    /// PostgreSQL URL (postgres://user:pass@host:port/db). Setting it (or DB_HOST /
    /// POSTGRES_HOST) selects the scale-out deployment.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<Secret>,
    /// File holding DATABASE_URL (container secrets; one trailing newline is stripped).
    #[arg(long, env = "DATABASE_URL_FILE", global = true)]
    pub database_url_file: Option<PathBuf>,
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
    /// File holding POSTGRES_PASSWORD (container secrets; one trailing newline is stripped).
    #[arg(long, env = "POSTGRES_PASSWORD_FILE", global = true)]
    pub postgres_password_file: Option<PathBuf>,
    /// TLS towards PostgreSQL, as libpq's sslmode: disable, prefer (TLS when the server
    /// offers it, unverified; the default), require (TLS, unverified unless a root
    /// certificate is given), verify-ca (chain to a trusted root), verify-full (chain and
    /// host name). An `sslmode` in DATABASE_URL wins over it.
    #[arg(long, env = "DB_SSLMODE", value_enum, global = true)]
    pub db_sslmode: Option<SslMode>,
    /// Root certificate(s) (PEM) trusted for PostgreSQL TLS; without it the verifying modes
    /// use the system's roots. An `sslrootcert` in DATABASE_URL wins over it.
    #[arg(long, env = "DB_SSLROOTCERT", global = true)]
    pub db_sslrootcert: Option<PathBuf>,
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

/// libpq's `sslmode` (what each checks: see `DB_SSLMODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}
