//! The queue thread: it owns the SQLite connection and runs every command, group-committed.
//!
//! Callers send a [`Command`] over a bounded channel and await its oneshot reply. The
//! thread takes the first waiting command, drains every other command already queued, runs
//! them all inside ONE write transaction, commits, and only then answers them. Under load
//! hundreds of publishes, acks and fetches share one commit, which is what makes a single
//! SQLite file sustain tens of thousands of messages a second; and since no reply leaves
//! before COMMIT returns, a publish answered `Ok` is on disk (see `schema.rs` for what
//! "on disk" promises). If any statement of a group fails, the whole group is rolled back
//! and every command in it is answered with the error: none of them took effect.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::{Notify, mpsc};

use super::command::{Answer, Command, Fetched, Op, StoredMessage};
use super::{EmbeddedHandle, EmbeddedQueueOptions, schema};
use crate::queue::{DeadLetter, Outgoing, Published, QueueError, QueueStats};

/// Most commands run in one transaction: bounds the latency a group adds to its first
/// command and the size of one WAL append.
const MAX_GROUP: usize = 1024;

/// Expired dedupe entries are deleted at most this often (in ms): pruning is a range
/// delete on an index, cheap but not worth doing on every group.
const PRUNE_EVERY_MS: i64 = 1000;

/// The state of the queue thread.
pub(super) struct Engine {
    conn: Connection,
    path: PathBuf,
    max_msgs: u64,
    max_bytes: u64,
    ack_wait_ms: i64,
    window_ms: i64,
    /// Messages stored, kept in memory so the `Full` check costs nothing per publish.
    count: u64,
    /// Payload bytes stored, likewise.
    bytes: u64,
    /// `PRAGMA data_version` when `count`/`bytes` were last exact; it changes when another
    /// connection (say `nsready dlq` in another process) commits, and then they are
    /// recounted.
    data_version: i64,
    last_prune_ms: i64,
    /// Woken after a commit that made messages visible (publish, NAK), for waiting fetches.
    notify: Arc<Notify>,
}

impl Engine {
    /// Takes over an opened, migrated connection and reads the current totals.
    ///
    /// # Errors
    /// [`QueueError::Setup`] when the totals cannot be read.
    pub(super) fn new(
        conn: Connection,
        path: PathBuf,
        opts: &EmbeddedQueueOptions,
        notify: Arc<Notify>,
    ) -> Result<Engine, QueueError> {
        let mut engine = Engine {
            conn,
            path,
            max_msgs: opts.max_msgs,
            max_bytes: opts.max_bytes,
            ack_wait_ms: duration_ms(opts.ack_wait),
            window_ms: duration_ms(opts.duplicate_window),
            count: 0,
            bytes: 0,
            data_version: 0,
            last_prune_ms: 0,
            notify,
        };
        engine.recount().map_err(|e| {
            QueueError::Setup(format!(
                "queue file {}: {}",
                engine.path.display(),
                schema::describe(&e)
            ))
        })?;
        Ok(engine)
    }

