//! The queue on NATS JetStream (scale-out deployment).
//!
//! Owns the connection (retried at start, reconnected forever afterwards), provisions the
//! `INGRESS` work-queue stream, the durable pull consumer `ingest_workers` and the DLQ
//! stream (reporting drift from the wanted settings), and implements [`Queue`]:
//! publish waits for JetStream's ack; fetch pulls a batch; NAK carries a delay; a dead
//! letter is published to the DLQ stream with an idempotent id *before* the original is
//! acknowledged. The consumer has no `max_deliver`: the worker, not the server, decides
//! when a message is dead (DESIGN.md §3.4).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, message::PublishMessage};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::future::join_all;

use super::{
    DeadLetter, DeadLetterReason, Delivery, DlqCounts, Outgoing, Published, Queue, QueueError,
    QueueStats,
};
use crate::config::Settings;

mod dlq;
mod setup;

pub use setup::{connect, server_addrs};

/// Header carrying the trace id from collector to worker and into the DLQ.
pub const TRACE_ID: &str = "Nsready-Trace-Id";
const REASON: &str = "Nsready-Reason";
const ERROR_TYPE: &str = "Nsready-Error-Type";
const DELIVERED: &str = "Nsready-Delivered";
const ORIGINAL_SEQ: &str = "Nsready-Original-Seq";
const DEAD_AT: &str = "Nsready-Dead-At";
/// On a dead letter whose payload had to be cut to fit `max_payload`: the original size.
pub const TRUNCATED: &str = "Nsready-Truncated-From";

/// Bytes reserved for a dead letter's headers on top of its payload. Ingest refuses a
/// message whose payload would not leave this much room under the server's `max_payload`
/// (`JetStreamQueue::check_size`), so every message from the collector can be
/// dead-lettered whole. Header values are bounded to fit: the reason at
/// [`crate::store::text::MAX_REASON_BYTES`], the trace id at
/// [`crate::store::text::MAX_FIELD_BYTES`].
pub const DLQ_HEADER_BUDGET: usize = 2048;

/// Room a pull's `max_bytes` needs beyond `max_payload` for one message (subject, reply
/// subject and protocol framing), so a byte-capped pull always fits one message.
const PULL_OVERHEAD: usize = 4096;

/// Settings of the stream, consumer and DLQ, taken from the configuration.
#[derive(Clone, Debug)]
pub struct JetStreamOptions {
    pub stream: String,
    pub subject: String,
    pub consumer: String,
    pub dlq_stream: String,
    pub dlq_subject: String,
    pub replicas: usize,
    pub max_msgs: i64,
    pub max_bytes: i64,
    pub max_age: Duration,
    pub duplicate_window: Duration,
    pub ack_wait: Duration,
    /// Most unacknowledged messages over all workers; must exceed pool × batch × processes.
    pub max_ack_pending: i64,
    pub publish_timeout: Duration,
    /// True for the service's roles: they create the stream and consumer and repair drift.
    /// False for CLI commands and observers, which must never rewrite a live consumer's
    /// settings with their own (possibly different) environment.
    pub manage_config: bool,
}

impl JetStreamOptions {
    /// From the NATS and queue settings plus the worker's ack wait (WORKER_ACK_WAIT is the
    /// consumer's ack wait; the queue applies it, the worker setting names it).
    pub fn from_settings(s: &Settings) -> Self {
        let n = &s.nats;
        JetStreamOptions {
            stream: n.stream_name.clone(),
            subject: n.queue_subject.clone(),
            consumer: n.consumer_name.clone(),
            dlq_stream: n.dlq_stream.clone(),
            dlq_subject: n.dlq_subject.clone(),
            replicas: n.stream_replicas.max(1),
            max_msgs: n.stream_max_msgs,
            max_bytes: n.stream_max_bytes,
            max_age: n.stream_max_age,
            duplicate_window: s.queue.duplicate_window,
            ack_wait: s.worker.worker_ack_wait,
            max_ack_pending: 100_000,
            publish_timeout: s.queue.publish_timeout,
            manage_config: true,
        }
    }
}

