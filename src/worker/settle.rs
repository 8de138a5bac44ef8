//! Settling a processed batch: acks, NAKs grouped by delay, and dead letters (an
//! `error_logs` row first, then the DLQ, then removal of the original).
//!
//! Every rule applied here comes from `disposition.rs`; this file only carries them out.
//! Text written for a dead letter is made storable first (`store::text`), and one dead
//! letter whose `error_logs` row the store refuses never holds back the others of its
//! batch: the rows are then written one by one, and a row that still fails is replaced by
//! a minimal entry.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use super::Ctx;
use super::disposition::{
    Disposition, LogStep, after_dead_letter_failure, after_error_log_failure, decide, needs_ping,
};
use super::process::{BatchResult, Item};
use crate::metrics::{ErrorType, EventStatus};
use crate::queue::{DeadLetterReason, Delivery, Queue};
use crate::store::text::{MAX_FIELD_BYTES, MAX_REASON_BYTES, storable, storable_json};
use crate::store::{ErrorLogEntry, Store};

/// `error_logs.source` of the worker's rows.
const LOG_SOURCE: &str = "nsready.worker";

/// One message on its way to the DLQ.
struct Dead<H> {
    delivery: Delivery<H>,
    error_type: ErrorType,
    /// Already storable.
    reason: String,
    device: Option<String>,
}

impl<H> Dead<H> {
    /// The `error_logs` row, every string storable.
    fn entry(&self) -> ErrorLogEntry {
        let d = &self.delivery;
        ErrorLogEntry {
            source: LOG_SOURCE.into(),
            level: "ERROR".into(),
            message: self.reason.clone(),
            context: storable_json(&json!({
                "trace_id": d.trace_id, "device_id": self.device,
                "error_type": self.error_type.as_str(),
                "stream_seq": d.seq, "delivered": d.delivered,
            })),
        }
    }

    /// The row written when the full one is refused: nothing in it comes from the message.
    fn minimal_entry(&self) -> ErrorLogEntry {
        let d = &self.delivery;
        ErrorLogEntry {
            source: LOG_SOURCE.into(),
            level: "ERROR".into(),
            message: format!(
                "{}: message at stream sequence {} dead-lettered; its reason could not be stored",
                self.error_type.as_str(),
                d.seq
            ),
            context: json!({
                "error_type": self.error_type.as_str(),
                "stream_seq": d.seq, "delivered": d.delivered,
            }),
        }
    }
}

/// Carries out every message's disposition.
pub(super) async fn settle<Q: Queue, S: Store>(
    ctx: &Ctx<Q, S>,
    items: Vec<Item<Q::Handle>>,
    store_down: bool,
) -> BatchResult {
    let mut acks = Vec::new();
    let mut naks: HashMap<Duration, Vec<Delivery<Q::Handle>>> = HashMap::new();
    let mut dead = Vec::new();
    for item in items {
        let (Some(d), Some(outcome)) = (item.delivery, item.outcome) else {
            continue;
        };
        match decide(&outcome, d.delivered, &ctx.policy) {
            Disposition::Ack => acks.push(d),
            Disposition::Nak { delay } => naks.entry(delay).or_default().push(d),
            Disposition::DeadLetter { error_type, reason } => dead.push(Dead {
                device: item
                    .decoded
                    .as_ref()
                    .map(|x| x.event.device_id().to_string()),
                delivery: d,
                error_type,
                reason: storable(&reason, MAX_REASON_BYTES),
            }),
        }
    }
    let committed = acks.len();
    if committed > 0 {
        ctx.metrics.events(EventStatus::Success, committed as u64);
        if let Err(e) = ctx.queue.ack(acks).await {
            // The rows are committed; a redelivery only rewrites the same values.
            tracing::warn!(error = %e, "ack failed after commit; messages will be redelivered");
        }
    }
    if !dead.is_empty() {
        let logged = log_dead(ctx, &dead).await;
        // Once the DLQ refused one letter, the others of the batch are not tried: each try
        // could wait PUBLISH_TIMEOUT, and a batch of them would hold the worker for minutes.
        let mut dlq_refused = false;
        for (letter, logged) in dead.into_iter().zip(logged) {
            if !logged {
                // Without its error_logs row a message is not dead-lettered; it comes back.
                let delay = ctx.policy.base_delay;
                naks.entry(delay).or_default().push(letter.delivery);
                continue;
            }
            let refused = if dlq_refused {
                Some(letter.delivery)
            } else {
                dead_letter(ctx, letter).await
            };
            if let Some(d) = refused {
                dlq_refused = true;
                match after_dead_letter_failure(&ctx.policy, d.delivered) {
                    Disposition::Nak { delay } => naks.entry(delay).or_default().push(d),
                    other => tracing::error!(?other, "unexpected rule for a refused dead letter"),
                }
            }
        }
    }
    for (delay, ds) in naks {
        if let Err(e) = ctx.queue.nak(ds, delay).await {
            tracing::warn!(error = %e, "NAK failed; messages return after the ack wait");
        }
    }
    if store_down {
        BatchResult::StoreDown
    } else {
        BatchResult::Settled { committed }
    }
}

