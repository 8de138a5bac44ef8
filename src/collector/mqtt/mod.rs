//! The ingest-only MQTT listener (`MQTT_LISTEN`, `MQTT_TLS_LISTEN`): 3.1.1 and 5, PUBLISH to
//! `<prefix>` (one event) or `<prefix>/batch` (JSON array or NDJSON), each acknowledged only
//! once the queue holds it durably, as HTTP's 200. Not a broker: SUBSCRIBE is refused.
//!
//! [`run`] is the accept loop (connection cap taken before `accept`, as for HTTP; TLS
//! handshake inside MQTT_CONNECT_TIMEOUT; graceful then hard shutdown through the shutdown
//! handle); [`conn`] one connection; [`publish`] one PUBLISH; [`wire`] the codecs.

pub mod conn;
pub mod publish;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Collector;
use super::tls::TlsAcceptor;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// Room beside the payload in the largest packet (fixed header, topic, properties).
const PACKET_OVERHEAD: usize = 64 * 1024;

/// The listener's settings, resolved.
pub struct MqttConfig {
    pub topic: String,
    pub batch_topic: String,
    pub receive_max: u16,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
    /// Largest packet read (Maximum Packet Size of the MQTT 5 CONNACK): the batch limit
    /// plus room for the header; a single event's payload is held to INGEST_MAX_BODY_BYTES.
    pub max_packet: usize,
    pub stats: Arc<MqttStats>,
}

impl MqttConfig {
    /// From the settings and the metrics.
    pub fn new(settings: &Settings, metrics: Metrics) -> MqttConfig {
        let m = &settings.mqtt;
        let prefix = m.mqtt_topic_prefix.clone();
        MqttConfig {
            batch_topic: format!("{prefix}/batch"),
            topic: prefix,
            receive_max: m.mqtt_receive_maximum,
            connect_timeout: m.mqtt_connect_timeout,
            idle_timeout: m.mqtt_idle_timeout,
            max_connections: m.mqtt_max_connections,
            shutdown_timeout: settings.http.shutdown_timeout,
            max_packet: settings
                .http
                .ingest_max_batch_bytes
                .max(settings.http.ingest_max_body_bytes)
                .saturating_add(PACKET_OVERHEAD)
                .min(268_435_455),
            stats: Arc::new(MqttStats {
                connections: AtomicUsize::new(0),
                metrics,
            }),
        }
    }

    fn max_packet_u32(&self) -> u32 {
        u32::try_from(self.max_packet).unwrap_or(u32::MAX)
    }
}

/// Connection count and counters of the listener.
pub struct MqttStats {
    connections: AtomicUsize,
    metrics: Metrics,
}

/// Decrements the connection count when a session ends.
pub struct Connected(Arc<MqttStats>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.mqtt_connections(-1);
    }
}

impl MqttStats {
    fn connected(stats: &Arc<MqttStats>) -> Connected {
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.metrics.mqtt_connections(1);
        Connected(stats.clone())
    }

    /// Sessions open now (CONNECT accepted).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    fn publish(&self, qos: u8, result: publish::Result) {
        self.metrics.mqtt_publish(qos, result.into());
    }

    fn ack_seconds(&self, secs: f64) {
        self.metrics.mqtt_ack_seconds(secs);
    }
}

impl From<publish::Result> for crate::metrics::MqttResult {
    fn from(r: publish::Result) -> Self {
        match r {
            publish::Result::Queued => Self::Queued,
            publish::Result::DeadLettered => Self::DeadLettered,
            publish::Result::Refused => Self::Refused,
            publish::Result::NotStored => Self::NotStored,
        }
    }
}

