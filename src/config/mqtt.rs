//! MQTT listener settings (`MQTT_*`): off unless MQTT_LISTEN is set.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, parse_duration};

/// MQTT ingest listener.
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "MQTT ingest listener")]
pub struct MqttArgs {
    /// host:port of the ingest-only MQTT listener (3.1.1 and 5); unset = no MQTT. Protected
    /// mode applies as to SERVICE_HOST: a non-loopback address needs INGEST_AUTH.
    #[arg(long, env = "MQTT_LISTEN", global = true)]
    pub mqtt_listen: Option<String>,
    /// host:port of the MQTT-over-TLS listener (needs TLS_CERT_FILE/TLS_KEY_FILE, the HTTP
    /// listener's certificate; TLS_CLIENT_CA_FILE makes it mTLS). The handshake must finish
    /// within MQTT_CONNECT_TIMEOUT.
    #[arg(long, env = "MQTT_TLS_LISTEN", global = true)]
    pub mqtt_tls_listen: Option<String>,
    /// Topic of single events; `<prefix>/batch` takes a JSON array or NDJSON.
    #[arg(
        long,
        env = "MQTT_TOPIC_PREFIX",
        default_value = "nsready/ingest",
        global = true
    )]
    pub mqtt_topic_prefix: String,
    /// Most open MQTT connections; at the cap new ones wait in the listen backlog.
    #[arg(
        long,
        env = "MQTT_MAX_CONNECTIONS",
        default_value_t = 1024,
        global = true
    )]
    pub mqtt_max_connections: usize,
    /// Time from accept to a complete CONNECT packet; a slower client is disconnected.
    #[arg(long, env = "MQTT_CONNECT_TIMEOUT", default_value = "10", value_parser = parse_duration, global = true)]
    pub mqtt_connect_timeout: Duration,
    /// QoS 1/2 publishes of one connection waiting for the queue at once (MQTT 5 Receive
    /// Maximum; a 3.1.1 connection is simply not read while its window is full).
    #[arg(
        long,
        env = "MQTT_RECEIVE_MAXIMUM",
        default_value_t = 64,
        global = true
    )]
    pub mqtt_receive_maximum: u16,
    /// Longest quiet time of a connection that asked for keep-alive 0 (no keep-alive).
    #[arg(long, env = "MQTT_IDLE_TIMEOUT", default_value = "300", value_parser = parse_duration, global = true)]
    pub mqtt_idle_timeout: Duration,
}

impl MqttArgs {
    /// Positive limits, a topic prefix without wildcards.
    ///
    /// # Errors
    /// `Invalid` naming the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |name, reason: &str| {
            Err(ConfigError::Invalid {
                name,
                reason: reason.into(),
            })
        };
        if self.mqtt_max_connections == 0 {
            return bad("MQTT_MAX_CONNECTIONS", "must be at least 1");
        }
        if self.mqtt_receive_maximum == 0 {
            return bad("MQTT_RECEIVE_MAXIMUM", "must be at least 1 (1..=65535)");
        }
        if self.mqtt_connect_timeout.is_zero() {
            return bad("MQTT_CONNECT_TIMEOUT", "must be positive");
        }
        if self.mqtt_idle_timeout.is_zero() {
            return bad("MQTT_IDLE_TIMEOUT", "must be positive");
        }
        let p = &self.mqtt_topic_prefix;
        if p.is_empty() || p.contains(['#', '+', '\0']) || p.ends_with('/') {
            return bad(
                "MQTT_TOPIC_PREFIX",
                "must be a non-empty topic name without wildcards (+, #) or a trailing /",
            );
        }
        if let Some(l) = &self.mqtt_listen
            && l.rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            return bad("MQTT_LISTEN", "must be host:port, e.g. 127.0.0.1:1883");
        }
        Ok(())
    }

    /// The host parts of MQTT_LISTEN and MQTT_TLS_LISTEN (protected mode).
    pub fn listen_hosts(&self) -> impl Iterator<Item = &str> {
        [&self.mqtt_listen, &self.mqtt_tls_listen]
            .into_iter()
            .filter_map(|l| {
                l.as_deref()
                    .and_then(|l| l.rsplit_once(':'))
                    .map(|(h, _)| h)
            })
    }
}
