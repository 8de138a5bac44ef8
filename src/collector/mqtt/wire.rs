//! The wire, one level up: rumqttc's `mqttbytes` codecs for 3.1.1 (`v4`) and 5 (`v5`)
//! behind one small vocabulary ([`In`], [`Out`]), so the connection loop is written once.
//!
//! Codec choice: rumqttc 0.25 with default features off brings only `bytes` and its own
//! packet types (no TLS stack, no client runtime when unused); it is maintained by the
//! rumqtt project, with both protocol versions. `mqttbytes` (the standalone crate) stopped
//! at 0.6 in 2021; `mqtt-protocol` has 5 only in part; `ntex-mqtt` is a whole server
//! framework on its own runtime. The protocol level is peeked here from the CONNECT
//! header ([`protocol_level`]) to choose the codec; 3 (MQIsdp, 3.1) is refused.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

/// The protocol version of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

/// A packet from a client, reduced to what an ingest-only server needs.
#[derive(Debug)]
pub enum In {
    Connect {
        client_id: String,
        keep_alive: u16,
        clean: bool,
        username: Option<String>,
        password: Option<String>,
    },
    Publish {
        qos: u8,
        pkid: u16,
        topic: String,
        payload: Bytes,
    },
    PubRel(u16),
    PingReq,
    Subscribe {
        pkid: u16,
        filters: usize,
    },
    Unsubscribe {
        pkid: u16,
        filters: usize,
    },
    Disconnect,
    /// A packet a client must not send to a server (CONNACK, SUBACK, ...).
    Unexpected,
}

/// The outcome of one QoS 1/2 publish, as MQTT 5 reason codes say it (3.1.1 only knows
/// success: its refusals are handled by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ack {
    Success(Option<String>),
    PayloadFormatInvalid(String),
    NotAuthorized(String),
    TopicNameInvalid(String),
    QuotaExceeded(String),
    Unspecified(String),
}

/// A CONNACK's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnCode {
    Accepted,
    BadProtocol,
    NotAuthorized,
    ServerUnavailable,
}

/// Packets the server sends.
#[derive(Debug)]
pub enum Out {
    ConnAck {
        code: ConnCode,
        receive_max: u16,
        max_packet: u32,
    },
    PubAck(u16, Ack),
    PubRec(u16, Ack),
    PubComp(u16),
    PingResp,
    SubAck {
        pkid: u16,
        filters: usize,
    },
    UnsubAck {
        pkid: u16,
        filters: usize,
    },
    /// MQTT 5 only (3.1.1 servers just close).
    Disconnect(v5::DisconnectReasonCode, String),
}

/// Why a packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("packet larger than the limit of {0} bytes")]
    TooLarge(usize),
    #[error("malformed packet: {0}")]
    Malformed(String),
}

/// The protocol level byte of a complete or partial CONNECT in `buf` (`None` until enough
/// bytes are there). A first packet that is no CONNECT gives `Some(0)`.
pub fn protocol_level(buf: &[u8]) -> Option<u8> {
    let first = *buf.first()?;
    if first >> 4 != 1 {
        return Some(0);
    }
    // Remaining length: 1 to 4 bytes of 7 bits each.
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        i += 1;
        if b & 0x80 == 0 || i > 4 {
            break;
        }
    }
    let name_len = u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]) as usize;
    buf.get(i + 2 + name_len).copied()
}

/// The next complete packet in `buf` (`Ok(None)`: more bytes needed). A packet over
/// `max` is refused from its fixed header, before its body is buffered.
pub fn read(version: Version, buf: &mut BytesMut, max: usize) -> Result<Option<In>, WireError> {
    // A bare DISCONNECT (no reason code: 0 = normal) is valid in 5 too, but the v5 codec
    // wants a body.
    if buf.starts_with(&[0xE0, 0x00]) {
        let _ = buf.split_to(2);
        return Ok(Some(In::Disconnect));
    }
    match version {
        Version::V311 => match v4::Packet::read(buf, max) {
            Ok(p) => Ok(Some(from_v4(p))),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)) => {
                Err(WireError::TooLarge(max))
            }
            Err(e) => Err(WireError::Malformed(e.to_string())),
        },
        Version::V5 => {
            let limit = u32::try_from(max).unwrap_or(u32::MAX);
            match v5::Packet::read(buf, Some(limit)) {
                Ok(p) => Ok(Some(from_v5(p))),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }) => {
                    Err(WireError::TooLarge(max))
                }
                Err(e) => Err(WireError::Malformed(e.to_string())),
            }
        }
    }
}

