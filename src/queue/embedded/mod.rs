//! The embedded durable queue (single-node mode): the [`Queue`] contract in one SQLite file.
//!
//! Semantics follow JetStream's work-queue stream with one durable pull consumer, so the
//! worker cannot tell the two apart: a duplicate window keyed by message id, `discard: new`
//! limits (`Full`, never a silent drop), leases that expire after the ack wait and come
//! back with a higher delivery count, NAK with delay, progress, and a DLQ written in the
//! same transaction that removes the original. One OS thread owns the connection and
//! group-commits whatever callers sent meanwhile (`engine.rs`, speaking the vocabulary of
//! `command.rs`); `schema.rs` opens and migrates the file.

mod command;
mod engine;
mod schema;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, oneshot};

use self::command::{Answer, Command, Op};
use self::engine::Engine;
use crate::checkpointer::{self, Checkpointer};
use crate::queue::{
    DeadLetter, DeadLetterReason, Delivery, DlqCounts, Outgoing, Published, Queue, QueueError,
    QueueStats,
};

/// Commands that may wait in the channel before callers feel backpressure. Each caller
/// waits for its answer, so this only bounds bursts; the thread drains it every group.
const CHANNEL_CAPACITY: usize = 4096;

/// A waiting fetch re-checks at least this far apart when woken by a timer (leases that
/// expire, NAK delays), so it never spins on the clock.
const MIN_POLL: Duration = Duration::from_millis(20);

/// Limits and timings of the embedded queue, the counterparts of the JetStream stream and
/// consumer settings (DESIGN.md §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedQueueOptions {
    /// Most messages stored; a publish beyond it gets [`QueueError::Full`].
    pub max_msgs: u64,
    /// Most payload bytes stored; a publish that would pass it gets [`QueueError::Full`].
    pub max_bytes: u64,
    /// How long a fetched message stays invisible before it is delivered again.
    pub ack_wait: Duration,
    /// How long a message id is remembered for deduplication (from its first publish).
    pub duplicate_window: Duration,
    /// Longest wait for a publish's commit (`PUBLISH_TIMEOUT`); past it the publish answers
    /// [`QueueError::Unavailable`]. A commit that lands later is harmless: the client's
    /// retry carries the same message id and is deduplicated.
    pub publish_timeout: Duration,
}

impl Default for EmbeddedQueueOptions {
    /// The stream defaults of DESIGN.md §5 (1,000,000 messages, 1 GiB, 30 s ack wait) and
    /// JetStream's default duplicate window (2 minutes).
    fn default() -> Self {
        EmbeddedQueueOptions {
            max_msgs: 1_000_000,
            max_bytes: 1 << 30,
            ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(120),
            publish_timeout: Duration::from_secs(5),
        }
    }
}

/// Identifies one delivery of one message: the sequence plus the delivery count, so that
/// a worker holding a stale delivery (its lease expired and another worker got the
/// message) cannot postpone the current holder's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddedHandle {
    seq: u64,
    delivered: u64,
}

/// The embedded queue. Clones share one queue thread; the thread ends, and the file is
/// closed, when the last clone is dropped (the drop waits for the thread to finish the
/// group it is running, a few milliseconds at most).
#[derive(Clone)]
pub struct EmbeddedQueue {
    inner: Arc<Inner>,
}

/// What the clones share.
struct Inner {
    /// Commands to the queue thread; `None` only while dropping, which closes the channel
    /// and so ends the thread.
    tx: Option<mpsc::Sender<Command>>,
    /// Copies the WAL into the file off the queue thread (`checkpointer.rs`); stopped
    /// first on drop, so the queue thread's connection is the last to close the file.
    checkpointer: Option<Checkpointer>,
    /// The queue thread, joined on drop so the file is closed when the last clone is gone.
    thread: Option<std::thread::JoinHandle<()>>,
    /// Signalled by the thread after commits that make messages visible.
    notify: Arc<Notify>,
    /// Fetch calls currently waiting for messages (`QueueStats::waiting_pulls`).
    waiting_pulls: AtomicU64,
    /// Bound on the wait for a publish's commit.
    publish_timeout: Duration,
    path: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        drop(self.checkpointer.take());
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            // The thread only panics on a bug; nothing is left to clean up if it did.
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for EmbeddedQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedQueue")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Counts a waiting fetch for as long as it waits, even if its future is dropped.
struct WaitingGuard<'a>(&'a AtomicU64);