/// Accepts MQTT connections until shutdown fires; then stops accepting, lets open
/// connections finish their in-flight acks, and drops what is left when SHUTDOWN_TIMEOUT
/// (from the signal) has passed.
pub async fn run<Q: Queue, S: Store>(
    listener: TcpListener,
    app: Arc<Collector<Q, S>>,
    cfg: Arc<MqttConfig>,
    tls: Option<TlsAcceptor>,
    shutdown: Shutdown,
) {
    let max = cfg
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max));
    let stop = shutdown.token();
    let hard = CancellationToken::new();
    loop {
        let permit = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let tcp = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (app, cfg, tls) = (app.clone(), cfg.clone(), tls.clone());
        let (graceful, hard) = (stop.clone(), hard.clone());
        shutdown.spawn(async move {
            let _permit = permit;
            match tls {
                None => conn::serve(tcp, app, cfg, graceful, hard).await,
                Some(acceptor) => {
                    let hs = tokio::time::timeout(cfg.connect_timeout, acceptor.accept(tcp));
                    let stream = tokio::select! {
                        r = hs => match r {
                            Ok(Ok(s)) => s,
                            _ => {
                                tracing::debug!("MQTT: TLS handshake failed or too slow; closed");
                                return;
                            }
                        },
                        () = hard.cancelled() => return,
                    };
                    conn::serve(stream, app, cfg, graceful, hard).await;
                }
            }
        });
    }
    drop(listener);
    let open = max - slots.available_permits();
    tracing::info!(open, "MQTT: stopped accepting; finishing in-flight acks");
    let all = slots.clone().acquire_many_owned(max as u32);
    if tokio::time::timeout(cfg.shutdown_timeout, all)
        .await
        .is_err()
    {
        tracing::warn!("MQTT: SHUTDOWN_TIMEOUT passed with connections open; dropping them");
        hard.cancel();
    }
}

/// Binds MQTT_LISTEN (plain) and MQTT_TLS_LISTEN (with the HTTP listener's certificate),
/// each when set, and spawns [`run`] for each under the shutdown handle.
///
/// # Errors
/// The address, and why it cannot be bound (or, for TLS, that no certificate is set).
pub async fn start<Q: Queue, S: Store>(
    app: &Arc<Collector<Q, S>>,
    settings: &Settings,
    tls: Option<TlsAcceptor>,
    shutdown: &Shutdown,
) -> Result<(), (String, std::io::Error)> {
    let m = &settings.mqtt;
    if m.mqtt_listen.is_none() && m.mqtt_tls_listen.is_none() {
        return Ok(());
    }
    let cfg = Arc::new(MqttConfig::new(settings, app.metrics.clone()));
    let listeners = [
        (m.mqtt_listen.clone(), None),
        (m.mqtt_tls_listen.clone(), Some(tls)),
    ];
    for (addr, tls) in listeners {
        let Some(addr) = addr else { continue };
        let tls = match tls {
            None => None,
            Some(Some(a)) => Some(a),
            Some(None) => {
                let e =
                    std::io::Error::other("MQTT_TLS_LISTEN needs TLS_CERT_FILE and TLS_KEY_FILE");
                return Err((addr, e));
            }
        };
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|e| (addr.clone(), e))?;
        let local = listener.local_addr().map_err(|e| (addr.clone(), e))?;
        // Health shows the first listener (the plain one when both are set).
        let _ = app.mqtt.set(Listening {
            addr: local,
            tls: tls.is_some(),
            stats: cfg.stats.clone(),
        });
        tracing::info!(addr = %local, topic = %cfg.topic, tls = tls.is_some(), "MQTT listening");
        shutdown.spawn(run(
            listener,
            app.clone(),
            cfg.clone(),
            tls,
            shutdown.clone(),
        ));
    }
    Ok(())
}

/// The bound MQTT listener, as `/v1/health` and `/v1/status` show it.
pub struct Listening {
    addr: std::net::SocketAddr,
    tls: bool,
    stats: Arc<MqttStats>,
}

impl<Q: Queue, S: Store> Collector<Q, S> {
    /// `{"listen":..,"tls":..,"clients":..}`, or null without MQTT.
    pub(crate) fn mqtt_json(&self) -> serde_json::Value {
        match self.mqtt.get() {
            None => serde_json::Value::Null,
            Some(l) => serde_json::json!({
                "listen": l.addr.to_string(),
                "tls": l.tls,
                "clients": l.stats.connections(),
            }),
        }
    }
}
