//! NATS JetStream settings (scale-out queue).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{Secret, parse_duration};

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
}
