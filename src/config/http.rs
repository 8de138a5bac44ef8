//! HTTP listener and ingest limit settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{ConfigError, Secret, parse_duration};

/// HTTP service.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "HTTP service and ingest limits")]
pub struct HttpArgs {
    /// Port for ingest, health, readiness and metrics.
    #[arg(long, env = "SERVICE_PORT", default_value_t = 8001, global = true)]
    pub service_port: u16,
    /// Address to listen on. Loopback by default: set 0.0.0.0 (or an interface address) to
    /// accept ingest from other machines, with INGEST_AUTH configured (protected mode).
    #[arg(long, env = "SERVICE_HOST", default_value = "127.0.0.1", global = true)]
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
    /// Ingest authentication: `token` (per-device tokens from `nsready token create`; a
    /// token authorizes its own device only), `shared` (INGEST_AUTH_TOKEN), `none` (open).
    /// Unset: `shared` when INGEST_AUTH_TOKEN is set, else none configured, which is
    /// refused on a non-loopback SERVICE_HOST (protected mode).
    #[arg(long, env = "INGEST_AUTH", value_enum, global = true)]
    pub ingest_auth: Option<IngestAuth>,
    /// Events per second each device may send (token bucket per device_id; 0 = no limit).
    /// Beyond it: 429 with Retry-After (a per-item error in a batch).
    #[arg(long, env = "INGEST_RATE_LIMIT", default_value_t = 0, global = true)]
    pub ingest_rate_limit: u32,
    /// Events a device may send at once above INGEST_RATE_LIMIT (the bucket's size);
    /// default: one second's worth.
    #[arg(long, env = "INGEST_RATE_BURST", global = true)]
    pub ingest_rate_burst: Option<u32>,
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

/// How ingest requests authenticate (`INGEST_AUTH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IngestAuth {
    /// Open ingest, explicitly (also on a non-loopback address, with a warning).
    None,
    /// One shared bearer token, `INGEST_AUTH_TOKEN`.
    Shared,
    /// Per-device bearer tokens stored as hashes in `tokens`.
    Token,
}

impl HttpArgs {
    /// The authentication in force: INGEST_AUTH, else `shared` when INGEST_AUTH_TOKEN is
    /// set; `None` when nothing is configured (protected mode decides).
    pub fn auth_mode(&self) -> Option<IngestAuth> {
        self.ingest_auth
            .or(self.ingest_auth_token.as_ref().map(|_| IngestAuth::Shared))
    }

    /// INGEST_AUTH agrees with INGEST_AUTH_TOKEN; the rate-limit burst is usable.
    ///
    /// # Errors
    /// `Invalid` naming INGEST_AUTH, INGEST_AUTH_TOKEN or INGEST_RATE_BURST.
    pub fn validate_auth(&self) -> Result<(), ConfigError> {
        let shared = self.ingest_auth_token.is_some();
        match (self.ingest_auth, shared) {
            (Some(IngestAuth::Shared), false) => Err(ConfigError::Invalid {
                name: "INGEST_AUTH",
                reason: "`shared` needs INGEST_AUTH_TOKEN, the token every client sends".into(),
            }),
            (Some(mode @ (IngestAuth::None | IngestAuth::Token)), true) => {
                Err(ConfigError::Invalid {
                    name: "INGEST_AUTH_TOKEN",
                    reason: format!(
                        "is set but INGEST_AUTH is `{}`, which does not use it; unset it, or \
                         set INGEST_AUTH=shared",
                        if mode == IngestAuth::None {
                            "none"
                        } else {
                            "token"
                        }
                    ),
                })
            }
            _ => Ok(()),
        }?;
        match (self.ingest_rate_limit, self.ingest_rate_burst) {
            (_, Some(0)) => Err(ConfigError::Invalid {
                name: "INGEST_RATE_BURST",
                reason: "must be at least 1 (no event could ever pass)".into(),
            }),
            (0, Some(_)) => Err(ConfigError::Invalid {
                name: "INGEST_RATE_BURST",
                reason: "is set but INGEST_RATE_LIMIT is 0 (off); set INGEST_RATE_LIMIT too".into(),
            }),
            _ => Ok(()),
        }
    }

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
