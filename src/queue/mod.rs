//! The durable queue between the collector and the workers: one trait, two implementations.
//!
//! [`Queue`] is what the collector publishes into and the workers pull from: publish waits
//! for a durable acknowledgement; fetch hands out [`Delivery`]s that stay owed until
//! `ack`, `nak` or `dead_letter` settles them (or the ack wait expires and they come back).
//! `jetstream` speaks NATS JetStream (stream, durable pull consumer, DLQ stream);
//! `embedded` keeps the same semantics in a SQLite file on local disk. Nothing outside
//! these two files knows which one runs.

pub mod embedded;
pub mod jetstream;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::metrics::ErrorType;

pub use embedded::EmbeddedQueue;
pub use jetstream::JetStreamQueue;

/// Errors of the queue. `Full` and `Unavailable` are what the collector turns into 503.
#[derive(Clone, Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue holds its maximum (messages or bytes); nothing is discarded to make room.
    #[error("queue is full")]
    Full,
    /// The queue did not answer (down, disconnected, or slower than the publish timeout).
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// Provisioning or configuration problem (stream settings, permissions, files).
    #[error("queue setup failed: {0}")]
    Setup(String),
    /// The message is larger than the queue accepts (NATS `max_payload`); retrying cannot
    /// help.
    #[error("message of {size} bytes exceeds the queue's limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// A dead letter or message asked for does not exist.
    #[error("no message with sequence {0}")]
    NotFound(u64),
}

/// One message to publish.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Deduplication id (`Nats-Msg-Id`): the same id inside the duplicate window is stored once.
    pub msg_id: String,
    /// Trace id carried as a header and in the body.
    pub trace_id: String,
    /// The envelope bytes.
    pub payload: Bytes,
}

/// What the queue said about a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// Sequence in the stream.
    pub seq: u64,
    /// True when the message id was seen inside the duplicate window (stored once).
    pub duplicate: bool,
}

/// A message handed to a worker. It stays unacknowledged (and counted in `ack_pending`)
/// until settled; `H` is the implementation's handle to settle it.
#[derive(Debug)]
pub struct Delivery<H> {
    /// The message body as published.
    pub payload: Bytes,
    /// Sequence of the message in the stream.
    pub seq: u64,
    /// How many times it has been delivered, this time included (1 on first delivery).
    pub delivered: u64,
    /// Trace id header, when the producer set one.
    pub trace_id: Option<String>,
    /// When the queue stored it (for publish → commit latency).
    pub published_at: Option<DateTime<Utc>>,
    /// Implementation handle used to settle the delivery.
    pub handle: H,
}

/// Why a message goes to the dead letter queue.
#[derive(Clone, Debug)]
pub struct DeadLetterReason {
    /// One of the platform's error types (`validation_error`, `device_not_found`, …).
    pub error_type: ErrorType,
    /// Human readable reason naming the field or rule (the worker makes it storable; the
    /// queue bounds what it puts in headers all the same).
    pub reason: String,
}

/// A message in the dead letter queue, with the headers that explain it.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    /// Sequence in the DLQ.
    pub seq: u64,
    /// Sequence the message had in the ingest stream.
    pub original_seq: u64,
    pub error_type: String,
    pub reason: String,
    /// Deliveries used before it was dead-lettered.
    pub delivered: u64,
    pub trace_id: Option<String>,
    pub time: Option<DateTime<Utc>>,
    /// The original payload, as published.
    #[serde(skip)]
    pub payload: Bytes,
}

/// Dead letters counted by error type, without reading their payloads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DlqCounts {
    /// Error type → dead letters.
    pub counts: std::collections::BTreeMap<String, u64>,
    /// False when only part of the DLQ was counted (the limit, or time, ran out).
    pub complete: bool,
}

