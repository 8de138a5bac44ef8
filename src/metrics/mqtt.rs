//! The MQTT listener's metrics: `nsready_mqtt_connections` (gauge),
//! `nsready_mqtt_publishes_total{qos,result}`, `nsready_mqtt_ack_seconds` (PUBLISH read to
//! its acknowledgement's decision: the queue's durable ack included).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What became of a PUBLISH (`result` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MqttResult {
    /// Queued durably, acknowledged.
    Queued,
    /// Refused, queued for the DLQ with its reason (3.1.1), acknowledged.
    DeadLettered,
    /// Refused with a reason code (5); nothing stored.
    Refused,
    /// The queue did not store it: no success ack (5: reason code; 3.1.1: connection closed).
    NotStored,
}

impl MqttResult {
    pub fn as_str(self) -> &'static str {
        match self {
            MqttResult::Queued => "queued",
            MqttResult::DeadLettered => "dead_lettered",
            MqttResult::Refused => "refused",
            MqttResult::NotStored => "not_stored",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishLabel {
    qos: &'static str,
    result: &'static str,
}

/// Handles of the MQTT metrics.
#[derive(Debug)]
pub struct MqttMetrics {
    connections: Gauge,
    publishes: Family<PublishLabel, Counter>,
    ack: Histogram,
}

impl MqttMetrics {
    pub fn register(registry: &mut Registry) -> MqttMetrics {
        let m = MqttMetrics {
            connections: Gauge::default(),
            publishes: Family::default(),
            ack: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
        };
        registry.register(
            "nsready_mqtt_connections",
            "Open MQTT sessions (CONNECT accepted)",
            m.connections.clone(),
        );
        registry.register(
            "nsready_mqtt_publishes",
            "MQTT PUBLISH packets by QoS and what became of them",
            m.publishes.clone(),
        );
        registry.register(
            "nsready_mqtt_ack_seconds",
            "MQTT PUBLISH read to its acknowledgement (the queue's durable ack included)",
            m.ack.clone(),
        );
        m
    }

    pub fn connections(&self, delta: i64) {
        self.connections.inc_by(delta);
    }

    pub fn publish(&self, qos: u8, result: MqttResult) {
        let qos = match qos {
            0 => "0",
            1 => "1",
            _ => "2",
        };
        self.publishes
            .get_or_create(&PublishLabel {
                qos,
                result: result.as_str(),
            })
            .inc();
    }

    pub fn ack_seconds(&self, secs: f64) {
        self.ack.observe(secs);
    }
}

impl super::Metrics {
    /// MQTT sessions opened (+1) or closed (-1).
    pub fn mqtt_connections(&self, delta: i64) {
        self.inner.mqtt.connections(delta);
    }
    /// A PUBLISH's outcome.
    pub fn mqtt_publish(&self, qos: u8, result: MqttResult) {
        self.inner.mqtt.publish(qos, result);
    }
    /// PUBLISH read to its acknowledgement.
    pub fn mqtt_ack_seconds(&self, secs: f64) {
        self.inner.mqtt.ack_seconds(secs);
    }
}
