//! One MQTT connection: CONNECT (protocol level peeked, login checked) within
//! MQTT_CONNECT_TIMEOUT, then a loop that reads packets while the in-flight window has
//! room, runs each publish towards the queue concurrently, and writes each acknowledgement
//! as soon as its publish is durable (acks may go out of order, as MQTT allows).
//!
//! - **Window** (`MQTT_RECEIVE_MAXIMUM`): QoS 1/2 publishes waiting for the queue, plus
//!   QoS 2 ones waiting for their PUBREL. A 3.1.1 connection is not read while the window
//!   is full (backpressure through TCP); a 5 client that sends past its Receive Maximum
//!   breaks the protocol and gets DISCONNECT 0x93.
//! - **Keep-alive**: no packet for 1.5 × the client's keep-alive closes the connection;
//!   keep-alive 0 means none, and then MQTT_IDLE_TIMEOUT bounds a silent connection.
//! - **Shutdown**: reading stops, in-flight publishes finish and are acknowledged, then the
//!   connection closes (MQTT 5: DISCONNECT 0x8B); the hard stop drops it at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::publish::{self, Outcome};
use super::wire::{self, ConnCode, In, Out, Version};
use super::{MqttConfig, MqttStats};
use crate::collector::Collector;
use crate::collector::auth::Principal;
use crate::queue::Queue;
use crate::store::Store;

/// Serves one accepted connection until it ends.
pub async fn serve<IO, Q, S>(
    mut io: IO,
    app: Arc<Collector<Q, S>>,
    cfg: Arc<MqttConfig>,
    graceful: CancellationToken,
    hard: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    Q: Queue,
    S: Store,
{
    let mut buf = BytesMut::with_capacity(4096);
    let connect_deadline = Instant::now() + cfg.connect_timeout;
    let hello = tokio::select! {
        r = tokio::time::timeout_at(connect_deadline, connect(&mut io, &mut buf, &cfg)) => r,
        () = hard.cancelled() => return,
    };
    let (version, client_id, keep_alive, username, password) = match hello {
        Ok(Some(h)) => h,
        Ok(None) => return,
        Err(_) => {
            tracing::debug!("MQTT: no CONNECT within MQTT_CONNECT_TIMEOUT; closed");
            return;
        }
    };
    let principal =
        match app
            .auth
            .check_login(username.as_deref(), password.as_deref(), chrono::Utc::now())
        {
            Ok(p) => p,
            Err(_) => {
                app.metrics
                    .refused(crate::metrics::RefusalReason::Unauthorized, 1);
                tracing::info!(client_id = %client_id, "MQTT: CONNECT not authorized");
                let _ = send(
                    &mut io,
                    version,
                    connack(ConnCode::NotAuthorized, &cfg),
                    &hard,
                )
                .await;
                return;
            }
        };
    if !send(&mut io, version, connack(ConnCode::Accepted, &cfg), &hard).await {
        return;
    }
    let _guard = MqttStats::connected(&cfg.stats);
    let span =
        tracing::info_span!("collector.mqtt", client_id = %client_id, version = version.as_str());
    session(
        io, buf, app, cfg, principal, version, keep_alive, graceful, hard,
    )
    .instrument(span)
    .await;
}

type Hello = (Version, String, u16, Option<String>, Option<String>);

/// Reads the CONNECT: `None` when the connection is to be closed (answered if need be).
async fn connect<IO>(io: &mut IO, buf: &mut BytesMut, cfg: &MqttConfig) -> Option<Hello>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let level = loop {
        if let Some(l) = wire::protocol_level(buf) {
            break l;
        }
        if buf.len() > 64 || io.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    };
    let version = match level {
        4 => Version::V311,
        5 => Version::V5,
        0 => return None,
        other => {
            // 3 is MQTT 3.1 ("MQIsdp"): CONNACK 0x01 "unacceptable protocol version".
            tracing::info!(level = other, "MQTT: unsupported protocol level; refused");
            let mut out = BytesMut::new();
            let refuse = Out::ConnAck {
                code: ConnCode::BadProtocol,
                receive_max: cfg.receive_max,
                max_packet: cfg.max_packet_u32(),
            };
            if wire::write(Version::V311, refuse, &mut out).is_ok() {
                let _ = io.write_all(&out).await;
            }
            return None;
        }
    };
    loop {
        match wire::read(version, buf, cfg.max_packet) {
            Ok(Some(In::Connect {
                client_id,
                keep_alive,
                username,
                password,
                ..
            })) => return Some((version, client_id, keep_alive, username, password)),
            Ok(Some(_)) => return None,
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "MQTT: bad CONNECT; closed");
                return None;
            }
        }
        if io.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

fn connack(code: ConnCode, cfg: &MqttConfig) -> Out {
    Out::ConnAck {
        code,
        receive_max: cfg.receive_max,
        max_packet: cfg.max_packet_u32(),
    }
}

/// Writes one packet; false when the connection is gone (or the hard stop came).
async fn send<IO>(io: &mut IO, version: Version, out: Out, hard: &CancellationToken) -> bool
where
    IO: AsyncWrite + Unpin,
{
    let mut bytes = BytesMut::new();
    if let Err(e) = wire::write(version, out, &mut bytes) {
        tracing::warn!(error = %e, "MQTT: cannot encode a packet; closing");
        return false;
    }
    tokio::select! {
        r = io.write_all(&bytes) => r.is_ok(),
        () = hard.cancelled() => false,
    }
}

