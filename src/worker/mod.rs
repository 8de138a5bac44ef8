//! The worker pool: pulls batches from the queue and lands them in the store.
//!
//! `WORKER_POOL_SIZE` loops share one queue consumer. Each pulls up to `WORKER_BATCH_SIZE`
//! messages and `WORKER_BATCH_MAX_BYTES` of payload or waits at most
//! `WORKER_BATCH_TIMEOUT`, hands the batch to
//! [`process::process_batch`], and repeats. When the store is down every loop stops pulling
//! and probes it once a second ([`PoolState`]); messages in hand were NAKed, never
//! dead-lettered. On shutdown a loop finishes (and acks) the batch in hand, then exits.
//! The ack policy itself lives in [`disposition`]; `process.rs` runs one batch, `write.rs`
//! writes and bisects, `settle.rs` carries out acks, NAKs and dead letters.

pub mod disposition;
pub mod process;
pub mod registry_cache;
mod settle;
mod write;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tracing::Instrument;

use crate::config::WorkerArgs;
use crate::event::TimeWindow;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::shutdown::Shutdown;
use crate::store::Store;
use disposition::RetryPolicy;
use process::BatchResult;
use registry_cache::RegistryCache;

/// Width of the throughput window (`PoolState::committed_per_sec`), in seconds.
pub const THROUGHPUT_WINDOW_SECS: i64 = 60;

/// Health of the pool, shared with the HTTP health handler: store state, the stall clock,
/// and a rolling count of committed events for the throughput figure.
#[derive(Debug)]
pub struct PoolState {
    /// Worker loops in this process.
    workers: usize,
    /// Set when a batch failed because the store is unavailable; cleared by a good ping.
    store_down: AtomicBool,
    /// Unix milliseconds of the last commit; 0 before the first.
    last_commit_ms: AtomicI64,
    /// Unix milliseconds when the pool started.
    started_ms: AtomicI64,
    /// Unix milliseconds since which health has seen the queue not empty; 0 when it last
    /// saw it empty. The stall clock starts at the later of this and the last commit.
    nonempty_since_ms: AtomicI64,
    /// Committed events per second of the last [`THROUGHPUT_WINDOW_SECS`]: slot
    /// `sec % window` holds `(sec, events)`. Touched once per committed batch, not per event.
    per_second: Mutex<Vec<(i64, u64)>>,
}

impl PoolState {
    /// State of a pool of `workers` loops starting now.
    fn new(workers: usize) -> PoolState {
        PoolState {
            workers,
            store_down: AtomicBool::new(false),
            last_commit_ms: AtomicI64::new(0),
            started_ms: AtomicI64::new(Utc::now().timestamp_millis()),
            nonempty_since_ms: AtomicI64::new(0),
            per_second: Mutex::new(vec![(i64::MIN, 0); THROUGHPUT_WINDOW_SECS as usize]),
        }
    }

    /// Records a commit of `events` messages.
    fn committed(&self, events: usize) {
        self.committed_at(events, Utc::now().timestamp_millis());
    }

    fn committed_at(&self, events: usize, now_ms: i64) {
        self.last_commit_ms.store(now_ms, Ordering::Relaxed);
        let sec = now_ms.div_euclid(1000);
        let slot = sec.rem_euclid(THROUGHPUT_WINDOW_SECS) as usize;
        // A poisoned lock only means another thread panicked mid-update of a counter.
        let mut buckets = self.per_second.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = buckets.get_mut(slot) {
            if b.0 != sec {
                *b = (sec, 0);
            }
            b.1 += events as u64;
        }
    }

    /// Worker loops in this process.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// True while workers pause because the store is unavailable.
    pub fn store_down(&self) -> bool {
        self.store_down.load(Ordering::Relaxed)
    }

    /// Events committed per second over the last minute (over the pool's lifetime when it
    /// is younger than that).
    pub fn committed_per_sec(&self) -> f64 {
        self.committed_per_sec_at(Utc::now().timestamp_millis())
    }

