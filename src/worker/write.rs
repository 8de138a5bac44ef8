//! Writing a batch's rows: one upsert for every undecided message, bisected when the
//! database refuses it, so the refusal is pinned on the one message that causes it.
//!
//! What a failure means is not decided here but by [`after_write_failure`]: a failure
//! proven to be the infrastructure's, or one the store's ping confirms, pauses the pool
//! (messages NAKed without counting); any other splits the group; a single message gets its
//! outcome (dead letter at once for a value the database can never store, otherwise a
//! counted retry with the database's reason).

use std::time::{Duration, Instant};

use chrono::Utc;

use super::Ctx;
use super::disposition::{Outcome, WriteStep, after_write_failure, needs_ping};
use super::process::{Item, build_rows, mark_infrastructure};
use crate::queue::{Delivery, Queue};
use crate::store::{Row, Store, StoreError};

/// Writes the rows of every message without an outcome yet, bisecting on failures the
/// store does not prove to be its own. Returns true when the store is down.
pub(super) async fn write_rows<Q: Queue, S: Store>(
    ctx: &Ctx<Q, S>,
    items: &mut [Item<Q::Handle>],
) -> bool {
    let pending: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].outcome.is_none())
        .collect();
    if pending.is_empty() {
        return false;
    }
    let mut stack = vec![pending];
    let mut first = true;
    while let Some(group) = stack.pop() {
        let rows = build_rows(group.iter().filter_map(|&i| items[i].decoded.as_ref()));
        if std::mem::take(&mut first) {
            // The rows of every message still undecided: the batch's `worker.batch` span.
            tracing::Span::current().record("rows", rows.len());
        }
        let started = Instant::now();
        let result = write_keeping_alive(ctx, &rows, items).await;
        drop(rows);
        let e = match result {
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
                continue;
            }
            Err(e) => e,
        };
        let store_answers = if needs_ping(&e) {
            match ctx.store.ping().await {
                Ok(()) => true,
                Err(ping) => {
                    tracing::warn!(error = %e, ping = %ping, "write failed and the store does not answer");
                    false
                }
            }
        } else {
            false
        };
        match after_write_failure(&e, store_answers, group.len()) {
            WriteStep::Pause => {
                tracing::warn!(error = %e, messages = group.len(), "store unavailable; NAK and pause");
                ctx.metrics.database_error();
                mark_infrastructure(items);
                return true;
            }
            WriteStep::Bisect => {
                tracing::info!(error = %e, messages = group.len(), "batch refused; bisecting");
                // Isolate the bad message: each half is tried on its own.
                let (a, b) = group.split_at(group.len() / 2);
                stack.push(b.to_vec());
                stack.push(a.to_vec());
            }
            WriteStep::Settle(outcome) => {
                let seq = items[group[0]].delivery.as_ref().map(|d| d.seq);
                tracing::warn!(error = %e, seq, "the database refuses one message's rows");
                items[group[0]].outcome = Some(outcome);
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
