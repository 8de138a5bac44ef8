//! The worker's registry cache: a [`RegistrySnapshot`] in memory for the business checks,
//! refreshed every `REGISTRY_REFRESH_INTERVAL` and on a miss (at most once per
//! [`MISS_REFRESH_MIN`]), so imports are seen without a restart. Lives next to its only user.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::ValidationMode;
use crate::event::NormalizedEvent;
use crate::registry::{CheckFailure, RegistrySnapshot};
use crate::store::{Store, StoreError};

/// Shortest interval between two refreshes forced by misses.
pub const MISS_REFRESH_MIN: Duration = Duration::from_secs(1);

/// The worker's registry cache: a snapshot plus the refresh policy.
#[derive(Clone)]
pub struct RegistryCache<S> {
    store: S,
    mode: ValidationMode,
    snapshot: Arc<RwLock<Arc<RegistrySnapshot>>>,
    /// When the snapshot was last loaded; guards the miss-refresh rate limit.
    loaded_at: Arc<Mutex<Option<Instant>>>,
    /// Periodic refresh even without misses, so deletions and deactivations are seen.
    max_age: Duration,
}

impl<S: Store> RegistryCache<S> {
    /// An empty cache; the first check loads it.
    pub fn new(store: S, mode: ValidationMode, max_age: Duration) -> Self {
        RegistryCache {
            store,
            mode,
            snapshot: Arc::new(RwLock::new(Arc::new(RegistrySnapshot::default()))),
            loaded_at: Arc::new(Mutex::new(None)),
            max_age,
        }
    }

    fn current(&self) -> Arc<RegistrySnapshot> {
        match self.snapshot.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Age of the snapshot, or None when never loaded.
    fn age(&self) -> Option<Duration> {
        let guard = match self.loaded_at.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        guard.map(|t| t.elapsed())
    }

    /// Reloads the snapshot from the store.
    ///
    /// # Errors
    /// The store's error (the caller treats it as transient or not).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let fresh = self.store.load_registry().await?;
        match self.snapshot.write() {
            Ok(mut g) => *g = Arc::new(fresh),
            Err(p) => *p.into_inner() = Arc::new(fresh),
        }
        match self.loaded_at.lock() {
            Ok(mut g) => *g = Some(Instant::now()),
            Err(p) => *p.into_inner() = Some(Instant::now()),
        }
        Ok(())
    }

    /// Checks a batch of events. A miss forces one refresh (rate-limited) and a second
    /// look, so an event for a device imported a moment ago passes.
    ///
    /// # Errors
    /// Only when the registry cannot be loaded at all (store unavailable).
    pub async fn check_all(
        &self,
        events: &[&NormalizedEvent],
    ) -> Result<Vec<Result<(), CheckFailure>>, StoreError> {
        match self.age() {
            None => self.refresh().await?,
            Some(age) if age >= self.max_age => self.refresh().await?,
            _ => {}
        }
        let snap = self.current();
        let mut results: Vec<_> = events.iter().map(|e| snap.check(e, self.mode)).collect();
        if results.iter().any(Result::is_err) && self.age().is_some_and(|a| a >= MISS_REFRESH_MIN) {
            self.refresh().await?;
            let snap = self.current();
            for (r, e) in results.iter_mut().zip(events) {
                if r.is_err() {
                    *r = snap.check(e, self.mode);
                }
            }
        }
        Ok(results)
    }
}
