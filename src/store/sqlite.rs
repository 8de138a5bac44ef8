//! The embedded SQLite store (single-node mode): to be written.

/// Embedded store.
#[derive(Clone, Debug)]
pub struct SqliteStore;