/// The JetStream queue. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamQueue {
    client: async_nats::Client,
    js: jetstream::Context,
    consumer: consumer::Consumer<consumer::pull::Config>,
    opts: JetStreamOptions,
    /// Creation time of the `INGRESS` stream (Unix nanoseconds), part of every dead letter's
    /// message id: sequences restart at 1 when the stream is recreated, and without it the
    /// DLQ's duplicate window would swallow the new letter.
    stream_created: i128,
    /// Tracks the tasks this queue spawns (`drain_late`), so that the service's shutdown
    /// waits for them; `App` hands over its own with [`JetStreamQueue::with_shutdown`].
    tasks: crate::shutdown::Shutdown,
}

impl JetStreamQueue {
    /// Spawns this queue's background tasks through the service's `Shutdown`.
    pub fn with_shutdown(mut self, shutdown: &crate::shutdown::Shutdown) -> Self {
        self.tasks = shutdown.clone();
        self
    }
}

impl std::fmt::Debug for JetStreamQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamQueue")
            .field("stream", &self.opts.stream)
            .finish()
    }
}

impl JetStreamQueue {
    /// True while the client holds a connection to a server.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn outgoing_publish(&self, msg: Outgoing) -> PublishMessage {
        PublishMessage::build()
            .payload(msg.payload)
            .message_id(&msg.msg_id)
            .header(TRACE_ID, msg.trace_id.as_str())
    }

    /// Refuses at once while disconnected, instead of letting the client buffer the
    /// message for a reconnect that may come after the client got its 503.
    fn check_connected(&self) -> Result<(), QueueError> {
        if self.connected() {
            Ok(())
        } else {
            Err(QueueError::Unavailable("not connected to NATS".into()))
        }
    }

    /// Refuses a message the server would reject for its size (headers included, roughly),
    /// or whose dead letter would not fit: its payload plus [`DLQ_HEADER_BUDGET`] must stay
    /// within `max_payload`.
    fn check_size(&self, msg: &Outgoing) -> Result<(), QueueError> {
        let limit = self.client.server_info().max_payload;
        let size = (msg.payload.len() + msg.msg_id.len() + msg.trace_id.len() + 64)
            .max(msg.payload.len() + DLQ_HEADER_BUDGET);
        if limit > 0 && size > limit {
            return Err(QueueError::TooLarge { size, limit });
        }
        Ok(())
    }

    /// The dead letter's idempotent message id: unique per stream incarnation and sequence.
    fn dlq_msg_id(&self, seq: u64) -> String {
        format!("dlq:{}:{}:{seq}", self.opts.stream, self.stream_created)
    }

    /// Sends one publish and waits for its ack, all bounded by the publish timeout.
    async fn publish_one(&self, msg: Outgoing) -> Result<Published, QueueError> {
        self.check_connected()?;
        self.check_size(&msg)?;
        let publish = self.outgoing_publish(msg);
        let subject = self.opts.subject.clone();
        let fut = async {
            let ack = self
                .js
                .send_publish(subject, publish)
                .await
                .map_err(publish_error)?;
            ack.await.map_err(publish_error)
        };
        match tokio::time::timeout(self.opts.publish_timeout, fut).await {
            Ok(Ok(ack)) => Ok(Published {
                seq: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(timeout_error()),
        }
    }
}

/// Maps a publish failure: storage limits mean full, everything else unavailable.
fn publish_error(e: impl std::fmt::Display) -> QueueError {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    if lower.contains("maximum") || lower.contains("exceeded") || lower.contains("resource") {
        QueueError::Full
    } else {
        QueueError::Unavailable(text)
    }
}

/// How long past a pull's expiry we still wait for the server to end it.
const FETCH_GRACE: Duration = Duration::from_millis(100);

/// Reads what is left of a pull we stopped waiting for, until the server (or the client
/// library's own timer, a few seconds on) ends it, and NAKs every late message without
/// delay: it goes straight back to the other pulls instead of waiting out the ack wait.
/// Bounded by that timer; tracked by the queue's `Shutdown` so a stop waits for it.
fn drain_late(tasks: &crate::shutdown::Shutdown, mut batch: consumer::pull::Batch) {
    tasks.spawn(async move {
        let mut late = 0u32;
        while let Some(Ok(msg)) = batch.next().await {
            late += 1;
            if let Err(e) = msg.ack_with(AckKind::Nak(None)).await {
                tracing::debug!(error = %e, "NAK of a late pull message failed; it returns after the ack wait");
            }
        }
        if late > 0 {
            tracing::debug!(
                late,
                "gave back messages that arrived after the pull expired"
            );
        }
    });
}

fn timeout_error() -> QueueError {
    QueueError::Unavailable("no acknowledgement from JetStream within PUBLISH_TIMEOUT".into())
}

/// True for the server's answers about a missing sequence ("sequence N not found" when
/// deleting, "no message found" when the message is already gone).
fn is_no_message(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("not found") || t.contains("no message found")
}

fn nats_err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

fn to_chrono(t: time::OffsetDateTime) -> Option<DateTime<Utc>> {
    i64::try_from(t.unix_timestamp_nanos())
        .ok()
        .map(DateTime::from_timestamp_nanos)
}

fn header(h: Option<&HeaderMap>, name: &str) -> Option<String> {
    h.and_then(|h| h.get(name)).map(|v| v.as_str().to_string())
}

impl Queue for JetStreamQueue {
    type Handle = jetstream::Message;

    async fn publish(&self, msg: Outgoing) -> Result<Published, QueueError> {
        self.publish_one(msg).await
    }

    async fn publish_many(&self, msgs: Vec<Outgoing>) -> Vec<Result<Published, QueueError>> {
        if let Err(e) = self.check_connected() {
            return msgs
                .iter()
                .map(|_| Err(QueueError::Unavailable(e.to_string())))
                .collect();
        }
        let deadline = tokio::time::Instant::now() + self.opts.publish_timeout;
        // Sent one after the other on one connection, so the stream stores them in request
        // order (a later event for the same key wins); the acks are awaited together.
        let mut pending = Vec::with_capacity(msgs.len());
        for m in msgs {
            if let Err(e) = self.check_size(&m) {
                pending.push(Ok(Err(e)));
                continue;
            }
            let publish = self.outgoing_publish(m);
            let sent = tokio::time::timeout_at(
                deadline,
                self.js.send_publish(self.opts.subject.clone(), publish),
            )
            .await
            .map(|r| r.map_err(publish_error));
            pending.push(sent);
        }
        join_all(pending.into_iter().map(|sent| async move {
            let ack = match sent {
                Ok(Ok(ack)) => ack,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(timeout_error()),
            };
            match tokio::time::timeout_at(deadline, ack).await {
                Ok(Ok(a)) => Ok(Published {
                    seq: a.sequence,
                    duplicate: a.duplicate,
                }),
                Ok(Err(e)) => Err(publish_error(e)),
                Err(_) => Err(timeout_error()),
            }
        }))
        .await
    }

    async fn fetch_bounded(
        &self,
        max: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery<Self::Handle>>, QueueError> {
        let mut request = self
            .consumer
            .batch()
            .max_messages(max)
            .expires(wait.max(Duration::from_millis(10)));
        if max_bytes != usize::MAX {
            // Never below one message of the largest size the server accepts: the server
            // answers a pull whose byte budget cannot hold the next message with nothing,
            // which would strand that message.
            let floor = self.client.server_info().max_payload + PULL_OVERHEAD;
            request = request.max_bytes(max_bytes.max(floor));
        }
        let mut batch = request.messages().await.map_err(nats_err)?;
        let mut out = Vec::with_capacity(max);
        // The request ends after `max` messages or when the server says it expired. nats-server
        // 2.9 sometimes sends that "408 Request Timeout" late when a pull got part of a batch,
        // so we stop waiting shortly after `expires` ourselves (FETCH_GRACE) and hand the
        // still-open request to `drain_late`, which gives back anything that arrives later.
        let deadline = tokio::time::Instant::now() + wait + FETCH_GRACE;
        let mut ended = false;
        loop {
            let next = tokio::time::timeout_at(deadline, batch.next()).await;
            let msg = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    ended = true;
                    if out.is_empty() {
                        return Err(nats_err(e));
                    }
                    break;
                }
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(_) => break,
            };
            let (seq, delivered, published_at) = match msg.info() {
                Ok(i) => (
                    i.stream_sequence,
                    u64::try_from(i.delivered).unwrap_or(1),
                    to_chrono(i.published),
                ),
                Err(_) => (0, 1, None),
            };
            out.push(Delivery {
                payload: msg.payload.clone(),
                seq,
                delivered,
                trace_id: header(msg.headers.as_ref(), TRACE_ID),
                published_at,
                handle: msg,
            });
        }
        if !ended && out.len() < max {
            drain_late(&self.tasks, batch);
        }
        Ok(out)
    }

    async fn ack(&self, deliveries: Vec<Delivery<Self::Handle>>) -> Result<(), QueueError> {
        for d in &deliveries {
            d.handle.ack().await.map_err(nats_err)?;
        }
        // Acks are fire-and-forget publishes; flushing makes sure they left this process.
        self.client.flush().await.map_err(nats_err)
    }

    async fn nak(
        &self,
        deliveries: Vec<Delivery<Self::Handle>>,
        delay: Duration,
    ) -> Result<(), QueueError> {
        for d in &deliveries {
            d.handle
                .ack_with(AckKind::Nak(Some(delay)))
                .await
                .map_err(nats_err)?;
        }
        self.client.flush().await.map_err(nats_err)
    }

    async fn in_progress(&self, deliveries: &[&Delivery<Self::Handle>]) -> Result<(), QueueError> {
        for d in deliveries {
            d.handle
                .ack_with(AckKind::Progress)
                .await
                .map_err(nats_err)?;
        }
        self.client.flush().await.map_err(nats_err)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let stream = self
            .js
            .get_stream(&self.opts.stream)
            .await
            .map_err(nats_err)?;
        let info = stream
            .consumer_info(&self.opts.consumer)
            .await
            .map_err(nats_err)?;
        let dlq = self
            .js
            .get_stream(&self.opts.dlq_stream)
            .await
            .map_err(nats_err)?;
        // Work-queue retention: a committed message is removed, so the stream's first
        // message is the oldest one not yet committed.
        let state = &stream.cached_info().state;
        let oldest_age_ms = if state.messages == 0 {
            0
        } else {
            let age = time::OffsetDateTime::now_utc() - state.first_timestamp;
            u64::try_from(age.whole_milliseconds().max(0)).unwrap_or(u64::MAX)
        };
        Ok(QueueStats {
            oldest_age_ms,
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            redelivered: info.num_redelivered as u64,
            waiting_pulls: info.num_waiting as u64,
            dlq_depth: dlq.cached_info().state.messages,
            dlq_last_seq: dlq.cached_info().state.last_sequence,
        })
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery<Self::Handle>,
        reason: &DeadLetterReason,
    ) -> Result<u64, QueueError> {
        self.publish_dead_letter(delivery, reason).await
    }

    async fn dlq_list(&self, from: u64, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.list_dead_letters(from, limit).await
    }

    async fn dlq_counts(&self, limit: usize) -> Result<DlqCounts, QueueError> {
        self.count_dead_letters(limit).await
    }

    async fn dlq_remove(&self, seq: u64) -> Result<(), QueueError> {
        self.remove_dead_letter(seq).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_url_may_list_cluster_members() {
        let addrs = server_addrs("nats://10.0.0.1:4222, nats://10.0.0.2:4223,").expect("valid");
        let hosts: Vec<(String, u16)> = addrs
            .iter()
            .map(|a| (a.host().to_string(), a.port()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("10.0.0.1".to_string(), 4222),
                ("10.0.0.2".to_string(), 4223)
            ]
        );
        assert_eq!(server_addrs("nats://127.0.0.1").expect("valid").len(), 1);
        assert!(matches!(server_addrs(" , "), Err(QueueError::Setup(_))));
        assert!(matches!(
            server_addrs("nats://a:1,nats://b:notaport"),
            Err(QueueError::Setup(_))
        ));
    }
}
