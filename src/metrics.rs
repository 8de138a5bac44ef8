//! Prometheus metrics: the only file that spells metric names.
//!
//! [`Metrics`] holds typed handles registered in one `prometheus_client` registry; the
//! collector and the worker update them per request and per batch (never per metric), and
//! `GET /metrics` renders them. Label values come from fixed sets, the enums
//! [`EventStatus`] and [`ErrorType`] whose label strings are spelled here and nowhere
//! else, never from device ids or error text.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// What became of events (`ingest_events_total{status}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventStatus {
    /// Accepted by the collector (the queue stored it).
    Queued,
    /// Committed to `ingest_events`.
    Success,
    /// Dead-lettered.
    Dlq,
}

impl EventStatus {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Queued => "queued",
            EventStatus::Success => "success",
            EventStatus::Dlq => "dlq",
        }
    }
}

/// Why an event was refused or dead-lettered: the platform's error types
/// (`ingest_errors_total{error_type}`, the DLQ's error type header, `error_logs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// Not JSON, or not UTF-8.
    JsonDecode,
    /// JSON that is neither an envelope nor a bare event.
    InvalidFormat,
    /// Breaks a rule of the event model or a business check (inactive device, ownership).
    ValidationError,
    /// The device is not in the registry.
    DeviceNotFound,
    /// A parameter key is not a template.
    ParameterNotFound,
    /// A parameter key is a template of another project than the device's (strict mode).
    ParameterNotInProject,
    /// The database refuses the rows' data (a value it can never store, a constraint).
    Integrity,
    /// The database refused the rows for another reason that bisecting pinned on this
    /// message (any other SQLSTATE, a statement timeout), after its retries.
    StoreRejected,
}

impl ErrorType {
    /// Every error type.
    pub const ALL: [ErrorType; 8] = [
        ErrorType::JsonDecode,
        ErrorType::InvalidFormat,
        ErrorType::ValidationError,
        ErrorType::DeviceNotFound,
        ErrorType::ParameterNotFound,
        ErrorType::ParameterNotInProject,
        ErrorType::Integrity,
        ErrorType::StoreRejected,
    ];

    /// The label value (also the DLQ header and the `error_logs` context value).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::JsonDecode => "json_decode",
            ErrorType::InvalidFormat => "invalid_format",
            ErrorType::ValidationError => "validation_error",
            ErrorType::DeviceNotFound => "device_not_found",
            ErrorType::ParameterNotFound => "parameter_not_found",
            ErrorType::ParameterNotInProject => "parameter_not_in_project",
            ErrorType::Integrity => "integrity",
            ErrorType::StoreRejected => "store_rejected",
        }
    }

    /// The error type of a label, for modules that still speak strings (the event
    /// decoder, the registry checks); None for an unknown label.
    pub fn from_label(label: &str) -> Option<ErrorType> {
        ErrorType::ALL.into_iter().find(|t| t.as_str() == label)
    }
}

/// Why the collector refused events before queueing them for a reason other than their
/// shape (`ingest_refused_total{reason}`): authentication, authorization, rate limit.
/// Device-free on purpose: a label per device would grow without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// Missing, unknown or expired bearer token (401; counted per request).
    Unauthorized,
    /// A token used for another device's event (403, or a batch item; per event).
    Forbidden,
    /// The device is over INGEST_RATE_LIMIT (429, or a batch item; per event).
    RateLimited,
}

impl RefusalReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Unauthorized => "unauthorized",
            RefusalReason::Forbidden => "forbidden",
            RefusalReason::RateLimited => "rate_limited",
        }
    }
}

/// Label of `ingest_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `unauthorized`, `forbidden` or `rate_limited`.
    pub reason: &'static str,
}

/// Label of `ingest_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// `queued`, `success` or `dlq`.
    pub status: &'static str,
}

/// Label of `ingest_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    /// One of the platform's error types.
    pub error_type: &'static str,
}

/// Names of the metrics as scraped (counters with prometheus' `_total` suffix), for the
/// readers of `/metrics` (loadgen's scraper): they spell no metric name of their own.
pub mod names {
    /// Histogram: publish → commit, per event.
    pub const PROCESSING_SECONDS: &str = "ingest_processing_duration_seconds";
    /// Histogram: one batch's database write.
    pub const DB_WRITE_SECONDS: &str = "ingest_db_write_duration_seconds";
    /// Histogram: messages per committed batch.
    pub const BATCH_SIZE: &str = "ingest_batch_size";
    /// Histogram: the collector's wait for the queue's ack.
    pub const PUBLISH_SECONDS: &str = "ingest_publish_duration_seconds";
    /// Counter: rows written.
    pub const ROWS_TOTAL: &str = "ingest_rows_total";
    /// Counter: events by status.
    pub const EVENTS_TOTAL: &str = "ingest_events_total";
    /// Counter: requests or events refused by auth or the rate limit, by reason.
    pub const REFUSED_TOTAL: &str = "ingest_refused_total";
}

/// The queue's state as the gauges show it: plain numbers, so this module needs no queue
/// types (the caller fills it from its `QueueStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueGauges {
    /// Not yet committed: pending + ack pending.
    pub depth: u64,
    pub pending: u64,
    pub ack_pending: u64,
    pub redelivered: u64,
    pub dlq_depth: u64,
}

