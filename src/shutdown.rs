//! Shutdown: one handle passed to every long-running task.
//!
//! A [`Shutdown`] wraps a cancellation token (tells every task to stop) and a task tracker
//! (lets the owner wait until every spawned task has finished). The binary triggers it on
//! SIGTERM/SIGINT; tests trigger it by hand. Every `spawn` of the service goes through
//! [`Shutdown::spawn`], so nothing is fire-and-forget.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared shutdown state; clones observe and trigger the same stop.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Cancelled once when the service must stop.
    token: CancellationToken,
    /// Every task spawned for the service, so the owner can wait for them.
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, untriggered handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks every task to stop. Idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// True once a stop was asked for.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when a stop is asked for.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// The token, for APIs that take one (graceful HTTP shutdown).
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns a tracked task.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Waits for every tracked task to finish, at most `deadline`.
    /// Returns false when the deadline passed first.
    pub async fn drained(&self, deadline: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Completes on SIGINT (ctrl-c) or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
