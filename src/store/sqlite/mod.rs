//! The embedded SQLite store (single-node mode): the [`Store`] contract in one file.
//!
//! The platform schema, translated in `migrations/sqlite/` (UUIDs and timestamps as
//! fixed-format text, JSON as checked text), is applied by versioned migrations tracked in
//! `PRAGMA user_version`. Writes go through one connection, reads through a second,
//! read-only one, so `latest`, `count_rows` and the registry refresh never queue behind a
//! batch upsert (WAL lets readers and the writer proceed together). The registry's SQL
//! lives in `registry.rs`; what the worker does with failures is not this module's
//! business, it only classifies them ([`classify`]).

mod registry;
pub mod retention;
#[cfg(test)]
mod tests;
mod tokens;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior, params};
use uuid::Uuid;

use crate::checkpointer::{self, Checkpointer};
use crate::registry::{ImportReport, RegistryDoc, RegistrySnapshot};
use crate::store::{
    ErrorLogEntry, LatestValue, NewToken, Refusal, Revoke, Row, Store, StoreError, TokenGrant,
    TokenInfo,
};

/// The migrations, in order; entry `i` brings the file to `PRAGMA user_version = i + 1`.
const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_platform_schema",
    include_str!("../migrations/sqlite/0001_platform_schema.sql"),
)];

/// How long a statement waits for a lock held by another connection or process (e.g.
/// `nsready registry import` while `serve` runs) before giving up with SQLITE_BUSY,
/// which is then reported as a transient [`StoreError::Conflict`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The bulk write: an upsert on the primary key, executed once per row inside one
/// transaction. In SQLite this IS the bulk path: the prepared statement runs in-process
/// with no round trip per row, and the single COMMIT is what costs; multi-row VALUES
/// would only save the per-statement dispatch while hitting the bound-parameter limit.
const UPSERT: &str = "INSERT INTO ingest_events \
    (time, device_id, parameter_key, value, quality, source, event_id, attributes) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
    ON CONFLICT (time, device_id, parameter_key) DO UPDATE SET \
    value = excluded.value, quality = excluded.quality, source = excluded.source, \
    event_id = excluded.event_id, attributes = excluded.attributes";

