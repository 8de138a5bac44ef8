//! One batch, from deliveries to settled messages.
//!
//! Decode and fully check every message (it may not come from our collector), run the
//! registry checks, then write all good rows in one transaction, deduplicated (last wins)
//! and sorted by key. A batch the database refuses is bisected until the bad message is
//! alone, so one poison event costs only itself. Every message ends with an
//! [`Outcome`]; [`decide`] turns it into ack, NAK or dead letter, carried out at the end.
//! Invariant: a message is acked only after its rows are committed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde_json::json;

use super::Ctx;
use super::disposition::{Disposition, Outcome, decide};
use crate::event::NormalizedEvent;
use crate::event::envelope::{self, Decoded};
use crate::queue::{DeadLetterReason, Delivery, Queue};
use crate::store::{ErrorLogEntry, Row, Store, StoreError};

/// What a batch did, for the pool's pause logic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchResult {
    /// Every message is settled; `committed` of them landed.
    Settled { committed: usize },
    /// The store failed for infrastructure reasons: messages were NAKed; pause pulling.
    StoreDown,
}

/// One message while the batch is processed.
struct Item<H> {
    delivery: Option<Delivery<H>>,
    decoded: Option<Decoded>,
    outcome: Option<Outcome>,
}

/// Processes one batch and settles every message in it.
pub async fn process_batch<Q: Queue, S: Store>(
    ctx: &Ctx<Q, S>,
    deliveries: Vec<Delivery<Q::Handle>>,
) -> BatchResult {
    let redelivered = deliveries.iter().filter(|d| d.delivered > 1).count() as u64;
    if redelivered > 0 {
        ctx.metrics.redeliveries(redelivered);
    }
    let mut items: Vec<Item<Q::Handle>> = deliveries
        .into_iter()
        .map(|d| {
            let (decoded, outcome) = match envelope::decode(&d.payload) {
                Ok(dec) => (Some(dec), None),
                Err(e) => (
                    None,
                    Some(Outcome::Permanent {
                        error_type: e.error_type,
                        reason: e.reason,
                    }),
                ),
            };
            Item {
                delivery: Some(d),
                decoded,
                outcome,
            }
        })
        .collect();

    let store_down = check_registry(ctx, &mut items).await || write_rows(ctx, &mut items).await;
    if ctx.crash_after_commit && items.iter().any(|i| i.outcome == Some(Outcome::Committed)) {
        tracing::error!("failpoint crash-after-commit: aborting before the acks");
        std::process::abort();
    }
    settle(ctx, items, store_down).await
}

/// Runs the business checks; marks failures. Returns true when the registry could not be
/// read (every undecided message then counts as an infrastructure failure).
async fn check_registry<Q: Queue, S: Store>(
    ctx: &Ctx<Q, S>,
    items: &mut [Item<Q::Handle>],
) -> bool {
    let events: Vec<&NormalizedEvent> = items
        .iter()
        .filter_map(|i| i.decoded.as_ref().map(|d| &d.event))
        .collect();
    if events.is_empty() {
        return false;
    }
    match ctx.registry.check_all(&events).await {
        Ok(results) => {
            let mut results = results.into_iter();
            for item in items.iter_mut().filter(|i| i.decoded.is_some()) {
                if let Some(Err(f)) = results.next() {
                    item.outcome = Some(Outcome::Retryable {
                        error_type: f.error_type,
                        reason: f.reason,
                    });
                }
            }
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "registry could not be loaded; pausing");
            mark_infrastructure(items);
            true
        }
    }
}

fn mark_infrastructure<H>(items: &mut [Item<H>]) {
    for item in items.iter_mut().filter(|i| i.outcome.is_none()) {
        item.outcome = Some(Outcome::Infrastructure);
    }
}

