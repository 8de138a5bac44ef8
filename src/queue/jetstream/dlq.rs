//! The JetStream DLQ: publishing a dead letter (bounded headers, an id unique per stream
//! incarnation, a payload cut to fit `max_payload` when another producer's message left no
//! room), listing, counting by error type from headers only, and removing letters.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, message::PublishMessage, stream};
use chrono::Utc;
use futures::StreamExt;

use super::{
    DEAD_AT, DELIVERED, ERROR_TYPE, JetStreamQueue, ORIGINAL_SEQ, REASON, TRACE_ID, TRUNCATED,
    header, is_no_message, nats_err, publish_error, to_chrono,
};
use crate::queue::{DeadLetter, DeadLetterReason, Delivery, DlqCounts, QueueError};
use crate::store::text::{MAX_FIELD_BYTES, MAX_REASON_BYTES, storable};

/// A header value: no control characters (CR and LF would break the protocol), bounded.
fn header_value(s: &str, max_bytes: usize) -> String {
    storable(s, max_bytes)
}

/// Headers of a dead letter, every value bounded (they fit [`DLQ_HEADER_BUDGET`] with the
/// message id).
fn dlq_headers(
    delivery_seq: u64,
    delivered: u64,
    reason: &DeadLetterReason,
    trace_id: Option<&str>,
) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        REASON,
        header_value(&reason.reason, MAX_REASON_BYTES).as_str(),
    );
    h.insert(ERROR_TYPE, reason.error_type.as_str());
    h.insert(DELIVERED, delivered.to_string().as_str());
    h.insert(ORIGINAL_SEQ, delivery_seq.to_string().as_str());
    h.insert(DEAD_AT, Utc::now().to_rfc3339().as_str());
    if let Some(t) = trace_id {
        h.insert(TRACE_ID, header_value(t, MAX_FIELD_BYTES).as_str());
    }
    h
}

/// Bytes the headers take on the wire (`NATS/1.0\r\n`, `name: value\r\n` each, `\r\n`).
fn headers_len(h: &HeaderMap) -> usize {
    let mut n = "NATS/1.0\r\n\r\n".len();
    for (name, values) in h.iter() {
        for v in values {
            n += AsRef::<str>::as_ref(name).len() + 2 + v.as_str().len() + 2;
        }
    }
    n
}

impl JetStreamQueue {
    pub(super) async fn publish_dead_letter(
        &self,
        delivery: &Delivery<jetstream::Message>,
        reason: &DeadLetterReason,
    ) -> Result<u64, QueueError> {
        let msg_id = self.dlq_msg_id(delivery.seq);
        let mut headers = dlq_headers(
            delivery.seq,
            delivery.delivered,
            reason,
            delivery.trace_id.as_deref(),
        );
        // A message from another producer may already be near `max_payload`; with our
        // headers it would be refused forever. Keep what fits and say so.
        let limit = self.client.server_info().max_payload;
        let mut payload = delivery.payload.clone();
        let room =
            limit.saturating_sub(headers_len(&headers) + msg_id.len() + 64 + TRUNCATED.len() + 24);
        if limit > 0 && payload.len() + headers_len(&headers) + msg_id.len() + 64 > limit {
            headers.insert(TRUNCATED, payload.len().to_string().as_str());
            payload.truncate(room);
            tracing::warn!(
                seq = delivery.seq,
                kept = room,
                "dead letter payload truncated to fit max_payload"
            );
        }
        let publish = PublishMessage::build()
            .payload(payload)
            .headers(headers)
            // Idempotent: a retry after a crash between publish and ack is stored once.
            .message_id(msg_id);
        let fut = async {
            let ack = self
                .js
                .send_publish(self.opts.dlq_subject.clone(), publish)
                .await
                .map_err(publish_error)?;
            ack.await.map_err(publish_error)
        };
        // A duplicate (a retry after a crash) is acked with the sequence stored first.
        let stored = tokio::time::timeout(self.opts.publish_timeout, fut)
            .await
            .map_err(|_| QueueError::Unavailable("DLQ publish timed out".into()))??;
        // Only now remove the original: the dead letter is durable.
        delivery.handle.ack().await.map_err(nats_err)?;
        self.client.flush().await.map_err(nats_err)?;
        Ok(stored.sequence)
    }

