//! HTTP listener and ingest limit settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{Secret, parse_duration};

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
    /// File holding INGEST_AUTH_TOKEN (container secrets; one trailing newline is stripped).
    #[arg(long, env = "INGEST_AUTH_TOKEN_FILE", global = true)]
    pub ingest_auth_token_file: Option<PathBuf>,
    /// Certificate chain (PEM) of the HTTP listener; with TLS_KEY_FILE the listener speaks
    /// HTTPS only. The handshake must finish within HTTP_HEADER_TIMEOUT.
    #[arg(long, env = "TLS_CERT_FILE", global = true)]
    pub tls_cert_file: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of TLS_CERT_FILE.
    #[arg(long, env = "TLS_KEY_FILE", global = true)]
    pub tls_key_file: Option<PathBuf>,
    /// CA certificate(s) (PEM): when set, every client must present a certificate signed by
    /// one of them (mTLS); a client without one is refused in the handshake.
    #[arg(long, env = "TLS_CLIENT_CA_FILE", global = true)]
    pub tls_client_ca_file: Option<PathBuf>,
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
