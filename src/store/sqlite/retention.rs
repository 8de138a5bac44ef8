//! Embedded store retention (`EMBEDDED_RETENTION`): deletes old rows so an edge box that
//! runs for years does not fill its disk.
//!
//! One pass deletes the `ingest_events` rows whose reading time (`time`, the primary key's
//! first column, so a range scan) is older than the retention, then the `error_logs` rows
//! older than it, in bounded batches of `batch_rows`: each batch is one short write
//! transaction on the writer connection, so the worker's upserts interleave with a long
//! backlog of deletions instead of waiting behind one huge transaction. The loop ([`run`])
//! makes a pass at start and then every interval, checks the shutdown token between
//! batches and while it sleeps, and is spawned through `Shutdown` (so the drain waits for
//! the batch in hand, never longer). A failed pass (the file busy, a full disk) is logged
//! and tried again at the next interval. Freed pages are reused by new rows (SQLite keeps
//! them on its free list); the file itself does not shrink.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{TransactionBehavior, params};
use tokio_util::sync::CancellationToken;

use super::{SqliteStore, classify, format_time, lock};
use crate::store::StoreError;

/// Rows deleted per transaction.
pub const BATCH_ROWS: usize = 10_000;

/// What the retention loop does.
#[derive(Clone, Copy, Debug)]
pub struct RetentionPolicy {
    /// Rows older than this (now minus `keep`) are deleted.
    pub keep: Duration,
    /// Pause between passes.
    pub interval: Duration,
    /// Rows per delete transaction.
    pub batch_rows: usize,
}

/// Rows one pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub error_logs: u64,
}

/// The tables retention applies to, with their bounded delete (oldest first).
#[derive(Clone, Copy, Debug)]
enum Table {
    IngestEvents,
    ErrorLogs,
}

impl Table {
    fn delete_batch(self) -> &'static str {
        match self {
            Table::IngestEvents => {
                "DELETE FROM ingest_events WHERE (time, device_id, parameter_key) IN \
                 (SELECT time, device_id, parameter_key FROM ingest_events \
                  WHERE time < ?1 ORDER BY time LIMIT ?2)"
            }
            Table::ErrorLogs => {
                "DELETE FROM error_logs WHERE id IN \
                 (SELECT id FROM error_logs WHERE time < ?1 ORDER BY time LIMIT ?2)"
            }
        }
    }
}

impl SqliteStore {
    /// Deletes at most `limit` rows of `table` older than `cutoff` (stored text form), in
    /// one transaction; returns how many.
    async fn prune_batch(
        &self,
        table: Table,
        cutoff: String,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.blocking(move |inner| {
            let mut conn = lock(&inner.writer);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(classify)?;
            let n = tx
                .prepare_cached(table.delete_batch())
                .and_then(|mut st| st.execute(params![cutoff, limit]))
                .map_err(classify)?;
            tx.commit().map_err(classify)?;
            Ok(n as u64)
        })
        .await
    }

    /// Deletes every `ingest_events` and `error_logs` row older than `cutoff`, `batch_rows`
    /// per transaction, stopping early (between batches) once `stop` is cancelled.
    ///
    /// # Errors
    /// The classified SQLite error of the batch that failed; earlier batches stay deleted.
    pub async fn prune_older_than(
        &self,
        cutoff: DateTime<Utc>,
        batch_rows: usize,
        stop: &CancellationToken,
    ) -> Result<Pruned, StoreError> {
        let cutoff = format_time(&cutoff);
        let batch_rows = batch_rows.max(1);
        let mut pruned = Pruned::default();
        for table in [Table::IngestEvents, Table::ErrorLogs] {
            while !stop.is_cancelled() {
                let n = self.prune_batch(table, cutoff.clone(), batch_rows).await?;
                match table {
                    Table::IngestEvents => pruned.events += n,
                    Table::ErrorLogs => pruned.error_logs += n,
                }
                if n < batch_rows as u64 {
                    break;
                }
                // Lets the worker's upserts take the writer between two batches.
                tokio::task::yield_now().await;
            }
        }
        Ok(pruned)
    }
}

/// The retention loop: a pass now, then one every `policy.interval`, until `stop`.
pub async fn run(store: SqliteStore, policy: RetentionPolicy, stop: CancellationToken) {
    tracing::info!(
        keep_secs = policy.keep.as_secs(),
        interval_secs = policy.interval.as_secs(),
        "embedded retention on"
    );
    while !stop.is_cancelled() {
        let keep = chrono::Duration::from_std(policy.keep).ok();
        match keep.and_then(|k| Utc::now().checked_sub_signed(k)) {
            Some(cutoff) => match store
                .prune_older_than(cutoff, policy.batch_rows, &stop)
                .await
            {
                Ok(p) if p != Pruned::default() => tracing::info!(
                    events = p.events,
                    error_logs = p.error_logs,
                    cutoff = %cutoff,
                    "retention deleted old rows"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention pass failed; next at the interval"),
            },
            None => tracing::warn!("EMBEDDED_RETENTION reaches before year 0; nothing deleted"),
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(policy.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// Deletes exactly the rows before the cutoff, across several bounded batches, in both
    /// tables, and nothing once the token is cancelled.
    #[tokio::test]
    async fn prunes_old_rows_in_batches_and_keeps_new_ones() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("nsready.db")).expect("open");
        store.migrate().await.expect("migrate");
        store
            .import_registry(&crate::registry::demo())
            .await
            .expect("demo registry");
        let key = format!("project:{}:voltage", crate::registry::demo_ids::PROJECT_01);
        let device = crate::registry::demo_ids::DEVICE_01_1.to_string();
        let base = DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
            .expect("time")
            .to_utc();
        {
            let conn = lock(&store.inner.writer);
            for day in 0..10i64 {
                let t = format_time(&(base + chrono::Duration::days(day)));
                conn.execute(
                    "INSERT INTO ingest_events (time, device_id, parameter_key, value) \
                     VALUES (?1, ?2, ?3, 1.0)",
                    params![t, device, key],
                )
                .expect("row");
                conn.execute(
                    "INSERT INTO error_logs (time, message) VALUES (?1, 'x')",
                    params![t],
                )
                .expect("error log");
            }
        }
        let cutoff = base + chrono::Duration::days(7);
        let stopped = CancellationToken::new();
        stopped.cancel();
        let none = store
            .prune_older_than(cutoff, 3, &stopped)
            .await
            .expect("prune");
        assert_eq!(none, Pruned::default(), "a cancelled token deletes nothing");

        let pruned = store
            .prune_older_than(cutoff, 3, &CancellationToken::new())
            .await
            .expect("prune");
        assert_eq!(
            pruned,
            Pruned {
                events: 7,
                error_logs: 7
            }
        );
        assert_eq!(store.count_rows().await.expect("count"), 3);
        let conn = lock(&store.inner.reader);
        let oldest: String = conn
            .query_row("SELECT min(time) FROM ingest_events", [], |r| r.get(0))
            .expect("min");
        assert_eq!(oldest, format_time(&cutoff));
        let logs: i64 = conn
            .query_row("SELECT count(*) FROM error_logs", [], |r| r.get(0))
            .expect("count");
        assert_eq!(logs, 3);
    }
}
