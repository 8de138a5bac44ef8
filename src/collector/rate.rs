//! The per-device rate limit (`INGEST_RATE_LIMIT` events/s, `INGEST_RATE_BURST`): one
//! GCRA token bucket per `device_id` (governor's keyed limiter), checked per event before
//! it is queued.
//!
//! Memory: governor keeps one small state per key it has seen. [`DeviceLimiter::prune`]
//! drops every key whose bucket is full again (indistinguishable from a fresh one) and
//! shrinks the map; it runs every [`PRUNE_EVERY`] in a task spawned through the app's
//! `Shutdown`. So the map holds about the devices that sent within the last
//! `burst / rate` seconds plus one prune interval, whatever device ids clients invent.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::shutdown::Shutdown;

/// How often idle devices' states are dropped.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// Keyed limiter by device id.
pub struct DeviceLimiter {
    limiter: DefaultKeyedRateLimiter<Uuid>,
}

impl std::fmt::Debug for DeviceLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceLimiter")
            .field("devices", &self.limiter.len())
            .finish()
    }
}

impl DeviceLimiter {
    /// `per_second` events per second per device, `burst` at once.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> DeviceLimiter {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        DeviceLimiter {
            limiter: RateLimiter::keyed(quota),
        }
    }

    /// From the settings: None when the limit is off (0); the burst defaults to the rate.
    pub fn from_settings(per_second: u32, burst: Option<u32>) -> Option<DeviceLimiter> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
        Some(DeviceLimiter::new(rate, burst))
    }

    /// Takes one event's place for `device`; Err(wait) until the next one would pass.
    pub fn check(&self, device: &Uuid) -> Result<(), Duration> {
        self.limiter
            .check_key(device)
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Drops devices whose bucket is full again; shrinks the map.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Devices with state held.
    pub fn devices(&self) -> usize {
        self.limiter.len()
    }

    /// Prunes every [`PRUNE_EVERY`] until shutdown.
    pub fn spawn_pruning(self: &Arc<Self>, shutdown: &Shutdown) {
        let me = Arc::clone(self);
        let sd = shutdown.clone();
        shutdown.spawn(async move {
            loop {
                tokio::select! {
                    () = sd.wait() => break,
                    () = tokio::time::sleep(PRUNE_EVERY) => me.prune(),
                }
            }
        });
    }
}

/// Whole seconds for a `Retry-After` header: the wait rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_gets_its_burst_then_waits_others_are_independent() {
        let l = DeviceLimiter::from_settings(2, Some(3)).expect("on");
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        for _ in 0..3 {
            assert!(l.check(&a).is_ok());
        }
        let wait = l.check(&a).expect_err("over the burst");
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        assert!(l.check(&b).is_ok());
        assert_eq!(l.devices(), 2);
        assert!(DeviceLimiter::from_settings(0, None).is_none());
    }

    #[test]
    fn pruning_drops_devices_whose_bucket_refilled() {
        let l = DeviceLimiter::from_settings(1_000, Some(1)).expect("on");
        for _ in 0..100 {
            let _ = l.check(&Uuid::new_v4());
        }
        assert_eq!(l.devices(), 100);
        std::thread::sleep(Duration::from_millis(20));
        l.prune();
        assert_eq!(l.devices(), 0);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }
}
