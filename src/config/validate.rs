//! [`Settings::validate`]: refuses at start every setting that cannot work, naming it.
//!
//! Parsing (clap) checks types; this checks meaning. An empty secret is refused instead of
//! being read as "not set" (an empty `INGEST_AUTH_TOKEN` once turned authentication off),
//! and the value of a secret is never printed. A limit that cannot work (a zero size, count
//! or timeout, a batch limit below the single-event limit, an ack wait that a batch outlives
//! while it fills) is refused instead of being clamped to something the operator did not
//! ask for. Every command that starts something calls it (`App::build`, `with_store`,
//! `with_deployment`), so the binary exits non-zero with the message before opening
//! anything.

use std::time::Duration;

use super::{ConfigError, Secret, Settings};

/// Largest `HTTP_MAX_CONNECTIONS` / `HTTP_MAX_INFLIGHT` (far beyond any file-descriptor
/// limit; past it the semaphores could not represent the count).
pub const MAX_HTTP_CAP: usize = 1 << 20;

impl Settings {
    /// Checks every rule; the first broken one is returned.
    ///
    /// # Errors
    /// `EmptySecret` naming the variable of an empty or whitespace-only secret; `Invalid`
    /// naming the variable (and the one it conflicts with) for a limit that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_secret_files_resolved()?;
        self.validate_secrets()?;
        self.validate_tls()?;
        self.validate_http()?;
        self.http.validate_auth()?;
        self.mqtt.validate()?;
        self.validate_worker()?;
        self.validate_queue()?;
        positive_duration("DB_TIMEOUT", self.db.db_timeout)?;
        positive("DB_POOL_SIZE", self.db.db_pool_size as u64)?;
        self.validate_timescale()
    }

    /// TimescaleDB: positive durations, and retention never silently drops what the
    /// collector accepts: with TIMESCALE_RETENTION set, INGEST_MAX_PAST must be set and
    /// shorter, so a reading the policy would drop is refused at the door (400).
    fn validate_timescale(&self) -> Result<(), ConfigError> {
        let p = self.timescale.policy();
        for (name, d) in [
            ("TIMESCALE_CHUNK_INTERVAL", p.chunk_interval),
            ("TIMESCALE_COMPRESS_AFTER", p.compress_after),
            ("TIMESCALE_RETENTION", p.retention),
        ] {
            if let Some(d) = d {
                positive_duration(name, d)?;
            }
        }
        if let Some(retention) = p.retention {
            let past = self.http.ingest_max_past;
            if past.is_zero() || past >= retention {
                return Err(ConfigError::Invalid {
                    name: "TIMESCALE_RETENTION",
                    reason: format!(
                        "{} s drops readings older than that, but INGEST_MAX_PAST ({}) lets the \
                         collector accept them: set INGEST_MAX_PAST shorter than the retention \
                         (leave room for a queue backlog), or TIMESCALE_RETENTION=off",
                        retention.as_secs(),
                        if past.is_zero() {
                            "0 = no bound".to_string()
                        } else {
                            format!("{} s", past.as_secs())
                        }
                    ),
                });
            }
        }
        Ok(())
    }

    fn validate_secrets(&self) -> Result<(), ConfigError> {
        secret(
            "INGEST_AUTH_TOKEN",
            self.http.ingest_auth_token.as_ref(),
            " to turn authentication off",
        )?;
        secret("NATS_PASSWORD", self.nats.nats_password.as_ref(), "")?;
        secret("NATS_TOKEN", self.nats.nats_token.as_ref(), "")?;
        secret("POSTGRES_PASSWORD", self.db.postgres_password.as_ref(), "")?;
        secret(
            "DATABASE_URL",
            self.db.database_url.as_ref(),
            " for the embedded deployment",
        )?;
        if let Some(token) = &self.http.ingest_auth_token {
            let t = token.expose();
            let sendable = t.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
            if !sendable || t.trim() != t {
                return Err(ConfigError::Invalid {
                    name: "INGEST_AUTH_TOKEN",
                    reason: "must be printable ASCII without leading or trailing spaces: \
                             clients send it in an HTTP header, which cannot carry anything \
                             else, so no request could ever match it"
                        .into(),
                });
            }
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        let h = &self.http;
        positive("INGEST_MAX_BODY_BYTES", h.ingest_max_body_bytes as u64)?;
        positive("INGEST_MAX_BATCH_BYTES", h.ingest_max_batch_bytes as u64)?;
        if h.ingest_max_batch_bytes < h.ingest_max_body_bytes {
            return Err(ConfigError::Invalid {
                name: "INGEST_MAX_BATCH_BYTES",
                reason: format!(
                    "{} is below INGEST_MAX_BODY_BYTES ({}): a batch of one largest event \
                     must fit",
                    h.ingest_max_batch_bytes, h.ingest_max_body_bytes
                ),
            });
        }
        if h.ingest_max_inflight_bytes / 2 < h.ingest_max_batch_bytes {
            return Err(ConfigError::Invalid {
                name: "INGEST_MAX_INFLIGHT_BYTES",
                reason: format!(
                    "{} is below twice INGEST_MAX_BATCH_BYTES ({}): a largest gzip batch \
                     (its body and its inflated copy) must fit",
                    h.ingest_max_inflight_bytes, h.ingest_max_batch_bytes
                ),
            });
        }
        positive_duration("SHUTDOWN_TIMEOUT", h.shutdown_timeout)?;
        positive_duration("HTTP_HEADER_TIMEOUT", h.http_header_timeout)?;
        positive_duration("HTTP_BODY_TIMEOUT", h.http_body_timeout)?;
        positive_duration("HTTP_IDLE_TIMEOUT", h.http_idle_timeout)?;
        capped("HTTP_MAX_CONNECTIONS", h.http_max_connections)?;
        capped("HTTP_MAX_INFLIGHT", h.http_max_inflight)
    }

    fn validate_worker(&self) -> Result<(), ConfigError> {
        let w = &self.worker;
        positive("WORKER_POOL_SIZE", w.worker_pool_size as u64)?;
        positive("WORKER_BATCH_SIZE", w.worker_batch_size as u64)?;
        positive("WORKER_BATCH_MAX_BYTES", w.worker_batch_max_bytes as u64)?;
        // The consumer's max_ack_pending is derived from pool × batch × 8 (an i64).
        let in_hand = w
            .worker_pool_size
            .checked_mul(w.worker_batch_size)
            .and_then(|n| n.checked_mul(8))
            .filter(|n| i64::try_from(*n).is_ok());
        if in_hand.is_none() {
            return Err(ConfigError::Invalid {
                name: "WORKER_BATCH_SIZE",
                reason: "WORKER_POOL_SIZE × WORKER_BATCH_SIZE is too large to count".into(),
            });
        }
        positive("WORKER_MAX_RETRIES", w.worker_max_retries)?;
        positive_duration("WORKER_ACK_WAIT", w.worker_ack_wait)?;
        // 0 would redeliver a retryable failure in a tight loop until its retries are gone.
        positive_duration("WORKER_RETRY_DELAY", w.worker_retry_delay)?;
        if w.worker_ack_wait <= w.worker_batch_timeout {
            return Err(ConfigError::Invalid {
                name: "WORKER_ACK_WAIT",
                reason: format!(
                    "{} s must be longer than WORKER_BATCH_TIMEOUT ({} s): messages would be \
                     redelivered while their batch is still being filled",
                    w.worker_ack_wait.as_secs_f64(),
                    w.worker_batch_timeout.as_secs_f64()
                ),
            });
        }
        positive_duration("REGISTRY_REFRESH_INTERVAL", w.registry_refresh_interval)?;
        positive_duration("STALL_AFTER", w.stall_after)
    }

    fn validate_queue(&self) -> Result<(), ConfigError> {
        let n = &self.nats;
        let e = &self.embedded;
        positive("DB_CONNECT_RETRIES", u64::from(self.db.db_connect_retries))?;
        positive("NATS_CONNECT_RETRIES", u64::from(n.nats_connect_retries))?;
        positive_duration("PUBLISH_TIMEOUT", self.queue.publish_timeout)?;
        positive_duration("DUPLICATE_WINDOW", self.queue.duplicate_window)?;
        if !(1..=5).contains(&n.stream_replicas) {
            return Err(ConfigError::Invalid {
                name: "STREAM_REPLICAS",
                reason: format!("{} must be 1 to 5 (JetStream's range)", n.stream_replicas),
            });
        }
        let body = self.http.ingest_max_body_bytes as u64;
        for (name, value) in [
            ("STREAM_MAX_MSGS", n.stream_max_msgs),
            ("STREAM_MAX_BYTES", n.stream_max_bytes),
        ] {
            if value <= 0 {
                return Err(ConfigError::Invalid {
                    name,
                    reason: format!(
                        "{value} must be positive: the stream is bounded so that a full queue \
                         answers 503 instead of growing without limit"
                    ),
                });
            }
        }
        positive("EMBEDDED_QUEUE_MAX_MSGS", e.embedded_queue_max_msgs)?;
        positive_duration("EMBEDDED_RETENTION_INTERVAL", e.embedded_retention_interval)?;
        for (name, bytes) in [
            (
                "STREAM_MAX_BYTES",
                u64::try_from(n.stream_max_bytes).unwrap_or(0),
            ),
            ("EMBEDDED_QUEUE_MAX_BYTES", e.embedded_queue_max_bytes),
        ] {
            if bytes < body {
                return Err(ConfigError::Invalid {
                    name,
                    reason: format!(
                        "{bytes} is below INGEST_MAX_BODY_BYTES ({body}): an event of the \
                         allowed size could never be queued"
                    ),
                });
            }
        }
        Ok(())
    }
}

