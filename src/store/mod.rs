//! The time-series store: one trait, two implementations (PostgreSQL and embedded SQLite).
//!
//! A [`Store`] writes a batch of [`Row`]s in one transaction (rows arrive deduplicated and
//! sorted by key; implementations upsert them with one bulk statement), writes `error_logs`
//! rows for dead letters, migrates its schema, and reads and writes the registry.
//! Failures are classified once, by [`StoreError::is_transient`]: transient means "the
//! database is in trouble, try again later", never "this message is bad".

pub mod postgres;
pub mod sqlite;

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::registry::{ImportReport, RegistryDoc, RegistrySnapshot};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or did not answer in time (connection refused, pool
    /// timeout, shutting down). Transient.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused the write for reasons of concurrency (deadlock, serialization
    /// failure, lock timeout). Transient.
    #[error("database conflict: {0}")]
    Conflict(String),
    /// The database refused the data itself (constraint violation, value out of range).
    /// Permanent for the rows involved.
    #[error("data refused by the database: {0}")]
    Data(String),
    /// Input to a registry import that cannot be stored (names the row and field).
    #[error("{0}")]
    Invalid(String),
    /// Migrations, files, or anything else that is neither of the above.
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// True when retrying later may succeed without changing the data: the worker NAKs
    /// and pauses, and never dead-letters for this reason.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Conflict(_))
    }
}

/// One row of `ingest_events`.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub time: DateTime<Utc>,
    pub device_id: Uuid,
    pub parameter_key: String,
    pub value: Option<f64>,
    pub quality: i16,
    /// The protocol the event came in by.
    pub source: String,
    /// `<event_id>:<parameter_key>` or `<device_id>:<timestamp>:<parameter_key>`.
    pub event_id: String,
    pub attributes: serde_json::Value,
}

impl Row {
    /// The primary key `(time, device_id, parameter_key)`, the order rows are written in.
    pub fn key(&self) -> (DateTime<Utc>, Uuid, &str) {
        (self.time, self.device_id, &self.parameter_key)
    }
}

/// One `error_logs` row, written for every dead letter.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorLogEntry {
    pub source: String,
    pub level: String,
    pub message: String,
    /// trace_id, device_id, error_type, and what else helps.
    pub context: serde_json::Value,
}

/// The newest value of one device parameter (`v_scada_latest`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatestValue {
    pub device_id: Uuid,
    pub parameter_key: String,
    pub time: DateTime<Utc>,
    pub value: Option<f64>,
    pub quality: i16,
}

/// The time-series store. Implementations are cheap to clone.
pub trait Store: Clone + Send + Sync + 'static {
    /// Applies the embedded migrations that are not applied yet.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Checks that the database answers.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Upserts rows in one transaction with one bulk statement: a later write of the same
    /// key replaces the earlier one. `rows` are unique by key and sorted by key.
    fn upsert(&self, rows: &[Row]) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Appends `error_logs` rows.
    fn log_errors(
        &self,
        entries: &[ErrorLogEntry],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reads what the worker's registry cache needs.
    fn load_registry(&self) -> impl Future<Output = Result<RegistrySnapshot, StoreError>> + Send;

    /// Inserts or updates customers, projects, sites, devices and parameter templates
    /// (idempotent: keyed by id, or by the natural unique key).
    fn import_registry(
        &self,
        doc: &RegistryDoc,
    ) -> impl Future<Output = Result<ImportReport, StoreError>> + Send;

    /// The whole registry, in the import format.
    fn export_registry(&self) -> impl Future<Output = Result<RegistryDoc, StoreError>> + Send;

    /// Newest values from `v_scada_latest`, for one device or all.
    fn latest(
        &self,
        device: Option<Uuid>,
    ) -> impl Future<Output = Result<Vec<LatestValue>, StoreError>> + Send;

    /// Number of rows in `ingest_events` (tests, loadgen, status).
    fn count_rows(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}
