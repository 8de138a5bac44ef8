//! Queue settings that both deployments apply (the embedded queue and JetStream alike).

use std::time::Duration;

use clap::Args;

use super::parse_duration;

/// What every queue does, whichever implementation runs.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Queue (both deployments)")]
pub struct QueueArgs {
    /// Window in which a repeated message id (a client retry of the same content) is
    /// stored once: JetStream's duplicate window, or the embedded queue's dedupe window.
    #[arg(long, env = "DUPLICATE_WINDOW", default_value = "2m", value_parser = parse_duration, global = true)]
    pub duplicate_window: Duration,
    /// Longest wait for the queue's durable acknowledgement of a publish; past it ingest
    /// answers 503.
    #[arg(long, env = "PUBLISH_TIMEOUT", default_value = "5", value_parser = parse_duration, global = true)]
    pub publish_timeout: Duration,
}