impl<'a> WaitingGuard<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        WaitingGuard(counter)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EmbeddedQueue {
    /// Opens (creating if needed) the queue file at `path` (e.g. `DATA_DIR/queue.db`) and
    /// starts its thread. Messages left unacknowledged by a previous run are delivered
    /// again once their lease has expired.
    ///
    /// # Errors
    /// [`QueueError::Setup`] naming the file when it cannot be created or written, is
    /// corrupt or not a queue database, or comes from a newer nsready.
    pub fn open(path: &Path, opts: EmbeddedQueueOptions) -> Result<Self, QueueError> {
        let conn = schema::open(path)?;
        let checkpointer = Checkpointer::start(path, "queue", checkpointer::DEFAULT_INTERVAL)
            .map_err(|e| QueueError::Setup(format!("queue file {}: {e}", path.display())))?;
        let notify = Arc::new(Notify::new());
        let engine = Engine::new(conn, path.to_path_buf(), &opts, Arc::clone(&notify))?;
        let publish_timeout = opts.publish_timeout;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("nsready-queue".into())
            .spawn(move || engine.run(rx))
            .map_err(|e| QueueError::Setup(format!("cannot start the queue thread: {e}")))?;
        Ok(EmbeddedQueue {
            inner: Arc::new(Inner {
                tx: Some(tx),
                checkpointer: Some(checkpointer),
                thread: Some(thread),
                notify,
                waiting_pulls: AtomicU64::new(0),
                publish_timeout,
                path: path.to_path_buf(),
            }),
        })
    }

    /// Sends one command and waits for its answer (given after its group committed).
    async fn call(&self, op: Op) -> Result<Answer, QueueError> {
        let tx = self.inner.tx.as_ref().ok_or_else(stopped)?;
        let (reply, answer) = oneshot::channel();
        tx.send(Command { op, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Sends a command whose answer carries nothing.
    async fn call_done(&self, op: Op) -> Result<(), QueueError> {
        match self.call(op).await? {
            Answer::Done => Ok(()),
            _ => Err(mismatch()),
        }
    }

    /// Runs raw SQL on the queue thread's connection (tests simulate a full disk).
    #[cfg(test)]
    async fn exec_sql(&self, sql: &str) -> Result<(), QueueError> {
        self.call_done(Op::Sql(sql.to_string())).await
    }
}

/// The queue thread is gone: only after a panic in it, since it lives as long as any clone.
fn stopped() -> QueueError {
    QueueError::Unavailable("embedded queue thread stopped".into())
}

/// A publish whose commit did not come within the publish timeout.
fn publish_timed_out() -> QueueError {
    QueueError::Unavailable(
        "no commit from the embedded queue within PUBLISH_TIMEOUT (disk too slow?)".into(),
    )
}

/// An answer of the wrong kind: a bug in this module, reported rather than panicked on.
fn mismatch() -> QueueError {
    QueueError::Unavailable("embedded queue answered with the wrong kind of reply".into())
}

/// The same error again, for every message of a failed `publish_many`.
fn copy_error(e: &QueueError) -> QueueError {
    e.clone()
}

fn handles<'a>(
    deliveries: impl IntoIterator<Item = &'a Delivery<EmbeddedHandle>>,
) -> Vec<EmbeddedHandle> {
    deliveries.into_iter().map(|d| d.handle).collect()
}

impl Queue for EmbeddedQueue {
    type Handle = EmbeddedHandle;

    async fn publish(&self, msg: Outgoing) -> Result<Published, QueueError> {
        self.publish_many(vec![msg])
            .await
            .pop()
            .unwrap_or_else(|| Err(mismatch()))
    }

    async fn publish_many(&self, msgs: Vec<Outgoing>) -> Vec<Result<Published, QueueError>> {
        let n = msgs.len();
        if n == 0 {
            return Vec::new();
        }
        // One command: all of them land in the same group commit. Bounded like JetStream's
        // publish: a queue thread stuck on a slow disk answers 503, not a hung client.
        let call = tokio::time::timeout(self.inner.publish_timeout, self.call(Op::Publish(msgs)));
        match call.await {
            Ok(Ok(Answer::Published(results))) if results.len() == n => results,
            Ok(Ok(_)) => (0..n).map(|_| Err(mismatch())).collect(),
            Ok(Err(e)) => (0..n).map(|_| Err(copy_error(&e))).collect(),
            Err(_) => (0..n).map(|_| Err(publish_timed_out())).collect(),
        }
    }

    async fn fetch_bounded(
        &self,
        max: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery<EmbeddedHandle>>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register for the wake-up BEFORE looking: a publish committed between the
            // look and the wait would otherwise go unnoticed until the deadline.
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let fetched = match self.call(Op::Fetch { max, max_bytes }).await? {
                Answer::Fetched(f) => f,
                _ => return Err(mismatch()),
            };
            if !fetched.messages.is_empty() {
                return Ok(fetched
                    .messages
                    .into_iter()
                    .map(|m| Delivery {
                        payload: Bytes::from(m.payload),
                        seq: m.seq,
                        delivered: m.delivered,
                        trace_id: m.trace_id,
                        published_at: chrono::DateTime::from_timestamp_millis(m.published_at_ms),
                        handle: EmbeddedHandle {
                            seq: m.seq,
                            delivered: m.delivered,
                        },
                    })
                    .collect());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            // Wake for a publish, for the deadline, or when a leased or NAK-delayed
            // message comes back, whichever is first.
            let wake = match fetched.next_visible_in {
                Some(d) => deadline.min(now + d.max(MIN_POLL)),
                None => deadline,
            };
            let _waiting = WaitingGuard::new(&self.inner.waiting_pulls);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn ack(&self, deliveries: Vec<Delivery<EmbeddedHandle>>) -> Result<(), QueueError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let seqs = deliveries.iter().map(|d| d.handle.seq).collect();
        self.call_done(Op::Ack(seqs)).await
    }

    async fn nak(
        &self,
        deliveries: Vec<Delivery<EmbeddedHandle>>,
        delay: Duration,
    ) -> Result<(), QueueError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        self.call_done(Op::Nak {
            handles: handles(&deliveries),
            delay,
        })
        .await
    }

    async fn in_progress(
        &self,
        deliveries: &[&Delivery<EmbeddedHandle>],
    ) -> Result<(), QueueError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        self.call_done(Op::Touch(handles(deliveries.iter().copied())))
            .await
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery<EmbeddedHandle>,
        reason: &DeadLetterReason,
    ) -> Result<u64, QueueError> {
        match self
            .call(Op::DeadLetter {
                handle: delivery.handle,
                error_type: reason.error_type.as_str(),
                reason: reason.reason.clone(),
            })
            .await
        {
            Ok(Answer::DeadLettered(seq)) => Ok(seq),
            Ok(_) => Err(mismatch()),
            Err(e) => Err(e),
        }
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        match self.call(Op::Stats).await? {
            Answer::Stats(mut stats) => {
                stats.waiting_pulls = self.inner.waiting_pulls.load(Ordering::Relaxed);
                Ok(stats)
            }
            _ => Err(mismatch()),
        }
    }

    async fn dlq_list(&self, from: u64, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        match self.call(Op::DlqList { from, limit }).await? {
            Answer::DeadLetters(list) => Ok(list),
            _ => Err(mismatch()),
        }
    }

    async fn dlq_counts(&self, _limit: usize) -> Result<DlqCounts, QueueError> {
        // A GROUP BY over an indexless column of a small table: no limit needed.
        match self.call(Op::DlqCounts).await? {
            Answer::Counts(rows) => Ok(DlqCounts {
                counts: rows.into_iter().collect(),
                complete: true,
            }),
            _ => Err(mismatch()),
        }
    }

    async fn dlq_remove(&self, seq: u64) -> Result<(), QueueError> {
        self.call_done(Op::DlqRemove(seq)).await
    }
}