fn from_v4(p: v4::Packet) -> In {
    match p {
        v4::Packet::Connect(c) => In::Connect {
            client_id: c.client_id,
            keep_alive: c.keep_alive,
            clean: c.clean_session,
            username: c.login.as_ref().map(|l| l.username.clone()),
            password: c.login.map(|l| l.password),
        },
        v4::Packet::Publish(p) => In::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            topic: p.topic,
            payload: p.payload,
        },
        v4::Packet::PubRel(r) => In::PubRel(r.pkid),
        v4::Packet::PingReq => In::PingReq,
        v4::Packet::Subscribe(s) => In::Subscribe {
            pkid: s.pkid,
            filters: s.filters.len(),
        },
        v4::Packet::Unsubscribe(u) => In::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics.len(),
        },
        v4::Packet::Disconnect => In::Disconnect,
        _ => In::Unexpected,
    }
}

fn from_v5(p: v5::Packet) -> In {
    match p {
        v5::Packet::Connect(c, _will, login) => In::Connect {
            client_id: c.client_id,
            keep_alive: c.keep_alive,
            clean: c.clean_start,
            username: login.as_ref().map(|l| l.username.clone()),
            password: login.map(|l| l.password),
        },
        v5::Packet::Publish(p) => In::Publish {
            qos: p.qos as u8,
            pkid: p.pkid,
            // A topic alias without a name is not supported (Topic Alias Maximum is 0).
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload,
        },
        v5::Packet::PubRel(r) => In::PubRel(r.pkid),
        v5::Packet::PingReq(_) => In::PingReq,
        v5::Packet::Subscribe(s) => In::Subscribe {
            pkid: s.pkid,
            filters: s.filters.len(),
        },
        v5::Packet::Unsubscribe(u) => In::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters.len(),
        },
        v5::Packet::Disconnect(_) => In::Disconnect,
        _ => In::Unexpected,
    }
}

/// Appends `out` to `buf` in the connection's version.
pub fn write(version: Version, out: Out, buf: &mut BytesMut) -> Result<(), WireError> {
    let r = match version {
        Version::V311 => to_v4(out)
            .write(buf, usize::MAX)
            .map_err(|e| WireError::Malformed(e.to_string())),
        Version::V5 => to_v5(out)
            .write(buf, None)
            .map_err(|e| WireError::Malformed(e.to_string())),
    };
    r.map(|_| ())
}

fn to_v4(out: Out) -> v4::Packet {
    match out {
        Out::ConnAck { code, .. } => v4::Packet::ConnAck(v4::ConnAck::new(
            match code {
                ConnCode::Accepted => v4::ConnectReturnCode::Success,
                ConnCode::BadProtocol => v4::ConnectReturnCode::RefusedProtocolVersion,
                ConnCode::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                ConnCode::ServerUnavailable => v4::ConnectReturnCode::ServiceUnavailable,
            },
            false,
        )),
        Out::PubAck(pkid, _) => v4::Packet::PubAck(v4::PubAck::new(pkid)),
        Out::PubRec(pkid, _) => v4::Packet::PubRec(v4::PubRec::new(pkid)),
        Out::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(pkid)),
        Out::PingResp => v4::Packet::PingResp,
        Out::SubAck { pkid, filters } => v4::Packet::SubAck(v4::SubAck::new(
            pkid,
            vec![v4::SubscribeReasonCode::Failure; filters],
        )),
        Out::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)),
        Out::Disconnect(..) => v4::Packet::Disconnect,
    }
}

