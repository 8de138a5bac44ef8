//! Embedded single-node settings (DATA_DIR, queue bounds, retention) and the edge box's
//! service-manager hook (NOTIFY_SOCKET).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::parse_duration;

/// Embedded single-node mode.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Embedded queue and store (single node)")]
pub struct EmbeddedArgs {
    /// Directory of the embedded queue and store (single-node mode). Created 0700 with its
    /// files 0600, whatever the umask; looser modes of an existing one are tightened at
    /// start (with a warning).
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
    /// Embedded store retention: rows of `ingest_events` (by reading time) and of
    /// `error_logs` older than this are deleted, at start and then every
    /// `EMBEDDED_RETENTION_INTERVAL`, in batches of 10,000 rows so ingest keeps writing in
    /// between. 0 or unset: keep everything (the default). Deleted pages are reused by
    /// new rows; the file does not shrink. Scale-out ignores it (use TimescaleDB's
    /// `add_retention_policy`).
    #[arg(long, env = "EMBEDDED_RETENTION", value_parser = parse_duration, global = true)]
    pub embedded_retention: Option<Duration>,
    /// How often the embedded retention pass runs (when `EMBEDDED_RETENTION` is set).
    #[arg(
        long,
        env = "EMBEDDED_RETENTION_INTERVAL",
        default_value = "10m",
        value_parser = parse_duration,
        global = true
    )]
    pub embedded_retention_interval: Duration,
    /// Set by systemd for a `Type=notify` unit: `nsready serve | collector | worker` sends
    /// `READY=1` to this socket once the listener is bound and the workers run, and
    /// `STOPPING=1` when it starts to shut down. Unset: nothing is sent.
    #[arg(long, env = "NOTIFY_SOCKET", global = true)]
    pub notify_socket: Option<PathBuf>,
}