    /// Runs commands until every sender is gone, i.e. the last `EmbeddedQueue` clone was
    /// dropped; the connection closes (and checkpoints the WAL) when this returns.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = Vec::with_capacity(64);
            group.push(first);
            // Everything that queued up while the previous group committed joins this one.
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(cmd) => group.push(cmd),
                    Err(_) => break,
                }
            }
            self.execute(group);
        }
    }

    /// Runs one group in one transaction and answers every command after the commit.
    fn execute(&mut self, group: Vec<Command>) {
        let now = now_ms();
        let totals = (self.count, self.bytes);
        let mut done = Vec::with_capacity(group.len());
        let mut failed = Vec::new();
        let mut wake = false;
        let mut commands = group.into_iter();
        let mut failure = self.begin().err();
        if failure.is_none() {
            for Command { op, reply } in commands.by_ref() {
                match self.apply(op, now, &mut wake) {
                    Ok(answer) => done.push((reply, answer)),
                    Err(e) => {
                        failed.push(reply);
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        if failure.is_none() {
            failure = self.conn.execute_batch("COMMIT").err();
        }
        match failure {
            None => {
                for (reply, answer) in done {
                    // A caller that gave up (timeout, dropped future) no longer listens; what
                    // it asked for is committed all the same, which is what a retry expects.
                    let _ = reply.send(answer);
                }
                if wake {
                    self.notify.notify_waiters();
                }
            }
            Some(e) => {
                // Some errors (SQLITE_FULL among them) roll back by themselves; only roll
                // back what is still open.
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                (self.count, self.bytes) = totals;
                tracing::warn!(error = %e, path = %self.path.display(), "embedded queue transaction failed");
                let replies = done
                    .into_iter()
                    .map(|(reply, _)| reply)
                    .chain(failed)
                    .chain(commands.map(|c| c.reply));
                for reply in replies {
                    let _ = reply.send(Err(self.unavailable(&e)));
                }
            }
        }
    }

    /// Opens the group's write transaction and resynchronises the totals if another
    /// connection wrote to the file since the last group.
    fn begin(&mut self) -> rusqlite::Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let version: i64 = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if version != self.data_version {
            self.recount()?;
        }
        Ok(())
    }

    /// Reads the exact totals (a full scan: only at open and after a foreign write).
    fn recount(&mut self) -> rusqlite::Result<()> {
        let (count, bytes): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM messages",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        self.count = u64::try_from(count).unwrap_or(0);
        self.bytes = u64::try_from(bytes).unwrap_or(0);
        self.data_version = self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(())
    }

    /// Runs one command inside the open transaction. The outer error is SQLite's (fails
    /// the group); the inner one belongs to this command alone (`NotFound`).
    fn apply(
        &mut self,
        op: Op,
        now: i64,
        wake: &mut bool,
    ) -> rusqlite::Result<Result<Answer, QueueError>> {
        Ok(match op {
            Op::Publish(msgs) => {
                let results = self.publish(msgs, now)?;
                *wake |= results.iter().any(|r| matches!(r, Ok(p) if !p.duplicate));
                Ok(Answer::Published(results))
            }
            Op::Fetch { max, max_bytes } => Ok(Answer::Fetched(self.fetch(max, max_bytes, now)?)),
            Op::Ack(seqs) => {
                for seq in seqs {
                    self.remove(seq)?;
                }
                Ok(Answer::Done)
            }
            Op::Nak { handles, delay } => {
                self.set_visible(&handles, now.saturating_add(duration_ms(delay)))?;
                // Waiting fetches recompute when the next message comes back.
                *wake = true;
                Ok(Answer::Done)
            }
            Op::Touch(handles) => {
                self.set_visible(&handles, now.saturating_add(self.ack_wait_ms))?;
                Ok(Answer::Done)
            }
            Op::DeadLetter {
                handle,
                error_type,
                reason,
            } => Ok(Answer::DeadLettered(
                self.dead_letter(handle, error_type, &reason, now)?,
            )),
            Op::Stats => Ok(Answer::Stats(self.stats(now)?)),
            Op::DlqList { from, limit } => Ok(Answer::DeadLetters(self.dlq_list(from, limit)?)),
            Op::DlqCounts => Ok(Answer::Counts(self.dlq_counts()?)),
            Op::DlqRemove(seq) => {
                let n = self
                    .conn
                    .prepare_cached("DELETE FROM dlq WHERE seq = ?1")?
                    .execute([to_i64(seq)])?;
                if n == 0 {
                    Err(QueueError::NotFound(seq))
                } else {
                    Ok(Answer::Done)
                }
            }
            #[cfg(test)]
            Op::Sql(sql) => {
                self.conn.execute_batch(&sql)?;
                Ok(Answer::Done)
            }
        })
    }

    /// Stores each message unless its id was seen inside the duplicate window (answer: the
    /// original sequence) or the limits are reached (`Full`: nothing is discarded).
    fn publish(
        &mut self,
        msgs: Vec<Outgoing>,
        now: i64,
    ) -> rusqlite::Result<Vec<Result<Published, QueueError>>> {
        let cutoff = now.saturating_sub(self.window_ms);
        if now.saturating_sub(self.last_prune_ms) >= PRUNE_EVERY_MS {
            self.conn
                .prepare_cached("DELETE FROM dedupe WHERE at < ?1")?
                .execute([cutoff])?;
            self.last_prune_ms = now;
        }
        let mut results = Vec::with_capacity(msgs.len());
        for msg in msgs {
            // Like JetStream without a Nats-Msg-Id header: an empty id is never a duplicate.
            let dedupe = !msg.msg_id.is_empty();
            if dedupe {
                let seen: Option<i64> = self
                    .conn
                    .prepare_cached("SELECT seq FROM dedupe WHERE msg_id = ?1 AND at >= ?2")?
                    .query_row(params![msg.msg_id, cutoff], |r| r.get(0))
                    .optional()?;
                if let Some(seq) = seen {
                    results.push(Ok(Published {
                        seq: from_i64(seq),
                        duplicate: true,
                    }));
                    continue;
                }
            }
            let size = msg.payload.len() as u64;
            // `discard: new`: refuse the newcomer, never drop what is stored.
            if self.count >= self.max_msgs || self.bytes.saturating_add(size) > self.max_bytes {
                results.push(Err(QueueError::Full));
                continue;
            }
            let trace_id = (!msg.trace_id.is_empty()).then_some(msg.trace_id.as_str());
            self.conn
                .prepare_cached(
                    "INSERT INTO messages (msg_id, trace_id, payload, size, published_at, \
                     visible_at, delivered) VALUES (?1, ?2, ?3, ?4, ?5, ?5, 0)",
                )?
                .execute(params![
                    msg.msg_id,
                    trace_id,
                    msg.payload.as_ref(),
                    to_i64(size),
                    now
                ])?;
            let seq = self.conn.last_insert_rowid();
            if dedupe {
                self.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO dedupe (msg_id, seq, at) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![msg.msg_id, seq, now])?;
            }
            self.count += 1;
            self.bytes += size;
            results.push(Ok(Published {
                seq: from_i64(seq),
                duplicate: false,
            }));
        }
        Ok(results)
    }

    /// Leases up to `max` visible messages holding at most `max_bytes` of payload (at least
    /// one, whatever its size), oldest sequence first: each becomes invisible for the ack
    /// wait and its delivery count goes up.
    fn fetch(&mut self, max: usize, max_bytes: usize, now: i64) -> rusqlite::Result<Fetched> {
        let lease_until = now.saturating_add(self.ack_wait_ms);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let cap = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        // The inner SELECT walks the table in seq (rowid) order and skips leased rows; no
        // index on visible_at is usable here on purpose (the only one is partial), since
        // sorting every visible row by seq would cost far more on a deep backlog. The
        // running sum of sizes (read from the `size` column, never the payload) stops the
        // batch at the byte cap; the first message is always taken.
        let mut messages = self
            .conn
            .prepare_cached(
                "UPDATE messages SET visible_at = ?1, delivered = delivered + 1 \
                 WHERE seq IN (SELECT seq FROM \
                     (SELECT seq, size, sum(size) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS upto \
                      FROM (SELECT seq, size FROM messages WHERE visible_at <= ?2 \
                            ORDER BY seq LIMIT ?3)) \
                     WHERE upto <= ?4 OR upto = size) \
                 RETURNING seq, delivered, trace_id, payload, published_at",
            )?
            .query_map(params![lease_until, now, limit, cap], |r| {
                Ok(StoredMessage {
                    seq: from_i64(r.get(0)?),
                    delivered: from_i64(r.get(1)?),
                    trace_id: r.get(2)?,
                    payload: r.get(3)?,
                    published_at_ms: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // RETURNING gives no order guarantee.
        messages.sort_unstable_by_key(|m| m.seq);
        let next_visible_in = if messages.is_empty() {
            let next: Option<i64> = self
                .conn
                .prepare_cached(
                    "SELECT min(visible_at) FROM messages WHERE delivered > 0 AND visible_at > ?1",
                )?
                .query_row([now], |r| r.get(0))?;
            next.map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0)))
        } else {
            None
        };
        Ok(Fetched {
            messages,
            next_visible_in,
        })
    }

    /// Deletes one message (ack); an already settled one is a no-op.
    fn remove(&mut self, seq: u64) -> rusqlite::Result<()> {
        let size: Option<i64> = self
            .conn
            .prepare_cached("DELETE FROM messages WHERE seq = ?1 RETURNING size")?
            .query_row([to_i64(seq)], |r| r.get(0))
            .optional()?;
        if let Some(size) = size {
            self.count = self.count.saturating_sub(1);
            self.bytes = self.bytes.saturating_sub(from_i64(size));
        }
        Ok(())
    }

    /// Moves the lease deadline of current deliveries (NAK delay, progress). A handle
    /// from an older delivery of a message that has since been redelivered changes
    /// nothing: only the current holder may postpone it.
    fn set_visible(&mut self, handles: &[EmbeddedHandle], at: i64) -> rusqlite::Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE messages SET visible_at = ?1 WHERE seq = ?2 AND delivered = ?3",
        )?;
        for h in handles {
            stmt.execute(params![at, to_i64(h.seq), to_i64(h.delivered)])?;
        }
        Ok(())
    }

    /// Copies the message into the DLQ (once per original sequence) and deletes it, both
    /// in the group's transaction. A message already settled elsewhere is left alone.
    fn dead_letter(
        &mut self,
        handle: EmbeddedHandle,
        error_type: &str,
        reason: &str,
        now: i64,
    ) -> rusqlite::Result<u64> {
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO dlq (original_seq, payload, error_type, reason, \
                 delivered, trace_id, time) \
                 SELECT seq, payload, ?2, ?3, delivered, trace_id, ?4 FROM messages WHERE seq = ?1",
            )?
            .execute(params![to_i64(handle.seq), error_type, reason, now])?;
        // The letter's own sequence (also when it was stored by an earlier attempt).
        let dlq_seq: Option<i64> = self
            .conn
            .prepare_cached("SELECT seq FROM dlq WHERE original_seq = ?1")?
            .query_row([to_i64(handle.seq)], |r| r.get(0))
            .optional()?;
        self.remove(handle.seq)?;
        Ok(dlq_seq.map_or(0, from_i64))
    }

    /// Counts; `pending + ack_pending` equals the stored messages by construction.
    fn stats(&mut self, now: i64) -> rusqlite::Result<QueueStats> {
        // Served by the partial index: only delivered messages are looked at.
        let (ack_pending, redelivered): (i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT count(*), coalesce(sum(delivered > 1), 0) FROM messages \
                 WHERE delivered > 0 AND visible_at > ?1",
            )?
            .query_row([now], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let (dlq_depth, dlq_last_seq): (i64, i64) = self
            .conn
            .prepare_cached("SELECT count(*), coalesce(max(seq), 0) FROM dlq")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        // The oldest message is the lowest sequence (the primary key): one index step.
        let oldest: Option<i64> = self
            .conn
            .prepare_cached("SELECT published_at FROM messages ORDER BY seq LIMIT 1")?
            .query_row([], |r| r.get(0))
            .optional()?;
        let ack_pending = from_i64(ack_pending);
        Ok(QueueStats {
            oldest_age_ms: oldest.map_or(0, |at| from_i64(now.saturating_sub(at))),
            pending: self.count.saturating_sub(ack_pending),
            ack_pending,
            redelivered: from_i64(redelivered),
            waiting_pulls: 0,
            dlq_depth: from_i64(dlq_depth),
            dlq_last_seq: from_i64(dlq_last_seq),
        })
    }

    /// Dead letters by error type: a GROUP BY on the error type column, never a payload read.
    fn dlq_counts(&mut self) -> rusqlite::Result<Vec<(String, u64)>> {
        self.conn
            .prepare_cached("SELECT error_type, count(*) FROM dlq GROUP BY error_type")?
            .query_map([], |r| Ok((r.get(0)?, from_i64(r.get(1)?))))?
            .collect()
    }

    fn dlq_list(&mut self, from: u64, limit: usize) -> rusqlite::Result<Vec<DeadLetter>> {
        self.conn
            .prepare_cached(
                "SELECT seq, original_seq, payload, error_type, reason, delivered, trace_id, time \
                 FROM dlq WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
            )?
            .query_map(
                params![to_i64(from), i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| {
                    Ok(DeadLetter {
                        seq: from_i64(r.get(0)?),
                        original_seq: from_i64(r.get(1)?),
                        payload: bytes::Bytes::from(r.get::<_, Vec<u8>>(2)?),
                        error_type: r.get(3)?,
                        reason: r.get(4)?,
                        delivered: from_i64(r.get(5)?),
                        trace_id: r.get(6)?,
                        time: chrono::DateTime::from_timestamp_millis(r.get(7)?),
                    })
                },
            )?
            .collect()
    }

    /// The error every command of a failed group gets. A full disk is named as such: the
    /// collector answers 503 and the operator knows what to free.
    fn unavailable(&self, e: &rusqlite::Error) -> QueueError {
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => QueueError::Unavailable(format!(
                "disk full: queue file {} cannot grow; free disk space to accept events again",
                self.path.display()
            )),
            _ => QueueError::Unavailable(format!(
                "queue file {}: {}",
                self.path.display(),
                schema::describe(e)
            )),
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (visibility deadlines survive restarts).
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or(0)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Sequences and counts are stored as SQLite integers (i64); they never exceed i64::MAX.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