fn reason(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn to_v5(out: Out) -> v5::Packet {
    match out {
        Out::ConnAck {
            code,
            receive_max,
            max_packet,
        } => {
            let code = match code {
                ConnCode::Accepted => v5::ConnectReturnCode::Success,
                ConnCode::BadProtocol => v5::ConnectReturnCode::UnsupportedProtocolVersion,
                ConnCode::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                ConnCode::ServerUnavailable => v5::ConnectReturnCode::ServerUnavailable,
            };
            let properties = v5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: Some(receive_max),
                max_qos: None,
                retain_available: Some(0),
                max_packet_size: Some(max_packet),
                assigned_client_identifier: None,
                topic_alias_max: Some(0),
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: Some(0),
                subscription_identifiers_available: Some(0),
                shared_subscription_available: Some(0),
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            };
            v5::Packet::ConnAck(v5::ConnAck {
                session_present: false,
                code,
                properties: Some(properties),
            })
        }
        Out::PubAck(pkid, ack) => {
            let (reason_code, text) = match ack {
                Ack::Success(t) => (v5::PubAckReason::Success, t.unwrap_or_default()),
                Ack::PayloadFormatInvalid(t) => (v5::PubAckReason::PayloadFormatInvalid, t),
                Ack::NotAuthorized(t) => (v5::PubAckReason::NotAuthorized, t),
                Ack::TopicNameInvalid(t) => (v5::PubAckReason::TopicNameInvalid, t),
                Ack::QuotaExceeded(t) => (v5::PubAckReason::QuotaExceeded, t),
                Ack::Unspecified(t) => (v5::PubAckReason::UnspecifiedError, t),
            };
            v5::Packet::PubAck(v5::PubAck {
                pkid,
                reason: reason_code,
                properties: reason(text).map(|r| v5::PubAckProperties {
                    reason_string: Some(r),
                    user_properties: Vec::new(),
                }),
            })
        }
        Out::PubRec(pkid, ack) => {
            let (reason_code, text) = match ack {
                Ack::Success(t) => (v5::PubRecReason::Success, t.unwrap_or_default()),
                Ack::PayloadFormatInvalid(t) => (v5::PubRecReason::PayloadFormatInvalid, t),
                Ack::NotAuthorized(t) => (v5::PubRecReason::NotAuthorized, t),
                Ack::TopicNameInvalid(t) => (v5::PubRecReason::TopicNameInvalid, t),
                Ack::QuotaExceeded(t) => (v5::PubRecReason::QuotaExceeded, t),
                Ack::Unspecified(t) => (v5::PubRecReason::UnspecifiedError, t),
            };
            v5::Packet::PubRec(v5::PubRec {
                pkid,
                reason: reason_code,
                properties: reason(text).map(|r| v5::PubRecProperties {
                    reason_string: Some(r),
                    user_properties: Vec::new(),
                }),
            })
        }
        Out::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp {
            pkid,
            reason: v5::PubCompReason::Success,
            properties: None,
        }),
        Out::PingResp => v5::Packet::PingResp(v5::PingResp),
        Out::SubAck { pkid, filters } => v5::Packet::SubAck(v5::SubAck {
            pkid,
            return_codes: vec![v5::SubscribeReasonCode::NotAuthorized; filters],
            properties: Some(v5::SubAckProperties {
                reason_string: Some("nsready is ingest-only: SUBSCRIBE is not supported".into()),
                user_properties: Vec::new(),
            }),
        }),
        Out::UnsubAck { pkid, filters } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid,
            reasons: vec![v5::UnsubAckReason::NoSubscriptionExisted; filters],
            properties: None,
        }),
        Out::Disconnect(reason_code, text) => v5::Packet::Disconnect(v5::Disconnect {
            reason_code,
            properties: reason(text).map(|r| v5::DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(r),
                user_properties: Vec::new(),
                server_reference: None,
            }),
        }),
    }
}
