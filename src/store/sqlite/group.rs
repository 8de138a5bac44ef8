//! Group commit of the embedded store's upserts: the batches of every worker loop that
//! wait for the writer connection go into ONE transaction, each inside its own SAVEPOINT.
//!
//! Why: the cost of an SQLite commit here is the secondary index's pages (one per
//! device and parameter a batch touches), each rewritten whole into the WAL by every
//! commit whatever the number of rows in it; rows per commit is the lever (BENCHMARKS.md,
//! "what the SQLite anchor itself pays for"). Under load the loops' batches queue for the
//! writer anyway; the first one to get it (the leader) writes them all, so a commit holds
//! up to `WORKER_POOL_SIZE` batches. Without load a group is one batch and nothing waits:
//! no timer, no added latency.
//!
//! What each batch is promised stays as without grouping:
//! - a batch the database refuses rolls back to its own savepoint and gets its own error;
//!   the other batches of the group are committed (poison isolation and the worker's
//!   bisection work as before);
//! - an answer `Ok` is sent only after the group's COMMIT returned;
//! - when the COMMIT fails, or SQLite rolled the whole transaction back on its own (a
//!   full disk, an I/O error: its documented automatic rollbacks), every batch of the
//!   group gets that error, which is the file's, not any batch's data.
//!
//! The group size is bounded by the worker loops (each has at most one upsert in flight),
//! so it needs no limit of its own.

use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{RowParams, UPSERT, classify, prefix};
use crate::store::StoreError;

/// One batch waiting for the writer, with the channel its result goes back on.
pub(super) struct Pending {
    rows: Vec<RowParams>,
    done: oneshot::Sender<Result<u64, StoreError>>,
}

/// The batches waiting for the writer connection. Locked only for a push or a take,
/// never while writing.
#[derive(Default)]
pub(super) struct Waiting {
    batches: Mutex<Vec<Pending>>,
    /// Batches in each group written so far, for the tests that prove grouping.
    #[cfg(test)]
    pub(super) group_sizes: Mutex<Vec<usize>>,
}

impl Waiting {
    fn lock(&self) -> MutexGuard<'_, Vec<Pending>> {
        // Only pushes and takes happen under this lock: a panic cannot leave it half-done.
        self.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Batches waiting now (tests wait for a group to form).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Writes `rows` as part of the next group, on the calling (blocking) thread. Blocks
/// until the group that holds them has committed or failed.
pub(super) fn upsert(
    waiting: &Waiting,
    writer: &Mutex<Connection>,
    rows: Vec<RowParams>,
) -> Result<u64, StoreError> {
    let (done, mut result) = oneshot::channel();
    waiting.lock().push(Pending { rows, done });
    let mut conn = super::lock(writer);
    // A leader that held the writer meanwhile may have taken and answered this batch:
    // it answers every batch of its group before it lets go of the writer, so an empty
    // channel here means the batch is still waiting and this thread leads the next group.
    if let Ok(answer) = result.try_recv() {
        return answer;
    }
    let group = std::mem::take(&mut *waiting.lock());
    #[cfg(test)]
    waiting
        .group_sizes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(group.len());
    write(&mut conn, group);
    drop(conn);
    result.try_recv().unwrap_or_else(|_| {
        Err(StoreError::Other(
            "the group commit dropped this batch without an answer".into(),
        ))
    })
}

/// Writes one group and answers each of its batches.
fn write(conn: &mut Connection, group: Vec<Pending>) {
    let (batches, senders): (Vec<_>, Vec<_>) = group.into_iter().map(|p| (p.rows, p.done)).unzip();
    let results = match transaction(conn, &batches) {
        Ok(results) => results,
        Err(e) => vec![Err(e); batches.len()],
    };
    for (done, result) in senders.into_iter().zip(results) {
        // The caller's thread is blocked on the writer lock we hold, so its receiver is
        // alive; if it is not (the runtime shutting down), nobody waits for the answer.
        let _ = done.send(result);
    }
}

/// The group's transaction: one result per batch, or the error that lost them all.
fn transaction(
    conn: &mut Connection,
    batches: &[Vec<RowParams>],
) -> Result<Vec<Result<u64, StoreError>>, StoreError> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(classify)?;
    let mut results = Vec::with_capacity(batches.len());
    for rows in batches {
        let result = batch(&mut tx, rows);
        if let Err(e) = &result
            && tx.is_autocommit()
        {
            // SQLite rolled the whole transaction back (its automatic rollback on a full
            // disk, an I/O error, out of memory): the batches before this one are gone
            // too, and the file is the cause, not their data.
            return Err(prefix(
                e.clone(),
                "the group's transaction was rolled back by SQLite",
            ));
        }
        results.push(result);
    }
    tx.commit().map_err(classify)?;
    Ok(results)
}

/// One batch inside its savepoint: released on success, rolled back to (undoing this
/// batch alone) when a row is refused.
fn batch(tx: &mut Transaction<'_>, rows: &[RowParams]) -> Result<u64, StoreError> {
    let savepoint = tx.savepoint().map_err(classify)?;
    let mut written = 0u64;
    {
        let mut stmt = savepoint.prepare_cached(UPSERT).map_err(classify)?;
        for r in rows {
            written += stmt
                .execute(params![
                    r.time,
                    r.device_id,
                    r.parameter_key,
                    r.value,
                    r.quality,
                    &*r.source,
                    r.event_id,
                    r.attributes
                ])
                .map_err(classify)? as u64;
        }
    }
    savepoint.commit().map_err(classify)?;
    Ok(written)
}
