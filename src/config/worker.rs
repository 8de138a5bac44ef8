//! Worker pool settings.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::parse_duration;

/// How strictly the worker checks events against the registry (DESIGN.md §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ValidationMode {
    /// Device exists and is active, project and site own it, every parameter is a template
    /// of the device's project (tenant isolation).
    Strict,
    /// As strict, without the ownership checks (project/site, the parameters' project).
    Lenient,
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
    /// Registry checks: strict (the device's project and site, and every parameter key a
    /// template of the device's own project) or lenient (skips these ownership checks).
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