fn secret(
    name: &'static str,
    value: Option<&Secret>,
    hint: &'static str,
) -> Result<(), ConfigError> {
    match value {
        Some(s) if s.expose().trim().is_empty() => Err(ConfigError::EmptySecret { name, hint }),
        _ => Ok(()),
    }
}

fn positive(name: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid {
            name,
            reason: "0 cannot work; it must be at least 1".into(),
        });
    }
    Ok(())
}

fn positive_duration(name: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::Invalid {
            name,
            reason: "0 cannot work; it must be a positive duration".into(),
        });
    }
    Ok(())
}

fn capped(name: &'static str, value: usize) -> Result<(), ConfigError> {
    positive(name, value as u64)?;
    if value > MAX_HTTP_CAP {
        return Err(ConfigError::Invalid {
            name,
            reason: format!("{value} is above the largest supported value, {MAX_HTTP_CAP}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::settings_from as settings;

    /// The variable the error names, and its message.
    fn refused(args: &[&str]) -> (&'static str, String) {
        match settings(args).validate() {
            Ok(()) => panic!("{args:?} should be refused"),
            Err(e) => {
                let name = match &e {
                    ConfigError::Invalid { name, .. } | ConfigError::EmptySecret { name, .. } => {
                        *name
                    }
                    other => panic!("unexpected {other:?}"),
                };
                (name, e.to_string())
            }
        }
    }

    #[test]
    fn the_defaults_are_valid() {
        assert!(settings(&[]).validate().is_ok());
    }

    #[test]
    fn empty_or_blank_secrets_are_refused_by_name_never_by_value() {
        for (flag, name) in [
            ("--ingest-auth-token", "INGEST_AUTH_TOKEN"),
            ("--nats-password", "NATS_PASSWORD"),
            ("--nats-token", "NATS_TOKEN"),
            ("--postgres-password", "POSTGRES_PASSWORD"),
            ("--database-url", "DATABASE_URL"),
        ] {
            for value in ["", " ", "\t \n"] {
                let (got, msg) = refused(&[flag, value]);
                assert_eq!(got, name, "{flag}={value:?}: {msg}");
                assert!(msg.contains(name), "{msg}");
                assert!(msg.contains("empty"), "{msg}");
            }
        }
    }

    #[test]
    fn an_auth_token_no_client_can_send_is_refused_without_printing_it() {
        for value in [" hunter2", "hunter2 ", "hunter2\n", "hün\u{0}ter2"] {
            let (name, msg) = refused(&["--ingest-auth-token", value]);
            assert_eq!(name, "INGEST_AUTH_TOKEN");
            assert!(!msg.contains("hunter2") && !msg.contains("ter2"), "{msg}");
        }
        assert!(
            settings(&["--ingest-auth-token", "s3cret-Token.with spaces"])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn ingest_auth_must_agree_with_the_shared_token_and_the_burst_with_the_rate() {
        use crate::config::IngestAuth;
        assert_eq!(refused(&["--ingest-auth", "shared"]).0, "INGEST_AUTH");
        for mode in ["token", "none"] {
            let (name, msg) = refused(&["--ingest-auth", mode, "--ingest-auth-token", "hunter2"]);
            assert_eq!(name, "INGEST_AUTH_TOKEN");
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        assert_eq!(
            refused(&["--ingest-rate-burst", "5"]).0,
            "INGEST_RATE_BURST"
        );
        assert_eq!(
            refused(&["--ingest-rate-limit", "5", "--ingest-rate-burst", "0"]).0,
            "INGEST_RATE_BURST"
        );
        // INGEST_AUTH unset: `shared` when the token is set, else nothing configured.
        assert_eq!(settings(&[]).http.auth_mode(), None);
        let s = settings(&["--ingest-auth-token", "hunter2"]);
        assert!(s.validate().is_ok());
        assert_eq!(s.http.auth_mode(), Some(IngestAuth::Shared));
        let s = settings(&["--ingest-auth", "token", "--ingest-rate-limit", "10"]);
        assert!(s.validate().is_ok());
        assert_eq!(s.http.auth_mode(), Some(IngestAuth::Token));
        assert_eq!(s.http.service_host, "127.0.0.1", "loopback by default");
    }

    #[test]
    fn zero_sizes_counts_and_timeouts_are_refused_by_name() {
        for (flag, name) in [
            ("--ingest-max-body-bytes", "INGEST_MAX_BODY_BYTES"),
            ("--worker-batch-size", "WORKER_BATCH_SIZE"),
            ("--worker-batch-max-bytes", "WORKER_BATCH_MAX_BYTES"),
            ("--worker-pool-size", "WORKER_POOL_SIZE"),
            ("--worker-max-retries", "WORKER_MAX_RETRIES"),
            ("--worker-ack-wait", "WORKER_ACK_WAIT"),
            ("--db-pool-size", "DB_POOL_SIZE"),
            ("--db-timeout", "DB_TIMEOUT"),
            ("--publish-timeout", "PUBLISH_TIMEOUT"),
            ("--shutdown-timeout", "SHUTDOWN_TIMEOUT"),
            ("--http-header-timeout", "HTTP_HEADER_TIMEOUT"),
            ("--http-body-timeout", "HTTP_BODY_TIMEOUT"),
            ("--http-idle-timeout", "HTTP_IDLE_TIMEOUT"),
            ("--http-max-connections", "HTTP_MAX_CONNECTIONS"),
            ("--http-max-inflight", "HTTP_MAX_INFLIGHT"),
            ("--nats-connect-retries", "NATS_CONNECT_RETRIES"),
            ("--registry-refresh-interval", "REGISTRY_REFRESH_INTERVAL"),
            ("--stall-after", "STALL_AFTER"),
            ("--duplicate-window", "DUPLICATE_WINDOW"),
            ("--stream-replicas", "STREAM_REPLICAS"),
            ("--stream-max-msgs", "STREAM_MAX_MSGS"),
            ("--stream-max-bytes", "STREAM_MAX_BYTES"),
            ("--embedded-queue-max-msgs", "EMBEDDED_QUEUE_MAX_MSGS"),
            ("--embedded-queue-max-bytes", "EMBEDDED_QUEUE_MAX_BYTES"),
        ] {
            let (got, msg) = refused(&[flag, "0"]);
            assert_eq!(got, name, "{flag} 0: {msg}");
            assert!(msg.contains(name), "{msg}");
        }
        let (got, _) = refused(&["--ingest-max-batch-bytes", "0"]);
        assert!(got.starts_with("INGEST_MAX_"), "{got}");
    }

    #[test]
    fn a_batch_limit_below_the_event_limit_is_refused() {
        let (name, msg) = refused(&[
            "--ingest-max-body-bytes",
            "2000",
            "--ingest-max-batch-bytes",
            "1999",
        ]);
        assert_eq!(name, "INGEST_MAX_BATCH_BYTES");
        assert!(msg.contains("INGEST_MAX_BODY_BYTES"), "{msg}");
        let equal = [
            "--ingest-max-body-bytes",
            "2000",
            "--ingest-max-batch-bytes",
            "2000",
        ];
        assert!(settings(&equal).validate().is_ok());
    }

    #[test]
    fn an_ack_wait_not_longer_than_the_batch_timeout_is_refused() {
        for wait in ["0.5", "0.4"] {
            let (name, msg) =
                refused(&["--worker-batch-timeout", "0.5", "--worker-ack-wait", wait]);
            assert_eq!(name, "WORKER_ACK_WAIT");
            assert!(msg.contains("WORKER_BATCH_TIMEOUT"), "{msg}");
        }
        let ok = ["--worker-batch-timeout", "0.5", "--worker-ack-wait", "0.6"];
        assert!(settings(&ok).validate().is_ok());
    }

    #[test]
    fn queues_too_small_for_one_event_and_absurd_caps_are_refused() {
        let (name, _) = refused(&["--embedded-queue-max-bytes", "1000"]);
        assert_eq!(name, "EMBEDDED_QUEUE_MAX_BYTES");
        let (name, _) = refused(&["--stream-max-bytes", "1000"]);
        assert_eq!(name, "STREAM_MAX_BYTES");
        let (name, _) = refused(&["--stream-max-msgs=-1"]);
        assert_eq!(name, "STREAM_MAX_MSGS");
        let (name, _) = refused(&["--stream-replicas", "6"]);
        assert_eq!(name, "STREAM_REPLICAS");
        let (name, _) = refused(&["--http-max-connections", "99999999999"]);
        assert_eq!(name, "HTTP_MAX_CONNECTIONS");
        let (name, _) = refused(&["--worker-batch-size", &usize::MAX.to_string()]);
        assert_eq!(name, "WORKER_BATCH_SIZE");
    }

    #[test]
    fn timescale_retention_needs_a_shorter_ingest_max_past() {
        let (name, why) = refused(&["--timescale-retention", "30d"]);
        assert_eq!(name, "TIMESCALE_RETENTION");
        assert!(why.contains("INGEST_MAX_PAST"), "{why}");
        let (name, _) = refused(&["--timescale-retention", "30d", "--ingest-max-past", "30d"]);
        assert_eq!(name, "TIMESCALE_RETENTION");
        let ok = ["--timescale-retention", "30d", "--ingest-max-past", "29d"];
        assert!(settings(&ok).validate().is_ok());
        let (name, _) = refused(&["--timescale-chunk-interval", "0"]);
        assert_eq!(name, "TIMESCALE_CHUNK_INTERVAL");
        let off = [
            "--timescale-compress-after",
            "off",
            "--timescale-chunk-interval",
            "off",
        ];
        assert!(settings(&off).validate().is_ok());
    }
}
