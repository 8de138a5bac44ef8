//! PostgreSQL store: to be written.

/// PostgreSQL store.
#[derive(Clone, Debug)]
pub struct PostgresStore;