#[allow(clippy::too_many_arguments)]
async fn session<IO, Q, S>(
    mut io: IO,
    mut buf: BytesMut,
    app: Arc<Collector<Q, S>>,
    cfg: Arc<MqttConfig>,
    principal: Principal,
    version: Version,
    keep_alive: u16,
    graceful: CancellationToken,
    hard: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
    Q: Queue,
    S: Store,
{
    let quiet = if keep_alive == 0 {
        cfg.idle_timeout
    } else {
        Duration::from_millis(u64::from(keep_alive) * 1500)
    };
    let window = usize::from(cfg.receive_max);
    let mut inflight = FuturesUnordered::new();
    let mut awaiting_rel: HashSet<u16> = HashSet::new();
    let mut deadline = Instant::now() + quiet;
    let mut stopping = false;
    loop {
        // Packets already buffered, while the window has room.
        while !stopping {
            let used = inflight.len() + awaiting_rel.len();
            if version == Version::V311 && used >= window {
                break;
            }
            let packet = match wire::read(version, &mut buf, cfg.max_packet) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(error = %e, "MQTT: packet refused; closing");
                    let code = match e {
                        wire::WireError::TooLarge(_) => DisconnectReasonCode::PacketTooLarge,
                        wire::WireError::Malformed(_) => DisconnectReasonCode::MalformedPacket,
                    };
                    disconnect(&mut io, version, code, &e.to_string(), &hard).await;
                    return;
                }
            };
            let answer = match packet {
                In::Publish {
                    qos,
                    pkid,
                    topic,
                    payload,
                } => {
                    if qos > 0 && used >= window {
                        cfg.stats.publish(qos, publish::Result::Refused);
                        let why = "more QoS 1/2 publishes in flight than Receive Maximum";
                        disconnect(
                            &mut io,
                            version,
                            DisconnectReasonCode::ReceiveMaximumExceeded,
                            why,
                            &hard,
                        )
                        .await;
                        return;
                    }
                    let job = publish::handle(
                        app.clone(),
                        cfg.clone(),
                        principal,
                        version,
                        qos,
                        pkid,
                        topic,
                        payload,
                    );
                    inflight.push(job);
                    None
                }
                In::PubRel(pkid) => {
                    awaiting_rel.remove(&pkid);
                    Some(Out::PubComp(pkid))
                }
                In::PingReq => Some(Out::PingResp),
                In::Subscribe { pkid, filters } => Some(Out::SubAck { pkid, filters }),
                In::Unsubscribe { pkid, filters } => Some(Out::UnsubAck { pkid, filters }),
                In::Disconnect => {
                    stopping = true;
                    None
                }
                In::Connect { .. } | In::Unexpected => {
                    disconnect(
                        &mut io,
                        version,
                        DisconnectReasonCode::ProtocolError,
                        "unexpected packet",
                        &hard,
                    )
                    .await;
                    return;
                }
            };
            if let Some(out) = answer
                && !send(&mut io, version, out, &hard).await
            {
                return;
            }
        }
        if stopping && inflight.is_empty() {
            if graceful.is_cancelled() {
                disconnect(
                    &mut io,
                    version,
                    DisconnectReasonCode::ServerShuttingDown,
                    "",
                    &hard,
                )
                .await;
            }
            let _ = io.shutdown().await;
            return;
        }
        let readable =
            !stopping && (version == Version::V5 || inflight.len() + awaiting_rel.len() < window);
        tokio::select! {
            biased;
            () = hard.cancelled() => return,
            Some(outcome) = inflight.next(), if !inflight.is_empty() => {
                deadline = Instant::now() + quiet;
                match outcome {
                Outcome::Nothing => {}
                Outcome::Ack(out) => {
                    if let Out::PubRec(pkid, wire::Ack::Success(_)) = &out {
                        awaiting_rel.insert(*pkid);
                    }
                    if !send(&mut io, version, out, &hard).await {
                        return;
                    }
                }
                Outcome::Close(why) => {
                    // No ack for what is not stored: the client resends on its next
                    // connection (3.1.1 has no negative acknowledgement).
                    tracing::info!(reason = %why, "MQTT: closing without an ack");
                    return;
                }
            }},
            () = graceful.cancelled(), if !stopping => stopping = true,
            r = io.read_buf(&mut buf), if readable => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => deadline = Instant::now() + quiet,
            },
            () = tokio::time::sleep_until(deadline), if readable => {
                tracing::info!(keep_alive, "MQTT: keep-alive passed (1.5 x) with nothing received; closing");
                disconnect(&mut io, version, DisconnectReasonCode::KeepAliveTimeout, "keep-alive timeout", &hard).await;
                return;
            }
        }
    }
}

/// MQTT 5: DISCONNECT with `code`; 3.1.1: nothing (the server just closes).
async fn disconnect<IO>(
    io: &mut IO,
    version: Version,
    code: DisconnectReasonCode,
    why: &str,
    hard: &CancellationToken,
) where
    IO: AsyncWrite + Unpin,
{
    if version == Version::V5 {
        let _ = send(io, version, Out::Disconnect(code, why.to_string()), hard).await;
    }
    let _ = io.shutdown().await;
}