/// Queue state for health, metrics and `nsready status`, read fresh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Stored but not yet delivered to any worker.
    pub pending: u64,
    /// Delivered and not yet acknowledged (includes NAKed messages waiting for redelivery).
    pub ack_pending: u64,
    /// Messages delivered more than once that are still unacknowledged.
    pub redelivered: u64,
    /// Pull requests waiting on the server.
    pub waiting_pulls: u64,
    /// Messages in the dead letter queue.
    pub dlq_depth: u64,
    /// Age in milliseconds of the oldest message not yet committed (0 when the queue is
    /// empty): how late the data in the table is at worst.
    pub oldest_age_ms: u64,
    /// Highest sequence the DLQ has given out (0 before the first dead letter): where the
    /// status page's list of the newest dead letters starts.
    pub dlq_last_seq: u64,
}

impl QueueStats {
    /// Everything not yet committed: pending + ack pending (DESIGN.md §3.6).
    pub fn depth(&self) -> u64 {
        self.pending + self.ack_pending
    }
}

/// The durable queue. Implementations are cheap to clone (shared handles inside).
///
/// Methods return `impl Future + Send` so that workers can be generic over the queue.
pub trait Queue: Clone + Send + Sync + 'static {
    /// Handle carried by each delivery to settle it.
    type Handle: Send + Sync + 'static;

    /// Publishes and waits (bounded by the publish timeout) until the queue has stored the
    /// message durably.
    fn publish(&self, msg: Outgoing) -> impl Future<Output = Result<Published, QueueError>> + Send;

    /// Publishes many messages with their acknowledgements in flight together; one result
    /// per message, in order.
    fn publish_many(
        &self,
        msgs: Vec<Outgoing>,
    ) -> impl Future<Output = Vec<Result<Published, QueueError>>> + Send;

    /// Pulls up to `max` messages, waiting at most `wait` for the first ones.
    fn fetch(
        &self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery<Self::Handle>>, QueueError>> + Send {
        self.fetch_bounded(max, usize::MAX, wait)
    }

    /// Pulls up to `max` messages holding at most about `max_bytes` of payload, waiting at
    /// most `wait` for the first ones. A batch always holds at least one message when one
    /// is available, however large: no message is stranded by the byte cap.
    fn fetch_bounded(
        &self,
        max: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery<Self::Handle>>, QueueError>> + Send;

    /// Acknowledges processed messages; the queue removes them.
    fn ack(
        &self,
        deliveries: Vec<Delivery<Self::Handle>>,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Gives messages back for redelivery after `delay`.
    fn nak(
        &self,
        deliveries: Vec<Delivery<Self::Handle>>,
        delay: Duration,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Tells the queue these messages are still being worked on (resets the ack wait).
    fn in_progress(
        &self,
        deliveries: &[&Delivery<Self::Handle>],
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Stores the message in the DLQ with its reason (idempotently, keyed by its original
    /// sequence), then removes the original. A crash between the two leaves the original
    /// to be redelivered: nothing is lost. On an error the delivery is still owed (the
    /// caller NAKs it).
    ///
    /// Returns the dead letter's sequence in the DLQ (what `nsready dlq show` takes); a
    /// retry of the same message gives the sequence stored the first time.
    fn dead_letter(
        &self,
        delivery: &Delivery<Self::Handle>,
        reason: &DeadLetterReason,
    ) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Current depth and consumer state.
    fn stats(&self) -> impl Future<Output = Result<QueueStats, QueueError>> + Send;

    /// Dead letters, oldest first, from sequence `from` on, at most `limit`.
    fn dlq_list(
        &self,
        from: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, QueueError>> + Send;

    /// The DLQ counted by error type, reading at most `limit` letters' headers and never a
    /// payload (health calls it; it must stay cheap).
    fn dlq_counts(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<DlqCounts, QueueError>> + Send;

    /// Removes one dead letter (after a replay or on purge).
    fn dlq_remove(&self, seq: u64) -> impl Future<Output = Result<(), QueueError>> + Send;
}