/// Writes the rows of every message without an outcome yet, bisecting on data errors.
/// Returns true when the store is down.
async fn write_rows<Q: Queue, S: Store>(ctx: &Ctx<Q, S>, items: &mut [Item<Q::Handle>]) -> bool {
    let pending: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].outcome.is_none())
        .collect();
    if pending.is_empty() {
        return false;
    }
    let mut stack = vec![pending];
    while let Some(group) = stack.pop() {
        let rows = build_rows(group.iter().filter_map(|&i| items[i].decoded.as_ref()));
        let started = Instant::now();
        match write_keeping_alive(ctx, &rows, items).await {
            Ok(n) => {
                let secs = started.elapsed().as_secs_f64();
                ctx.metrics.batch_committed(group.len(), n, secs);
                ctx.state.committed(group.len());
                let now = Utc::now();
                for &i in &group {
                    items[i].outcome = Some(Outcome::Committed);
                    if let Some(at) = items[i].delivery.as_ref().and_then(|d| d.published_at) {
                        let lat = (now - at).num_microseconds().unwrap_or(0).max(0);
                        ctx.metrics.processing_seconds(lat as f64 / 1e6);
                    }
                }
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, messages = group.len(), "store unavailable; NAK and pause");
                mark_infrastructure(items);
                return true;
            }
            Err(StoreError::Data(msg)) if group.len() == 1 => {
                items[group[0]].outcome = Some(Outcome::Permanent {
                    error_type: "integrity",
                    reason: format!("the database refused the event's rows: {msg}"),
                });
            }
            Err(StoreError::Data(_)) => {
                // Isolate the bad message: each half is tried on its own.
                let (a, b) = group.split_at(group.len() / 2);
                stack.push(b.to_vec());
                stack.push(a.to_vec());
            }
            Err(e) => {
                tracing::error!(error = %e, "unexpected store error; NAK and pause");
                mark_infrastructure(items);
                return true;
            }
        }
    }
    false
}

/// Upserts while telling the queue, every third of the ack wait, that the batch is still
/// being worked on, so a slow database does not cause redeliveries mid-write.
async fn write_keeping_alive<Q: Queue, S: Store>(
    ctx: &Ctx<Q, S>,
    rows: &[Row],
    items: &[Item<Q::Handle>],
) -> Result<u64, StoreError> {
    let write = ctx.store.upsert(rows);
    tokio::pin!(write);
    let period = (ctx.ack_wait / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            r = &mut write => return r,
            _ = tick.tick() => {
                let ds: Vec<&Delivery<Q::Handle>> = items.iter().filter_map(|i| i.delivery.as_ref()).collect();
                if let Err(e) = ctx.queue.in_progress(&ds).await {
                    tracing::warn!(error = %e, "progress ack failed");
                }
            }
        }
    }
}

/// Rows of the given events, deduplicated by key (the later message wins) and sorted by
/// key, so concurrent writers take row locks in the same order.
pub fn build_rows<'a>(events: impl Iterator<Item = &'a Decoded>) -> Vec<Row> {
    // (arrival order, row); sorting and deduplicating beats hashing every key.
    let mut rows: Vec<(usize, Row)> = Vec::new();
    for d in events {
        let e = &d.event;
        let ts = e.source_timestamp();
        for m in e.metrics() {
            let event_id = match e.event_id() {
                Some(id) => format!("{id}:{}", m.parameter_key()),
                None => format!(
                    "{}:{}:{}",
                    e.device_id(),
                    ts.to_rfc3339_opts(SecondsFormat::AutoSi, false),
                    m.parameter_key()
                ),
            };
            let row = Row {
                time: ts,
                device_id: e.device_id(),
                parameter_key: m.parameter_key().to_string(),
                value: m.value(),
                quality: i16::from(m.quality()),
                source: e.protocol().to_string(),
                event_id,
                attributes: serde_json::Value::Object(m.attributes().clone()),
            };
            rows.push((rows.len(), row));
        }
    }
    // By key, and within a key the latest arrival first; then keep the first of each key.
    rows.sort_unstable_by(|a, b| a.1.key().cmp(&b.1.key()).then(b.0.cmp(&a.0)));
    rows.dedup_by(|later_in_vec, kept| later_in_vec.1.key() == kept.1.key());
    rows.into_iter().map(|(_, r)| r).collect()
}