    fn committed_per_sec_at(&self, now_ms: i64) -> f64 {
        let sec = now_ms.div_euclid(1000);
        let total: u64 = self
            .per_second
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(s, _)| (0..THROUGHPUT_WINDOW_SECS).contains(&sec.saturating_sub(*s)))
            .map(|(_, n)| n)
            .sum();
        let age = (now_ms - self.started_ms.load(Ordering::Relaxed)) as f64 / 1000.0;
        let window = age.clamp(1.0, THROUGHPUT_WINDOW_SECS as f64);
        total as f64 / window
    }

    /// Feeds one reading of the queue depth to the stall clock; true when the pool is
    /// stalled: the queue has not been empty for longer than `after` and nothing was
    /// committed in that time.
    ///
    /// The clock starts when health first sees the queue not empty, not at the last commit
    /// or at pool start: after an idle hour, the first message to arrive is not a stall.
    /// Readings come from health probes and scrapes, so a stall is reported at most
    /// `after` plus one probe interval late, never early.
    pub fn observe_depth(&self, depth: u64, after: Duration) -> bool {
        self.observe_depth_at(depth, after, Utc::now().timestamp_millis())
    }

    fn observe_depth_at(&self, depth: u64, after: Duration, now_ms: i64) -> bool {
        if depth == 0 {
            self.nonempty_since_ms.store(0, Ordering::Relaxed);
            return false;
        }
        let since = match self.nonempty_since_ms.compare_exchange(
            0,
            now_ms,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now_ms,
            Err(earlier) => earlier,
        };
        let quiet_from = since.max(self.last_commit_ms.load(Ordering::Relaxed));
        let quiet = Duration::from_millis((now_ms - quiet_from).max(0) as u64);
        quiet > after
    }
}

impl crate::collector::WorkerHealth for PoolState {
    fn workers(&self) -> usize {
        PoolState::workers(self)
    }
    fn store_down(&self) -> bool {
        PoolState::store_down(self)
    }
    fn committed_per_sec(&self) -> f64 {
        PoolState::committed_per_sec(self)
    }
    fn window_secs(&self) -> i64 {
        THROUGHPUT_WINDOW_SECS
    }
    fn observe_depth(&self, depth: u64, after: Duration) -> bool {
        PoolState::observe_depth(self, depth, after)
    }
}

/// Everything a worker loop needs. Cheap to clone.
pub struct Ctx<Q, S> {
    pub(crate) queue: Q,
    pub(crate) store: S,
    pub(crate) registry: RegistryCache<S>,
    pub(crate) metrics: Metrics,
    pub(crate) policy: RetryPolicy,
    pub(crate) ack_wait: Duration,
    pub(crate) batch_size: usize,
    /// Payload bytes a batch may hold (at least one message).
    pub(crate) batch_max_bytes: usize,
    pub(crate) batch_timeout: Duration,
    pub(crate) state: Arc<PoolState>,
    /// The time window queued messages are checked against (`TimeWindow::for_worker`).
    pub(crate) window: TimeWindow,
    /// Abort after the first commit, before acking (tests only).
    pub(crate) crash_after_commit: bool,
}

impl<Q: Clone, S: Clone> Clone for Ctx<Q, S> {
    fn clone(&self) -> Self {
        Ctx {
            queue: self.queue.clone(),
            store: self.store.clone(),
            registry: self.registry.clone(),
            metrics: self.metrics.clone(),
            policy: self.policy,
            ack_wait: self.ack_wait,
            batch_size: self.batch_size,
            batch_max_bytes: self.batch_max_bytes,
            batch_timeout: self.batch_timeout,
            state: Arc::clone(&self.state),
            window: self.window,
            crash_after_commit: self.crash_after_commit,
        }
    }
}

/// A configured pool, ready to spawn.
pub struct WorkerPool<Q, S> {
    ctx: Ctx<Q, S>,
    size: usize,
}

impl<Q: Queue, S: Store> WorkerPool<Q, S> {
    /// A pool over this queue and store.
    /// `window` is the collector's time window; the worker applies
    /// [`TimeWindow::for_worker`] of it to every message.
    pub fn new(
        queue: Q,
        store: S,
        metrics: Metrics,
        args: &WorkerArgs,
        window: TimeWindow,
    ) -> Self {
        let size = args.worker_pool_size.max(1);
        let state = Arc::new(PoolState::new(size));
        let registry = RegistryCache::new(
            store.clone(),
            args.validation_mode,
            args.registry_refresh_interval,
        );
        WorkerPool {
            ctx: Ctx {
                queue,
                store,
                registry,
                metrics,
                policy: RetryPolicy {
                    max_retries: args.worker_max_retries.max(1),
                    base_delay: args.worker_retry_delay,
                    max_delay: Duration::from_secs(30).max(args.worker_retry_delay),
                },
                ack_wait: args.worker_ack_wait,
                batch_size: args.worker_batch_size.max(1),
                batch_max_bytes: args.worker_batch_max_bytes.max(1),
                batch_timeout: args.worker_batch_timeout,
                state,
                window: window.for_worker(),
                crash_after_commit: args.crash_after_commit(),
            },
            size,
        }
    }

    /// The pool's health state (for `/v1/health`).
    pub fn state(&self) -> Arc<PoolState> {
        Arc::clone(&self.ctx.state)
    }

    /// Spawns the worker loops on the shutdown handle's tracker.
    pub fn spawn(self, shutdown: &Shutdown) {
        for id in 0..self.size {
            let ctx = self.ctx.clone();
            let sd = shutdown.clone();
            shutdown.spawn(async move { run(id, ctx, sd).await });
        }
        tracing::info!(workers = self.size, "worker pool started");
    }
}