/// Publishes one dead letter; gives the delivery back when the DLQ refused it.
async fn dead_letter<Q: Queue, S: Store>(
    ctx: &Ctx<Q, S>,
    letter: Dead<Q::Handle>,
) -> Option<Delivery<Q::Handle>> {
    let seq = letter.delivery.seq;
    let trace_id = letter
        .delivery
        .trace_id
        .as_deref()
        .map(|t| storable(t, MAX_FIELD_BYTES))
        .unwrap_or_default();
    let r = DeadLetterReason {
        error_type: letter.error_type,
        reason: letter.reason,
    };
    match ctx.queue.dead_letter(&letter.delivery, &r).await {
        Ok(dlq_seq) => {
            // `dlq_seq` is what `nsready dlq show` takes; `original_seq` the ingest stream's.
            tracing::warn!(dlq_seq, original_seq = seq, error_type = r.error_type.as_str(), reason = %r.reason, trace_id, "message dead-lettered");
            ctx.metrics.events(EventStatus::Dlq, 1);
            ctx.metrics.error(r.error_type, 1);
            None
        }
        Err(e) => {
            tracing::warn!(seq, error = %e, "dead letter refused by the DLQ; NAK without counting");
            Some(letter.delivery)
        }
    }
}

/// Writes the `error_logs` rows of the dead letters; true for each one written.
async fn log_dead<Q: Queue, S: Store, H>(ctx: &Ctx<Q, S>, dead: &[Dead<H>]) -> Vec<bool> {
    let entries: Vec<ErrorLogEntry> = dead.iter().map(Dead::entry).collect();
    let Err(e) = ctx.store.log_errors(&entries).await else {
        return vec![true; dead.len()];
    };
    let mut step = after_error_log_failure(&e, answers(ctx, &e).await, entries.len(), false);
    tracing::warn!(error = %e, ?step, "error_logs write failed");
    if step == LogStep::NakWithoutCounting {
        return vec![false; dead.len()];
    }
    let mut logged = Vec::with_capacity(dead.len());
    for (letter, entry) in dead.iter().zip(entries) {
        if step == LogStep::NakWithoutCounting {
            // The store went away meanwhile: the rest come back.
            logged.push(false);
            continue;
        }
        step = LogStep::Minimal;
        let mut minimal = false;
        let mut attempt = entry;
        loop {
            let Err(e) = ctx.store.log_errors(std::slice::from_ref(&attempt)).await else {
                logged.push(true);
                break;
            };
            let next = after_error_log_failure(&e, answers(ctx, &e).await, 1, minimal);
            tracing::warn!(seq = letter.delivery.seq, error = %e, step = ?next, "error_logs row refused");
            if next != LogStep::Minimal {
                step = next;
                logged.push(false);
                break;
            }
            minimal = true;
            attempt = letter.minimal_entry();
        }
    }
    logged
}

/// The store's ping right after `e`, when the rules need it.
async fn answers<Q, S: Store>(ctx: &Ctx<Q, S>, e: &crate::store::StoreError) -> bool {
    needs_ping(e) && ctx.store.ping().await.is_ok()
}
