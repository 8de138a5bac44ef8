//! Embedded single-node settings (DATA_DIR, queue bounds).

use std::path::PathBuf;

use clap::Args;

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
}