/// Every metric of the service. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    events: Family<StatusLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
    queue_depth: Gauge,
    consumer_pending: Gauge,
    consumer_ack_pending: Gauge,
    consumer_redelivered: Gauge,
    dlq_depth: Gauge,
    processing: Histogram,
    batch_size: Histogram,
    db_write: Histogram,
    publish: Histogram,
    rows: Counter,
    redeliveries: Counter,
    stalled: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let events = Family::<StatusLabel, Counter>::default();
        registry.register(
            names::EVENTS_TOTAL.trim_end_matches("_total"),
            "Events by outcome: queued (accepted by the collector), success (committed), dlq",
            events.clone(),
        );
        let errors = Family::<ErrorLabel, Counter>::default();
        registry.register(
            "ingest_errors",
            "Errors by platform error type",
            errors.clone(),
        );
        let refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            names::REFUSED_TOTAL.trim_end_matches("_total"),
            "Ingest refused by authentication (per request), authorization or the per-device \
             rate limit (per event)",
            refused.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "ingest_queue_depth",
            "Messages not yet committed: consumer pending + ack pending",
            queue_depth.clone(),
        );
        let consumer_pending = Gauge::default();
        registry.register(
            "ingest_consumer_pending",
            "Messages stored and not yet delivered",
            consumer_pending.clone(),
        );
        let consumer_ack_pending = Gauge::default();
        registry.register(
            "ingest_consumer_ack_pending",
            "Messages delivered and not yet acknowledged",
            consumer_ack_pending.clone(),
        );
        let consumer_redelivered = Gauge::default();
        registry.register(
            "ingest_consumer_redelivered",
            "Unacknowledged messages delivered more than once",
            consumer_redelivered.clone(),
        );
        let dlq_depth = Gauge::default();
        registry.register(
            "ingest_dlq_depth",
            "Messages in the dead letter queue",
            dlq_depth.clone(),
        );
        let processing = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            names::PROCESSING_SECONDS,
            "Time from publish to commit, per event",
            processing.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            names::BATCH_SIZE,
            "Messages per worker batch",
            batch_size.clone(),
        );
        let db_write = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            names::DB_WRITE_SECONDS,
            "Duration of one batch upsert transaction",
            db_write.clone(),
        );
        let publish = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            names::PUBLISH_SECONDS,
            "Time the collector waits for the queue's durable acknowledgement",
            publish.clone(),
        );
        let rows = Counter::default();
        registry.register(
            names::ROWS_TOTAL.trim_end_matches("_total"),
            "Rows upserted into ingest_events",
            rows.clone(),
        );
        let redeliveries = Counter::default();
        registry.register(
            "ingest_redeliveries",
            "Deliveries of messages that had been delivered before",
            redeliveries.clone(),
        );
        let stalled = Gauge::default();
        registry.register(
            "ingest_worker_stalled",
            "1 when the queue is not empty and nothing was committed for STALL_AFTER",
            stalled.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                events,
                errors,
                refused,
                queue_depth,
                consumer_pending,
                consumer_ack_pending,
                consumer_redelivered,
                dlq_depth,
                processing,
                batch_size,
                db_write,
                publish,
                rows,
                redeliveries,
                stalled,
            }),
        }
    }

    /// Counts events by outcome.
    pub fn events(&self, status: EventStatus, n: u64) {
        self.inner
            .events
            .get_or_create(&StatusLabel {
                status: status.as_str(),
            })
            .inc_by(n);
    }

    /// Counts errors by type.
    pub fn error(&self, error_type: ErrorType, n: u64) {
        self.inner
            .errors
            .get_or_create(&ErrorLabel {
                error_type: error_type.as_str(),
            })
            .inc_by(n);
    }

    /// Counts refusals by reason.
    pub fn refused(&self, reason: RefusalReason, n: u64) {
        self.inner
            .refused
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc_by(n);
    }

    /// Records the queue state read for health.
    pub fn queue_stats(&self, s: QueueGauges) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let i = &self.inner;
        i.queue_depth.set(g(s.depth));
        i.consumer_pending.set(g(s.pending));
        i.consumer_ack_pending.set(g(s.ack_pending));
        i.consumer_redelivered.set(g(s.redelivered));
        i.dlq_depth.set(g(s.dlq_depth));
    }

    /// Publish → commit latency of one event.
    pub fn processing_seconds(&self, secs: f64) {
        self.inner.processing.observe(secs);
    }

    /// A committed batch: its size, its write time, its rows.
    pub fn batch_committed(&self, messages: usize, rows: u64, write_secs: f64) {
        self.inner.batch_size.observe(messages as f64);
        self.inner.db_write.observe(write_secs);
        self.inner.rows.inc_by(rows);
    }

    /// The collector's wait for a publish acknowledgement.
    pub fn publish_seconds(&self, secs: f64) {
        self.inner.publish.observe(secs);
    }

    /// Deliveries that are redeliveries.
    pub fn redeliveries(&self, n: u64) {
        self.inner.redeliveries.inc_by(n);
    }

    /// Stall flag for the consumer.
    pub fn stalled(&self, stalled: bool) {
        self.inner.stalled.set(i64::from(stalled));
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an error here would be a bug in the encoder.
        if prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_the_platform_strings_and_round_trip() {
        let labels: Vec<&str> = ErrorType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            labels,
            [
                "json_decode",
                "invalid_format",
                "validation_error",
                "device_not_found",
                "parameter_not_found",
                "parameter_not_in_project",
                "integrity",
                "store_rejected"
            ]
        );
        for t in ErrorType::ALL {
            assert_eq!(ErrorType::from_label(t.as_str()), Some(t));
        }
        assert_eq!(ErrorType::from_label("nope"), None);
        assert_eq!(EventStatus::Queued.as_str(), "queued");
        assert_eq!(EventStatus::Success.as_str(), "success");
        assert_eq!(EventStatus::Dlq.as_str(), "dlq");
    }
}
