//! Prometheus metrics: the only file that spells metric names.
//!
//! [`Metrics`] holds typed handles registered in one `prometheus_client` registry; the
//! collector and the worker update them per request and per batch (never per metric), and
//! `GET /metrics` renders them. Label values come from fixed sets, the enums
//! [`EventStatus`] and [`ErrorType`] whose label strings are spelled here and nowhere
//! else, never from device ids or error text. HTTP responses are labelled by the matched
//! route template ([`Route`]), never by the raw path, so hostile paths add no series.
//! Process metrics (CPU, memory, descriptors) are read from `/proc` at each scrape
//! ([`crate::procstat`]).

use std::sync::Arc;

use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

mod labels;
mod mqtt;
use labels::status_labels;
pub use labels::{Component, ComponentLabel, HttpLabel, Route, RouteLabel};
pub use mqtt::MqttResult;

/// `nsready_http_request_duration_seconds` by route.
type HttpDurations = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// 0.1 ms to ~6.5 s in ×2 steps, then +Inf.
fn http_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

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

/// The `error_type` of `ingest_errors_total` for a store failure proven to be the
/// infrastructure's (connection lost, pool timeout, ping failing): counted once per failed
/// write or registry load, never per event, and never a dead letter's type.
const DATABASE_ERROR: &str = "database";

/// Labels of `nsready_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
    git_sha: &'static str,
}

/// The git commit the binary was built from (build.rs), "unknown" outside git.
pub const GIT_SHA: &str = match option_env!("NSREADY_GIT_SHA") {
    Some(sha) => sha,
    None => "unknown",
};

/// Process metrics, read from `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = crate::procstat::read();
        if let Some(v) = p.cpu_seconds {
            let m = enc.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time of this process, in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(v).encode(m)?;
        }
        let gauges: [(&str, &str, Option<f64>); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory of this process, in bytes",
                p.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory of this process, in bytes",
                p.virtual_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Open file descriptors of this process",
                p.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "Soft limit on open file descriptors",
                p.max_fds.map(|v| v as f64),
            ),
            (
                "process_start_time_seconds",
                "Start time of this process, seconds since the Unix epoch",
                p.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v).encode(m)?;
            }
        }
        Ok(())
    }
}

pub mod names;

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
    /// Age of the oldest message not yet committed, in milliseconds.
    pub oldest_age_ms: u64,
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
    up: Family<ComponentLabel, Gauge>,
    http: Family<HttpLabel, Counter>,
    http_seconds: HttpDurations,
    oldest_age: Gauge<f64, AtomicU64>,
    dlq_by_reason: Family<ErrorLabel, Gauge>,
    mqtt: mqtt::MqttMetrics,
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
        let up = Family::<ComponentLabel, Gauge>::default();
        registry.register(
            "nsready_up",
            "1 when this process reached the component at its last health reading, else 0",
            up.clone(),
        );
        let http = Family::<HttpLabel, Counter>::default();
        registry.register(
            "nsready_http_responses",
            "HTTP responses by matched route template and status class (429 and 503 by code)",
            http.clone(),
        );
        let http_seconds = HttpDurations::new_with_constructor(http_histogram as fn() -> Histogram);
        registry.register(
            "nsready_http_request_duration_seconds",
            "Time from a request's head to its response, by matched route template",
            http_seconds.clone(),
        );
        let oldest_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "ingest_queue_oldest_age_seconds",
            "Age of the oldest message not yet committed (0 when the queue is empty)",
            oldest_age.clone(),
        );
        let dlq_by_reason = Family::<ErrorLabel, Gauge>::default();
        registry.register(
            "ingest_dlq_depth_by_reason",
            "Dead letters by error type, as last counted for /v1/health (global)",
            dlq_by_reason.clone(),
        );
        registry.register(
            "nsready_build",
            "Version and git commit of the running binary",
            Info::new(BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
                git_sha: GIT_SHA,
            }),
        );
        registry.register_collector(Box::new(ProcessCollector));
        Metrics {
            inner: Arc::new(Inner {
                mqtt: mqtt::MqttMetrics::register(&mut registry),
                up,
                http,
                http_seconds,
                oldest_age,
                dlq_by_reason,
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

    /// Events this process counted so far with `status` (the status page's rates).
    pub fn event_total(&self, status: EventStatus) -> u64 {
        self.inner
            .events
            .get_or_create(&StatusLabel {
                status: status.as_str(),
            })
            .get()
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
        i.oldest_age.set(s.oldest_age_ms as f64 / 1000.0);
    }

    /// The DLQ counted by error type (labels outside the platform's set count as `other`).
    pub fn dlq_by_reason<'a>(&self, counts: impl IntoIterator<Item = (&'a str, u64)>) {
        let family = &self.inner.dlq_by_reason;
        family.clear();
        for (label, n) in counts {
            let error_type = ErrorType::from_label(label).map_or("other", ErrorType::as_str);
            family
                .get_or_create(&ErrorLabel { error_type })
                .inc_by(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Whether this process reached a component at its last reading.
    pub fn up(&self, component: Component, up: bool) {
        self.inner
            .up
            .get_or_create(&ComponentLabel {
                component: component.as_str(),
            })
            .set(i64::from(up));
    }

    /// Observes one HTTP request's duration (head received → response ready).
    pub fn http_duration(&self, route: Route, seconds: f64) {
        self.inner
            .http_seconds
            .get_or_create(&RouteLabel {
                route: route.as_str(),
            })
            .observe(seconds);
    }

    /// Counts one HTTP response.
    pub fn http_response(&self, route: Route, status: u16) {
        let (status_class, code) = status_labels(status);
        self.inner
            .http
            .get_or_create(&HttpLabel {
                route: route.as_str(),
                status_class,
                code,
            })
            .inc();
    }

    /// Counts a store failure proven to be the infrastructure's
    /// (`ingest_errors_total{error_type="database"}`).
    pub fn database_error(&self) {
        self.inner
            .errors
            .get_or_create(&ErrorLabel {
                error_type: DATABASE_ERROR,
            })
            .inc();
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
mod tests;
