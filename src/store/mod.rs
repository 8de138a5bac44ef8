//! The time-series store: one trait, two implementations (PostgreSQL and embedded SQLite).
//!
//! A [`Store`] writes a batch of [`Row`]s in one transaction (rows arrive deduplicated and
//! sorted by key; implementations upsert them with one bulk statement), writes `error_logs`
//! rows for dead letters, migrates its schema, and reads and writes the registry.
//! Failures are classified once, by [`StoreError::failure`]: [`Failure::Infrastructure`] is
//! only for failures proven to be the database's (connection refused or broken, pool
//! timeout, the store locked by another writer); [`Failure::Unstorable`] for values the
//! database can never hold; everything else is [`Failure::Unclear`] and the worker finds out
//! by pinging and bisecting (DESIGN.md §3.4).

pub mod postgres;
pub mod sqlite;
pub mod text;
pub mod tokens;

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::registry::{ImportReport, RegistryDoc, RegistrySnapshot};

pub use postgres::{PostgresStore, TimescaleInfo};
pub use sqlite::SqliteStore;
pub use tokens::{NewToken, Revoke, TokenGrant, TokenInfo};

/// What a store failure says about whose fault it is: the one classification the worker
/// relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Proven to be the infrastructure's: the connection broke or never opened, the pool
    /// timed out or is closed, the server is shutting down or out of disk, the store file is
    /// locked by another writer. The worker NAKs without counting and pauses.
    Infrastructure,
    /// The data can never be stored (PostgreSQL SQLSTATE class 22, SQLite type mismatch or
    /// too big): the one message that carries it is dead-lettered at once.
    Unstorable,
    /// Anything else (any other SQLSTATE, known or not, a constraint, a statement timeout,
    /// a row that cannot be decoded): the worker pings the store; if it answers, the batch
    /// is bisected and a single message that still fails counts towards its retries.
    Unclear,
}

/// What the database said when it refused a statement: its code and message, never the
/// SQL text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// SQLSTATE (PostgreSQL) or the SQLite result code, when the database gave one.
    pub code: Option<String>,
    /// The database's message (may quote values).
    pub message: String,
    /// True when the value can never be stored, whatever happens meanwhile.
    pub never_storable: bool,
}

impl Refusal {
    /// A refusal without a database code (client-side checks, timeouts, decoding).
    pub fn new(message: impl Into<String>, never_storable: bool) -> Refusal {
        Refusal {
            code: None,
            message: message.into(),
            never_storable,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or did not answer in time (connection refused, pool
    /// timeout, shutting down). Infrastructure.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The store is locked by another writer for longer than its busy timeout (SQLite
    /// BUSY/LOCKED). Infrastructure.
    #[error("database conflict: {0}")]
    Conflict(String),
    /// The database refused the data itself (constraint violation, value out of range).
    /// Unstorable when [`Refusal::never_storable`], else unclear (a foreign key may heal).
    #[error("data refused by the database: {0}")]
    Data(Refusal),
    /// The statement failed for a reason that proves nothing about whose fault it is: any
    /// other SQLSTATE, a deadlock, our statement timeout, a row the driver cannot decode.
    #[error("statement failed: {0}")]
    Rejected(Refusal),
    /// Input to a registry import that cannot be stored (names the row and field).
    #[error("{0}")]
    Invalid(String),
    /// Migrations, files, or anything else that is neither of the above.
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// Whose fault the failure is (see [`Failure`]).
    pub fn failure(&self) -> Failure {
        match self {
            StoreError::Unavailable(_) | StoreError::Conflict(_) => Failure::Infrastructure,
            StoreError::Data(r) if r.never_storable => Failure::Unstorable,
            StoreError::Data(_)
            | StoreError::Rejected(_)
            | StoreError::Invalid(_)
            | StoreError::Other(_) => Failure::Unclear,
        }
    }

    /// True when the failure is proven to be the infrastructure's: retrying later may
    /// succeed without changing the data, and the worker never dead-letters for it.
    pub fn is_transient(&self) -> bool {
        self.failure() == Failure::Infrastructure
    }

    /// A data refusal (client-side or without a database code).
    pub fn data(message: impl Into<String>, never_storable: bool) -> StoreError {
        StoreError::Data(Refusal::new(message, never_storable))
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
    /// The protocol the event came in by; shared by every row of one event (no copy per
    /// metric).
    pub source: Arc<str>,
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

/// What a store is (`/v1/health`, `nsready status`): its backend and, on TimescaleDB, the
/// hypertable's policies.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StoreInfo {
    /// `sqlite`, `postgresql` or `timescaledb`.
    pub backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timescale: Option<TimescaleInfo>,
}

/// The time-series store. Implementations are cheap to clone.
pub trait Store: Clone + Send + Sync + 'static {
    /// Applies the embedded migrations that are not applied yet.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Creates the least-privilege roles `nsready_ingest` and `nsready_read` and grants
    /// their rights (`nsready migrate --create-roles`, SECURITY.md). Only PostgreSQL has
    /// roles; the embedded store refuses.
    fn create_roles(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async {
            Err(StoreError::Other(
                "the embedded store has no database roles: `--create-roles` needs \
                 PostgreSQL (DATABASE_URL); protect DATA_DIR with file permissions instead"
                    .into(),
            ))
        }
    }

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

    /// The backend and its policies.
    fn info(&self) -> impl Future<Output = Result<StoreInfo, StoreError>> + Send {
        async {
            Ok(StoreInfo {
                backend: "sqlite",
                timescale: None,
            })
        }
    }

    /// Number of rows in `ingest_events` (tests, loadgen, status).
    fn count_rows(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Stores a device token's hash. `Invalid` naming the device when it is not in the
    /// registry.
    fn create_token(
        &self,
        token: &NewToken,
    ) -> impl Future<Output = Result<TokenInfo, StoreError>> + Send;

    /// Tokens (never their hashes), for one device or all, oldest first.
    fn list_tokens(
        &self,
        device: Option<Uuid>,
    ) -> impl Future<Output = Result<Vec<TokenInfo>, StoreError>> + Send;

    /// Deletes tokens; returns how many were deleted.
    fn revoke_tokens(&self, which: Revoke) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Every token's hash, device and expiry, for the collector's cache.
    fn load_tokens(&self) -> impl Future<Output = Result<Vec<TokenGrant>, StoreError>> + Send;
}
