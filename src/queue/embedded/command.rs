//! The messages between callers and the queue thread: one [`Op`] per `Queue` method, its
//! [`Answer`], and the oneshot channel that carries the answer back after the commit.
//!
//! `mod.rs` builds commands and unpacks answers; `engine.rs` executes them. Keeping the
//! vocabulary apart from both keeps each of them about one thing.

use std::time::Duration;

use tokio::sync::oneshot;

use super::EmbeddedHandle;
use crate::queue::{DeadLetter, Outgoing, Published, QueueError, QueueStats};

/// One request to the queue thread with the channel its answer goes back on.
pub(super) struct Command {
    pub(super) op: Op,
    /// Answered once the group this command ran in has committed (or failed).
    pub(super) reply: oneshot::Sender<Result<Answer, QueueError>>,
}

/// What a command asks for; one variant per [`crate::queue::Queue`] method.
pub(super) enum Op {
    Publish(Vec<Outgoing>),
    Fetch {
        max: usize,
        /// Payload bytes the batch may hold (at least one message whatever its size).
        max_bytes: usize,
    },
    Ack(Vec<u64>),
    Nak {
        handles: Vec<EmbeddedHandle>,
        delay: Duration,
    },
    Touch(Vec<EmbeddedHandle>),
    DeadLetter {
        handle: EmbeddedHandle,
        error_type: &'static str,
        reason: String,
    },
    Stats,
    DlqList {
        from: u64,
        limit: usize,
    },
    DlqRemove(u64),
    /// Dead letters counted by error type (no payload read).
    DlqCounts,
    /// Runs raw SQL on the thread's connection (tests simulate a full disk with it).
    #[cfg(test)]
    Sql(String),
}

/// The answer to an [`Op`], variant by variant.
pub(super) enum Answer {
    Published(Vec<Result<Published, QueueError>>),
    Fetched(Fetched),
    Done,
    Stats(QueueStats),
    DeadLetters(Vec<DeadLetter>),
    /// The dead letter's sequence in the DLQ.
    DeadLettered(u64),
    Counts(Vec<(String, u64)>),
}

/// Messages leased by one fetch.
pub(super) struct Fetched {
    pub(super) messages: Vec<StoredMessage>,
    /// When nothing was available: how long until the earliest leased or NAK-delayed
    /// message becomes visible again, so a waiting fetch wakes up for its redelivery.
    pub(super) next_visible_in: Option<Duration>,
}

/// One message as leased from the table.
pub(super) struct StoredMessage {
    pub(super) seq: u64,
    pub(super) delivered: u64,
    pub(super) trace_id: Option<String>,
    pub(super) payload: Vec<u8>,
    pub(super) published_at_ms: i64,
}
