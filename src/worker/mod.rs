//! The worker pool: pulls batches from the queue and lands them in the store.
//!
//! `WORKER_POOL_SIZE` loops share one queue consumer. Each pulls up to `WORKER_BATCH_SIZE`
//! messages or waits at most `WORKER_BATCH_TIMEOUT`, hands the batch to
//! [`process::process_batch`], and repeats. When the store is down every loop stops pulling
//! and probes it once a second ([`PoolState`]); messages in hand were NAKed, never
//! dead-lettered. On shutdown a loop finishes (and acks) the batch in hand, then exits.
//! The ack policy itself lives in [`disposition`].

pub mod disposition;
pub mod process;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use chrono::Utc;

use crate::config::WorkerArgs;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::registry::RegistryCache;
use crate::shutdown::Shutdown;
use crate::store::Store;
use disposition::RetryPolicy;
use process::BatchResult;

/// Health of the pool, shared with the HTTP health handler.
#[derive(Debug, Default)]
pub struct PoolState {
    /// Set when a batch failed because the store is unavailable; cleared by a good ping.
    store_down: AtomicBool,
    /// Unix milliseconds of the last commit; 0 before the first.
    last_commit_ms: AtomicI64,
    /// Unix milliseconds when the pool started.
    started_ms: AtomicI64,
}

impl PoolState {
    fn committed(&self) {
        self.last_commit_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// True while workers pause because the store is unavailable.
    pub fn store_down(&self) -> bool {
        self.store_down.load(Ordering::Relaxed)
    }

    /// Time since the last commit (or since start, when nothing was committed yet).
    pub fn since_last_commit(&self) -> Duration {
        let last = self.last_commit_ms.load(Ordering::Relaxed);
        let since = if last > 0 {
            last
        } else {
            self.started_ms.load(Ordering::Relaxed)
        };
        let ms = (Utc::now().timestamp_millis() - since).max(0);
        Duration::from_millis(ms as u64)
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
    pub(crate) batch_timeout: Duration,
    pub(crate) state: Arc<PoolState>,
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
            batch_timeout: self.batch_timeout,
            state: Arc::clone(&self.state),
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
    pub fn new(queue: Q, store: S, metrics: Metrics, args: &WorkerArgs) -> Self {
        let state = Arc::new(PoolState::default());
        state
            .started_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
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
                batch_timeout: args.worker_batch_timeout,
                state,
            },
            size: args.worker_pool_size.max(1),
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
        let batch = match ctx.queue.fetch(ctx.batch_size, ctx.batch_timeout).await {
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
        match process::process_batch(&ctx, batch).await {
            BatchResult::Settled { committed } => {
                tracing::debug!(worker = id, messages = n, committed, "batch settled");
            }
            BatchResult::StoreDown => {
                ctx.state.store_down.store(true, Ordering::Relaxed);
            }
        }
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
