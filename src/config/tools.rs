//! Settings of the operator tools (`nsready status`, `nsready loadgen`): which service they
//! talk to and the thresholds of `status`. Declared here, with every other environment
//! name, so that the configuration is read in one module.

use clap::Args;

use super::HttpArgs;

/// The running service a tool talks to.
#[derive(Args, Clone, Debug, Default)]
pub struct ServiceUrl {
    /// Base URL of the service; defaults to http://127.0.0.1:SERVICE_PORT.
    #[arg(long, env = "NSREADY_URL")]
    pub url: Option<String>,
}

impl ServiceUrl {
    /// The base URL without a trailing slash: `--url`, or this host's `SERVICE_PORT`.
    pub fn base(&self, http: &HttpArgs) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", http.service_port))
            .trim_end_matches('/')
            .to_string()
    }
}

/// The thresholds `nsready status` judges a health document by.
#[derive(Args, Clone, Debug)]
pub struct StatusThresholds {
    /// Queue depth that is a warning.
    #[arg(long, env = "QUEUE_DEPTH_WARN", default_value_t = 1_000)]
    pub warn_depth: u64,
    /// Queue depth that is critical.
    #[arg(long, env = "QUEUE_DEPTH_CRIT", default_value_t = 5_000)]
    pub crit_depth: u64,
    /// DLQ depth that is a warning (0 turns the DLQ check off).
    #[arg(long, env = "DLQ_DEPTH_WARN", default_value_t = 1)]
    pub warn_dlq: u64,
    /// DLQ depth that is critical (0: never).
    #[arg(long, env = "DLQ_DEPTH_CRIT", default_value_t = 0)]
    pub crit_dlq: u64,
}

impl Default for StatusThresholds {
    /// The documented defaults (README, `nsready status`).
    fn default() -> Self {
        StatusThresholds {
            warn_depth: 1_000,
            crit_depth: 5_000,
            warn_dlq: 1,
            crit_dlq: 0,
        }
    }
}