    pub(super) async fn list_dead_letters(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let stream = self
            .js
            .get_stream(&self.opts.dlq_stream)
            .await
            .map_err(nats_err)?;
        let state = stream.cached_info().state.clone();
        let mut out = Vec::new();
        if state.messages == 0 {
            return Ok(out);
        }
        let mut seq = from.max(state.first_sequence).max(1);
        while seq <= state.last_sequence && out.len() < limit {
            match stream.get_raw_message(seq).await {
                Ok(m) => out.push(DeadLetter {
                    seq: m.sequence,
                    original_seq: header(Some(&m.headers), ORIGINAL_SEQ)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    error_type: header(Some(&m.headers), ERROR_TYPE).unwrap_or_default(),
                    reason: header(Some(&m.headers), REASON).unwrap_or_default(),
                    delivered: header(Some(&m.headers), DELIVERED)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    trace_id: header(Some(&m.headers), TRACE_ID),
                    time: to_chrono(m.time),
                    payload: m.payload,
                }),
                // Deleted (replayed or purged) sequences leave gaps.
                Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => {}
                Err(e) => return Err(nats_err(e)),
            }
            seq += 1;
        }
        Ok(out)
    }

    pub(super) async fn count_dead_letters(&self, limit: usize) -> Result<DlqCounts, QueueError> {
        let stream = self
            .js
            .get_stream(&self.opts.dlq_stream)
            .await
            .map_err(nats_err)?;
        let depth = stream.cached_info().state.messages;
        if depth == 0 {
            return Ok(DlqCounts {
                complete: true,
                ..DlqCounts::default()
            });
        }
        // An ephemeral consumer that delivers headers only: the error type is a header,
        // and no payload crosses the wire. Unacknowledged (ack none), gone after use.
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                headers_only: true,
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(nats_err)?;
        let want = usize::try_from(depth)
            .unwrap_or(usize::MAX)
            .min(limit)
            .max(1);
        let mut batch = consumer
            .batch()
            .max_messages(want)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(nats_err)?;
        let mut counts = DlqCounts::default();
        let mut read = 0usize;
        while read < want {
            match batch.next().await {
                Some(Ok(m)) => {
                    read += 1;
                    let t = header(m.headers.as_ref(), ERROR_TYPE).unwrap_or_default();
                    *counts.counts.entry(t).or_default() += 1;
                }
                Some(Err(_)) | None => break,
            }
        }
        drop(batch);
        let name = consumer.cached_info().name.clone();
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!(error = %e, "ephemeral DLQ consumer left to expire");
        }
        counts.complete = read as u64 >= depth;
        Ok(counts)
    }

    pub(super) async fn remove_dead_letter(&self, seq: u64) -> Result<(), QueueError> {
        let stream = self
            .js
            .get_stream(&self.opts.dlq_stream)
            .await
            .map_err(nats_err)?;
        match stream.delete_message(seq).await {
            Ok(_) => Ok(()),
            Err(e) if is_no_message(&e.to_string()) => Err(QueueError::NotFound(seq)),
            Err(e) => Err(nats_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ErrorType;
    use crate::queue::jetstream::DLQ_HEADER_BUDGET;

    #[test]
    fn worst_case_dead_letter_headers_fit_the_budget() {
        let reason = DeadLetterReason {
            error_type: ErrorType::ParameterNotFound,
            reason: format!("{}\r\n\0", "é".repeat(5000)),
        };
        let trace = format!("{}\r\n", "t".repeat(10_000));
        let h = dlq_headers(u64::MAX, u64::MAX, &reason, Some(&trace));
        let msg_id = format!("dlq:{}:{}:{}", "S".repeat(64), i128::MAX, u64::MAX);
        let total = headers_len(&h) + msg_id.len() + "Nats-Msg-Id: \r\n".len();
        assert!(total <= DLQ_HEADER_BUDGET, "{total}");
        for (_, values) in h.iter() {
            for v in values {
                assert!(!v.as_str().contains(['\r', '\n', '\0']), "{v:?}");
            }
        }
    }
}