/// The embedded store. Clones share the two connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// The connections, each behind a std `Mutex`: it is only ever locked inside
/// `spawn_blocking` and never held across an `.await`, which is the case tokio's docs
/// recommend the std mutex for (tokio's would need `blocking_lock` there anyway). A
/// connection is single-threaded state; the mutex is also what serialises writers, as
/// SQLite allows one writer at a time regardless.
struct Inner {
    /// Copies the WAL into the file off the writer (`checkpointer.rs`). Declared first,
    /// so it is dropped (its thread stopped) before the connections close.
    _checkpointer: Checkpointer,
    /// Every write (upsert, error logs, import, migrations) goes through this one.
    writer: Mutex<Connection>,
    /// Opened read-only; reads see the last committed state without waiting for writes.
    reader: Mutex<Connection>,
    path: PathBuf,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// Locks a connection. A panic while the lock was held cannot leave a transaction open
/// (rusqlite's `Transaction` rolls back on drop, also while unwinding), so a poisoned
/// connection is still sound and is used as is.
fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` (e.g. `DATA_DIR/nsready.db`)
    /// with its two connections. Does not migrate: call [`Store::migrate`].
    ///
    /// # Errors
    /// The classified SQLite error, prefixed with the path, when the directory or file
    /// cannot be created or opened, or the file is not an SQLite database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let at = |e: StoreError| prefix(e, &format!("store file {}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::private_fs::create_dir(dir).map_err(|e| {
                StoreError::Unavailable(format!(
                    "store file {}: cannot create directory {}: {e}",
                    path.display(),
                    dir.display()
                ))
            })?;
        }
        // 0600 before SQLite creates it with the umask's mode; its -wal/-shm follow it.
        crate::private_fs::create_file(path).map_err(|e| {
            StoreError::Unavailable(format!("store file {}: cannot create: {e}", path.display()))
        })?;
        let writer = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| at(classify(e)))?;
        configure(&writer, true).map_err(|e| at(classify(e)))?;
        // After the writer: the file exists and is in WAL mode, which a read-only
        // connection cannot switch it to.
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| at(classify(e)))?;
        configure(&reader, false).map_err(|e| at(classify(e)))?;
        let checkpointer = Checkpointer::start(path, "store", checkpointer::DEFAULT_INTERVAL)
            .map_err(|e| StoreError::Unavailable(format!("store file {}: {e}", path.display())))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                _checkpointer: checkpointer,
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                path: path.to_path_buf(),
            }),
        })
    }

    /// Runs `f` on the blocking pool; `f` locks the connection it needs, so work that
    /// needs no connection (preparing parameters) runs before the lock is taken.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
    }
}

/// WAL pages (4 KiB) between the writer's own checkpoints: 32 MiB, the WAL file's bound.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 8192;

/// Page cache of the writer connection, in KiB (SQLite's `cache_size = -N`).
const WRITER_CACHE_KIB: u32 = 65536;

/// Page cache of the read-only connection, in KiB. Its queries (`latest`, `count_rows`,
/// the registry) are small or scans that would only evict each other; a scan of the whole
/// table (`count_rows`) filled 64 MiB here for nothing. Together with the writer's and the
/// queue's (32 MiB) caches and the two checkpoint connections' (1 MiB each) this bounds SQLite's memory at 114 MiB, whatever the file sizes.
const READER_CACHE_KIB: u32 = 16384;

/// Connection settings. The first statement reads the file header, so a file that is not
/// a database fails here.
fn configure(conn: &Connection, writer: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if writer {
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("cannot switch to WAL journal mode (got `{mode}`)")),
            ));
        }
    }
    // synchronous=NORMAL in WAL mode: a commit survives a crash of this process; a power
    // loss may lose the last commits (the WAL is fsynced at checkpoints), as with the
    // queue. The worker acks only after the commit, so after a power loss the queue and
    // the table roll back together only as far as the disk kept its promise.
    // The writer auto-checkpoints every `WAL_AUTOCHECKPOINT_PAGES` (32 MiB) instead of
    // SQLite's 1,000 pages (issue 13: checkpoints were 13 % of the embedded CPU at 1,000),
    // which bounds the WAL file; the copying and fsyncing itself is mostly done before
    // that by `crate::checkpointer` on its own thread every 250 ms, which also fsyncs
    // the WAL, so a power loss takes about the last 250 ms of commits at most.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};
         PRAGMA cache_size = -{};",
        if writer {
            WRITER_CACHE_KIB
        } else {
            READER_CACHE_KIB
        }
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Maps an SQLite error to the store's classes, in this one place: busy/locked (another
/// writer holds the file past the busy timeout), a full disk, I/O errors, unopenable or
/// read-only files and out of memory are infrastructure; a value SQLite can never hold
/// (type mismatch, too big, a parameter it cannot bind) is unstorable; a constraint is the
/// data's as it is now (a foreign key may heal); anything else is unclear (`Other`), and
/// the worker finds out by pinging and bisecting.
pub(crate) fn classify(e: rusqlite::Error) -> StoreError {
    let text = e.to_string();
    let code = e.sqlite_error_code();
    let refusal = |never_storable| Refusal {
        code: code.map(|c| format!("SQLite {c:?}")),
        message: text.clone(),
        never_storable,
    };
    match code {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Conflict(text),
        Some(
            ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied,
        ) => StoreError::Unavailable(text),
        // Like PostgreSQL's out_of_memory (53200): a huge batch may be the cause, so it is
        // bisected rather than NAKed uncounted for ever.
        Some(ErrorCode::OutOfMemory) => StoreError::Other(text),
        Some(ErrorCode::TooBig | ErrorCode::TypeMismatch) => StoreError::Data(refusal(true)),
        Some(ErrorCode::ConstraintViolation) => StoreError::Data(refusal(false)),
        Some(_) => StoreError::Other(text),
        None => match e {
            rusqlite::Error::ToSqlConversionFailure(_)
            | rusqlite::Error::IntegralValueOutOfRange(..) => StoreError::Data(refusal(true)),
            _ => StoreError::Other(text),
        },
    }
}

/// The same error class with context in front of the message.
fn prefix(e: StoreError, context: &str) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(format!("{context}: {m}")),
        StoreError::Conflict(m) => StoreError::Conflict(format!("{context}: {m}")),
        StoreError::Data(mut r) => {
            r.message = format!("{context}: {}", r.message);
            StoreError::Data(r)
        }
        StoreError::Rejected(mut r) => {
            r.message = format!("{context}: {}", r.message);
            StoreError::Rejected(r)
        }
        StoreError::Invalid(m) => StoreError::Invalid(format!("{context}: {m}")),
        StoreError::Other(m) => StoreError::Other(format!("{context}: {m}")),
    }
}

/// A timestamp as stored: RFC 3339 UTC, always six fractional digits. Digits past the
/// microsecond are truncated, as the PostgreSQL driver does when it binds a timestamp,
/// so both stores key the same event to the same row.
pub(crate) fn format_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Reads back a stored timestamp.
fn parse_time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Other(format!("stored timestamp `{s}` is not RFC 3339: {e}")))
}

/// Reads back a stored UUID.
fn parse_uuid(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Other(format!("stored id `{s}` is not a UUID: {e}")))
}

/// One [`Row`] as bound to the upsert.
struct RowParams {
    time: String,
    device_id: String,
    parameter_key: String,
    value: Option<f64>,
    quality: i16,
    source: Arc<str>,
    event_id: String,
    attributes: String,
}

impl RowParams {
    fn new(row: &Row) -> Result<Self, StoreError> {
        Ok(RowParams {
            time: format_time(&row.time),
            device_id: row.device_id.to_string(),
            attributes: serde_json::to_string(&row.attributes)
                .map_err(|e| StoreError::data(format!("attributes: {e}"), true))?,
            parameter_key: row.parameter_key.clone(),
            value: row.value,
            quality: row.quality,
            source: Arc::clone(&row.source),
            event_id: row.event_id.clone(),
        })
    }
}

/// Applies the migrations the file lacks, all in one transaction with the version bump,
/// so a crash leaves the schema as it was. BEGIN IMMEDIATE serialises two processes
/// migrating at once; the second finds nothing left to do.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(classify)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(classify)?;
    let known = MIGRATIONS.len();
    let applied = usize::try_from(version).unwrap_or(usize::MAX);
    if applied > known {
        return Err(StoreError::Other(format!(
            "the database has schema version {version}, newer than this nsready understands \
             ({known}); upgrade nsready"
        )));
    }
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(sql)
            .map_err(|e| prefix(classify(e), &format!("migration {name}")))?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )
        .map_err(classify)?;
        tracing::info!(migration = name, "applied store migration");
    }
    tx.commit().map_err(classify)
}

impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.blocking(|inner| migrate(&mut lock(&inner.writer)))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // Reads the schema page: proves the file is there and readable, not just open.
        self.blocking(|inner| {
            lock(&inner.reader)
                .query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|_| ())
                .map_err(classify)
        })
        .await
    }

    #[tracing::instrument(name = "store.upsert", skip_all, fields(rows = rows.len()))]
    async fn upsert(&self, rows: &[Row]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        // Formatted here, straight from the borrowed rows: the one copy the blocking task
        // needs (no clone of the rows first), made before the lock so other workers'
        // batches write meanwhile.
        let rows = rows
            .iter()
            .map(RowParams::new)
            .collect::<Result<Vec<_>, _>>()?;
        self.blocking(move |inner| {
            let mut conn = lock(&inner.writer);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(classify)?;
            let mut written = 0u64;
            {
                let mut stmt = tx.prepare_cached(UPSERT).map_err(classify)?;
                for r in &rows {
                    written += stmt
                        .execute(params![
                            r.time,
                            r.device_id,
                            r.parameter_key,
                            r.value,
                            r.quality,
                            &*r.source,
                            r.event_id,
                            r.attributes
                        ])
                        .map_err(classify)? as u64;
                }
            }
            tx.commit().map_err(classify)?;
            Ok(written)
        })
        .await
    }

    async fn log_errors(&self, entries: &[ErrorLogEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let entries = entries.to_vec();
        self.blocking(move |inner| {
            let mut conn = lock(&inner.writer);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(classify)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO error_logs (time, source, level, message, context) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(classify)?;
                let now = format_time(&Utc::now());
                for e in &entries {
                    let context = serde_json::to_string(&e.context)
                        .map_err(|err| StoreError::data(format!("context: {err}"), true))?;
                    stmt.execute(params![now, e.source, e.level, e.message, context])
                        .map_err(classify)?;
                }
            }
            tx.commit().map_err(classify)
        })
        .await
    }

    async fn load_registry(&self) -> Result<RegistrySnapshot, StoreError> {
        self.blocking(|inner| registry::load(&mut lock(&inner.reader)))
            .await
    }

    async fn import_registry(&self, doc: &RegistryDoc) -> Result<ImportReport, StoreError> {
        let doc = doc.clone();
        self.blocking(move |inner| registry::import(&mut lock(&inner.writer), &doc))
            .await
    }

    async fn export_registry(&self) -> Result<RegistryDoc, StoreError> {
        self.blocking(|inner| registry::export(&mut lock(&inner.reader)))
            .await
    }

    async fn latest(&self, device: Option<Uuid>) -> Result<Vec<LatestValue>, StoreError> {
        self.blocking(move |inner| {
            let conn = lock(&inner.reader);
            // The view's skip-scan costs O(pairs * log rows) either way; the device filter
            // is applied to its (small) output.
            let sql = "SELECT device_id, parameter_key, time, value, quality FROM v_scada_latest \
                       WHERE ?1 IS NULL OR device_id = ?1 ORDER BY device_id, parameter_key";
            let mut stmt = conn.prepare_cached(sql).map_err(classify)?;
            let raw = stmt
                .query_map([device.map(|d| d.to_string())], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<f64>>(3)?,
                        r.get::<_, i16>(4)?,
                    ))
                })
                .map_err(classify)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(classify)?;
            raw.into_iter()
                .map(|(device_id, parameter_key, time, value, quality)| {
                    Ok(LatestValue {
                        device_id: parse_uuid(&device_id)?,
                        parameter_key,
                        time: parse_time(&time)?,
                        value,
                        quality,
                    })
                })
                .collect()
        })
        .await
    }

    async fn count_rows(&self) -> Result<u64, StoreError> {
        self.blocking(|inner| {
            lock(&inner.reader)
                .query_row("SELECT count(*) FROM ingest_events", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| u64::try_from(n).unwrap_or(0))
                .map_err(classify)
        })
        .await
    }

    async fn create_token(&self, token: &NewToken) -> Result<TokenInfo, StoreError> {
        let token = token.clone();
        self.blocking(move |inner| tokens::create(&lock(&inner.writer), &token))
            .await
    }

    async fn list_tokens(&self, device: Option<Uuid>) -> Result<Vec<TokenInfo>, StoreError> {
        self.blocking(move |inner| tokens::list(&lock(&inner.reader), device))
            .await
    }

    async fn revoke_tokens(&self, which: Revoke) -> Result<u64, StoreError> {
        self.blocking(move |inner| tokens::revoke(&lock(&inner.writer), which))
            .await
    }

    async fn load_tokens(&self) -> Result<Vec<TokenGrant>, StoreError> {
        self.blocking(|inner| tokens::load(&lock(&inner.reader)))
            .await
    }
}
