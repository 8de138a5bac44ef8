//! Opening the queue file: connection settings, schema migrations and the open-time checks.
//!
//! Everything that can go wrong before the queue thread starts ends here as
//! [`QueueError::Setup`] naming the file, so a corrupt, foreign or read-only file stops the
//! process with a sentence instead of a panic. The statements run by the thread live in
//! `engine.rs`.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::queue::QueueError;

/// How long a statement waits for a lock held by another connection (e.g. `nsready dlq`
/// run while `serve` is up) before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Migrations, in order; entry `i` brings the file to `PRAGMA user_version = i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    //
    // `AUTOINCREMENT` keeps sequences strictly increasing even after the table empties, as
    // JetStream's stream sequences do: the dedupe table and the DLQ's unique
    // `original_seq` would otherwise confuse a reused sequence with an old message.
    //
    // The partial index holds only messages delivered at least once, i.e. leased,
    // NAK-delayed or waiting for redelivery: few rows, and exactly the ones `stats` counts
    // and `fetch` asks "when does the next one come back?" about. Fresh messages are
    // always visible (`visible_at` = publish time), so fetch scans the table in `seq`
    // order and skips only the leased rows.
    r#"
    CREATE TABLE messages (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        msg_id       TEXT    NOT NULL,
        trace_id     TEXT,
        payload      BLOB    NOT NULL,
        size         INTEGER NOT NULL,
        published_at INTEGER NOT NULL,
        visible_at   INTEGER NOT NULL,
        delivered    INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX messages_delivered ON messages (visible_at) WHERE delivered > 0;

    CREATE TABLE dedupe (
        msg_id TEXT    PRIMARY KEY,
        seq    INTEGER NOT NULL,
        at     INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX dedupe_at ON dedupe (at);

    CREATE TABLE dlq (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        original_seq INTEGER NOT NULL UNIQUE,
        payload      BLOB    NOT NULL,
        error_type   TEXT    NOT NULL,
        reason       TEXT    NOT NULL,
        delivered    INTEGER NOT NULL,
        trace_id     TEXT,
        time         INTEGER NOT NULL
    );
    "#,
];

/// Opens (creating if needed) the queue file, applies its settings and migrations.
///
/// # Errors
/// [`QueueError::Setup`] naming `path` when the directory or file cannot be created, the
/// file is not a queue database (corrupt or foreign), is read-only, or was written by a
/// newer nsready.
pub(super) fn open(path: &Path) -> Result<Connection, QueueError> {
    let setup = |what: &str| QueueError::Setup(format!("queue file {}: {what}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::private_fs::create_dir(dir)
            .map_err(|e| setup(&format!("cannot create directory {}: {e}", dir.display())))?;
    }
    // 0600 before SQLite creates it with the umask's mode; its -wal/-shm follow it.
    crate::private_fs::create_file(path).map_err(|e| setup(&format!("cannot create: {e}")))?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| setup(&describe(&e)))?;
    configure(&conn).map_err(|e| setup(&describe(&e)))?;
    // SQLite silently opens a write-protected file read-only; say so now rather than at the
    // first publish.
    if conn
        .is_readonly(rusqlite::MAIN_DB)
        .map_err(|e| setup(&describe(&e)))?
    {
        return Err(setup("is read-only; the queue needs write access"));
    }
    migrate(&conn, path)?;
    Ok(conn)
}

/// WAL pages (4 KiB) between the queue connection's own checkpoints: 32 MiB, the WAL file's bound.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 8192;

/// The queue connection's page cache, in KiB (SQLite's `cache_size = -N`).
const CACHE_KIB: u32 = 32768;

/// Connection settings. The first statement reads the file header, so this is also where
/// a corrupt or foreign file is detected.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("cannot switch to WAL journal mode (got `{mode}`)")),
        ));
    }
    // Durability: in WAL mode with synchronous=NORMAL a COMMIT is written to the WAL file
    // (the OS page cache) before it returns, so a committed message survives kill -9 of
    // this process; it is not fsynced on every commit, so surviving a power loss or
    // kernel crash is the OS's and the disk's promise (WAL is fsynced at checkpoints).
    // That is the same trade JetStream makes with its default 2-minute sync interval;
    // `synchronous=FULL` would fsync every group commit at a large cost in throughput.
    // Checkpoints (copying WAL pages into the file, then two fsyncs) run mostly on a
    // thread of their own (`crate::checkpointer`, every 250 ms), so the queue thread does
    // not wait on the disk. This connection's own auto-checkpoint, every
    // `WAL_AUTOCHECKPOINT_PAGES` pages instead of SQLite's 1,000, is what bounds the WAL
    // file (it resets the WAL, which only the writer can) and finds most frames already
    // copied. Each background pass that finds new frames fsyncs the WAL first, so what a
    // power loss can take is about the last 250 ms of commits, not the whole WAL.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL;
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};
         PRAGMA cache_size = -{CACHE_KIB};"
    ))?;
    // The thread prepares a handful of statements; keep them all cached.
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

/// Applies the migrations the file lacks, each in its own transaction together with the
/// `user_version` bump, so a crash leaves the file at one version or the next.
fn migrate(conn: &Connection, path: &Path) -> Result<(), QueueError> {
    let fail = |e: rusqlite::Error| {
        QueueError::Setup(format!(
            "queue file {}: migration failed: {}",
            path.display(),
            describe(&e)
        ))
    };
    // BEGIN IMMEDIATE takes the write lock: it proves the file (and its WAL) are writable
    // even when there is nothing to migrate, and serialises two processes migrating at once.
    conn.execute_batch("BEGIN IMMEDIATE").map_err(fail)?;
    let result = (|| {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Ok(Err(QueueError::Setup(format!(
                "queue file {} has schema version {version}, newer than this nsready \
                 understands ({known}); upgrade nsready or use another DATA_DIR",
                path.display()
            ))));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            conn.execute_batch(sql)?;
            conn.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        }
        Ok(Ok(()))
    })();
    match result {
        Ok(Ok(())) => conn.execute_batch("COMMIT").map_err(fail),
        Ok(Err(e)) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(fail(e))
        }
    }
}

/// A sentence for an SQLite error, with the common causes spelled out.
pub(super) fn describe(e: &rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            "is not a queue database (corrupt, or some other file); move it away to start \
             with an empty queue"
                .to_string()
        }
        Some(ErrorCode::DatabaseCorrupt) => {
            format!("is corrupt ({e}); move it away to start with an empty queue")
        }
        Some(ErrorCode::CannotOpen) => {
            format!("cannot be opened ({e}); check the path and permissions")
        }
        Some(ErrorCode::ReadOnly) | Some(ErrorCode::PermissionDenied) => {
            format!("is not writable ({e})")
        }
        Some(ErrorCode::DiskFull) => format!("disk full ({e})"),
        _ => e.to_string(),
    }
}