/// Carries out every message's disposition: acks, NAKs grouped by delay, dead letters
/// (error_logs rows first, then the DLQ, then removal of the original).
async fn settle<Q: Queue, S: Store>(
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
            Disposition::DeadLetter { error_type, reason } => {
                let device = item
                    .decoded
                    .as_ref()
                    .map(|x| x.event.device_id().to_string());
                dead.push((d, error_type, reason, device));
            }
        }
    }
    let committed = acks.len();
    if committed > 0 {
        ctx.metrics.events("success", committed as u64);
        if let Err(e) = ctx.queue.ack(acks).await {
            // The rows are committed; a redelivery only rewrites the same values.
            tracing::warn!(error = %e, "ack failed after commit; messages will be redelivered");
        }
    }
    if !dead.is_empty() {
        let entries: Vec<ErrorLogEntry> = dead
            .iter()
            .map(|(d, error_type, reason, device)| ErrorLogEntry {
                source: "nsready.worker".into(),
                level: "ERROR".into(),
                message: reason.clone(),
                context: json!({
                    "trace_id": d.trace_id, "device_id": device, "error_type": error_type,
                    "stream_seq": d.seq, "delivered": d.delivered,
                }),
            })
            .collect();
        match ctx.store.log_errors(&entries).await {
            Ok(()) => {
                for (d, error_type, reason, _) in dead {
                    let seq = d.seq;
                    let trace_id = d.trace_id.clone().unwrap_or_default();
                    let r = DeadLetterReason { error_type, reason };
                    match ctx.queue.dead_letter(d, &r).await {
                        Ok(()) => {
                            tracing::warn!(seq, error_type, reason = %r.reason, trace_id, "message dead-lettered");
                            ctx.metrics.events("dlq", 1);
                            ctx.metrics.error(error_type, 1);
                        }
                        Err(e) => {
                            tracing::warn!(seq, error = %e, "dead letter failed; the message stays queued");
                        }
                    }
                }
            }
            Err(e) => {
                // Without its error_logs row a message is not dead-lettered; try again later.
                tracing::warn!(error = %e, "error_logs write failed; NAK instead of dead letter");
                let delay = ctx.policy.base_delay;
                naks.entry(delay)
                    .or_default()
                    .extend(dead.into_iter().map(|(d, ..)| d));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(secs: u32, key: &str, value: f64) -> Decoded {
        let body = format!(
            r#"{{"project_id":"8212caa2-b928-4213-b64e-9f5b86f4cad1","site_id":"89a66770-bdcc-4c95-ac97-e1829cb7a960","device_id":"bc2c5e47-f17e-46f0-b5e7-76b214f4f6ad","protocol":"GPRS","source_timestamp":"2025-11-14T12:00:{secs:02}Z","metrics":[{{"parameter_key":"{key}","value":{value}}}]}}"#
        );
        envelope::decode(body.as_bytes()).expect("valid test event")
    }

    #[test]
    fn rows_are_deduplicated_last_wins_and_sorted_by_key() {
        let batch = [
            decoded(5, "b", 1.0),
            decoded(1, "a", 2.0),
            decoded(5, "b", 3.0),
            decoded(1, "a", 4.0),
            decoded(1, "c", 5.0),
        ];
        let rows = build_rows(batch.iter());
        let got: Vec<(u32, &str, Option<f64>)> = rows
            .iter()
            .map(|r| {
                (
                    chrono::Timelike::second(&r.time),
                    r.parameter_key.as_str(),
                    r.value,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, "a", Some(4.0)),
                (1, "c", Some(5.0)),
                (5, "b", Some(3.0))
            ]
        );
        assert!(
            rows[0]
                .event_id
                .starts_with("bc2c5e47-f17e-46f0-b5e7-76b214f4f6ad:2025-11-14T12:00:01+00:00:a")
        );
    }
}