/// One worker loop.
async fn run<Q: Queue, S: Store>(id: usize, ctx: Ctx<Q, S>, shutdown: Shutdown) {
    while !shutdown.is_triggered() {
        if ctx.state.store_down() && !wait_for_store(&ctx, &shutdown).await {
            break;
        }
        // Not raced against shutdown: a pull abandoned half-way would leave messages
        // delivered to nobody until the ack wait. The pull is bounded by the batch timeout.
        let batch = match ctx
            .queue
            .fetch_bounded(ctx.batch_size, ctx.batch_max_bytes, ctx.batch_timeout)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(worker = id, error = %e, "pull failed; retrying in 1 s");
                tokio::select! {
                    () = shutdown.wait() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        let span = tracing::info_span!(
            "worker.batch",
            worker = id,
            messages = n,
            rows = tracing::field::Empty
        );
        let result = process::process_batch(&ctx, batch)
            .instrument(span.clone())
            .await;
        span.in_scope(|| match result {
            BatchResult::Settled { committed } => {
                tracing::debug!(committed, "batch settled");
            }
            BatchResult::StoreDown => {
                ctx.state.store_down.store(true, Ordering::Relaxed);
            }
        });
    }
    tracing::debug!(worker = id, "worker stopped");
}

/// Probes the store once a second until it answers. False when shutdown came first.
async fn wait_for_store<Q: Queue, S: Store>(ctx: &Ctx<Q, S>, shutdown: &Shutdown) -> bool {
    loop {
        match ctx.store.ping().await {
            Ok(()) => {
                if ctx.state.store_down.swap(false, Ordering::Relaxed) {
                    tracing::info!("store is back; resuming pulls");
                }
                return true;
            }
            Err(e) => tracing::debug!(error = %e, "store still unavailable"),
        }
        tokio::select! {
            () = shutdown.wait() => return false,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;
    const AFTER: Duration = Duration::from_secs(60);

    fn pool_started_at(ms: i64) -> PoolState {
        let p = PoolState::new(4);
        p.started_ms.store(ms, Ordering::Relaxed);
        p
    }

    #[test]
    fn the_first_message_after_an_idle_spell_is_not_a_stall() {
        let p = pool_started_at(T0);
        // An hour without traffic (and without commits), then a message arrives.
        let t = T0 + 3_600_000;
        assert!(!p.observe_depth_at(1, AFTER, t));
        assert!(!p.observe_depth_at(1, AFTER, t + 59_000));
        // The same after commits long ago.
        p.committed_at(10, t + 59_500);
        assert!(!p.observe_depth_at(0, AFTER, t + 60_000));
        assert!(!p.observe_depth_at(1, AFTER, t + 7_200_000));
    }

    #[test]
    fn a_queue_not_empty_without_commits_for_longer_than_the_limit_is_a_stall() {
        let p = pool_started_at(T0);
        assert!(!p.observe_depth_at(5, AFTER, T0 + 1_000));
        assert!(!p.observe_depth_at(5, AFTER, T0 + 61_000));
        assert!(p.observe_depth_at(5, AFTER, T0 + 61_001));
        // A commit restarts the clock; an empty queue clears it.
        p.committed_at(1, T0 + 62_000);
        assert!(!p.observe_depth_at(4, AFTER, T0 + 100_000));
        assert!(p.observe_depth_at(4, AFTER, T0 + 122_001));
        assert!(!p.observe_depth_at(0, AFTER, T0 + 130_000));
        assert!(!p.observe_depth_at(4, AFTER, T0 + 131_000));
    }

    #[test]
    fn throughput_counts_the_last_minute_only() {
        let p = pool_started_at(T0);
        assert_eq!(p.committed_per_sec_at(T0 + 500), 0.0);
        // Young pool: divide by its age (at least one second).
        p.committed_at(100, T0 + 5_000);
        assert!((p.committed_per_sec_at(T0 + 10_000) - 10.0).abs() < 1e-9);
        p.committed_at(500, T0 + 70_000);
        p.committed_at(100, T0 + 70_200);
        // At T0 + 90 s the commit at 5 s is out of the window.
        assert!((p.committed_per_sec_at(T0 + 90_000) - 10.0).abs() < 1e-9);
        // A slot reused a minute later starts from zero.
        p.committed_at(60, T0 + 130_000);
        assert!((p.committed_per_sec_at(T0 + 131_000) - 1.0).abs() < 1e-9);
        assert_eq!(p.committed_per_sec_at(T0 + 500_000), 0.0);
        assert_eq!(p.workers(), 4);
    }
}
