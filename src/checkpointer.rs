//! Background WAL checkpoints for the embedded mode's SQLite files (queue and store).
//!
//! A WAL checkpoint copies committed pages from the `-wal` file into the database file and
//! fsyncs both. Run by the writing connection itself (SQLite's auto-checkpoint), that copy
//! and those fsyncs happen on the thread that must answer publishes and commit batches:
//! on a slow disk the queue thread spent ~40 % of its time blocked in the kernel there
//! (issue 13, `/proc/<pid>/task/*/wchan` samples under batch load). A [`Checkpointer`]
//! owns a connection of its own on a thread of its own and runs a `PASSIVE` checkpoint
//! every interval: it copies what no reader still needs without ever waiting for (or
//! blocking) the writer, so the writer's own auto-checkpoint, kept as the bound on the
//! WAL's size, finds almost every frame already copied and synced, and only then resets
//! the WAL to its start. A checkpoint only moves committed pages, and each pass that finds
//! new frames fsyncs the WAL first, so a power loss takes about one interval of commits.
//!
//! The thread stops, and its connection closes, when the [`Checkpointer`] is dropped; a
//! failed checkpoint (a full disk, say) is logged once per run of failures and retried on
//! the next tick, since the writer's auto-checkpoint still bounds the WAL.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How often the embedded files are checkpointed in the background. Often enough that the
/// writer's auto-checkpoint (every 8,192 pages) finds little left to copy at full ingest
/// speed; each tick that finds new frames costs two fsyncs.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);

/// The checkpoint connection's page cache, in KiB: a checkpoint reads WAL frames and writes
/// them to the file directly, so it needs next to none.
const CACHE_KIB: u32 = 1024;

/// A running background checkpointer for one database file; stops when dropped.
#[derive(Debug)]
pub struct Checkpointer {
    /// Dropped to stop the thread (it waits on the receiving end between ticks).
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// What one checkpoint did, as `PRAGMA wal_checkpoint` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Another checkpoint (the writer's) was running, so this one did nothing.
    pub busy: bool,
    /// Frames in the WAL.
    pub wal_frames: i64,
    /// Frames of it now copied into the database file.
    pub checkpointed: i64,
}

impl Checkpointer {
    /// Opens a connection of its own to the existing WAL-mode database at `path` and
    /// starts its thread. `what` names the file in log lines ("queue", "store").
    ///
    /// # Errors
    /// The SQLite error when the file cannot be opened read-write, or the thread's OS
    /// error when it cannot be started.
    pub fn start(path: &Path, what: &'static str, interval: Duration) -> Result<Self, StartError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The writer's busy handler is for statements; a PASSIVE checkpoint never waits,
        // and a zero timeout keeps this connection from sleeping on a lock it cannot get.
        conn.busy_timeout(Duration::ZERO)?;
        conn.execute_batch(&format!(
            "PRAGMA cache_size = -{CACHE_KIB}; PRAGMA wal_autocheckpoint = 0;"
        ))?;
        let (stop, stopped) = mpsc::channel::<()>();
        let path = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name(format!("nsready-ckpt-{what}"))
            .spawn(move || run(&conn, &path, what, interval, &stopped))
            .map_err(StartError::Thread)?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // The thread does not panic (every error is logged); nothing to clean if it did.
            let _ = thread.join();
        }
    }
}

/// Why a checkpointer did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the checkpoint connection: {0}")]
    Open(#[from] rusqlite::Error),
    #[error("cannot start the checkpoint thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The thread: a checkpoint per tick until the owner is dropped.
fn run(
    conn: &Connection,
    path: &Path,
    what: &'static str,
    interval: Duration,
    stopped: &mpsc::Receiver<()>,
) {
    let mut failing = false;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
        match checkpoint(conn) {
            Ok(_) if failing => {
                failing = false;
                tracing::info!(file = what, path = %path.display(), "background checkpoint works again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(file = what, path = %path.display(), error = %e,
                    "background checkpoint failed; the writer's own checkpoints still bound the WAL");
            }
            Err(_) => {}
        }
    }
}

/// One `PASSIVE` checkpoint on `conn`'s main database.
///
/// # Errors
/// SQLite's error (I/O, a full disk) when the copy or a sync failed.
pub fn checkpoint(conn: &Connection) -> rusqlite::Result<Outcome> {
    conn.query_row("PRAGMA main.wal_checkpoint(PASSIVE)", [], |r| {
        Ok(Outcome {
            busy: r.get::<_, i64>(0)? != 0,
            wal_frames: r.get(1)?,
            checkpointed: r.get(2)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A writer with auto-checkpoint off, as if its own checkpoint never came round.
    fn writer(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA synchronous = NORMAL;
             CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL);",
        )
        .unwrap();
        conn
    }

    fn insert(conn: &Connection, rows: usize) {
        let tx = conn.unchecked_transaction().unwrap();
        for _ in 0..rows {
            tx.execute("INSERT INTO t (v) VALUES (zeroblob(1000))", [])
                .unwrap();
        }
        tx.commit().unwrap();
    }

    /// Pages of the database file itself (not the WAL), read from its size.
    fn file_pages(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len() / 4096
    }

    /// Waits (30 s at most) until the database file holds `pages` pages; only a
    /// checkpoint grows it.
    fn wait_for_file_pages(path: &Path, pages: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while file_pages(path) < pages {
            assert!(
                std::time::Instant::now() < deadline,
                "the file never reached {pages} pages: {}",
                file_pages(path)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn copies_committed_pages_into_the_file_while_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = writer(&path);
        insert(&conn, 2000);
        let before = file_pages(&path);
        let ckpt = Checkpointer::start(&path, "test", Duration::from_millis(10)).unwrap();
        // The writer goes on committing while the checkpointer runs.
        for _ in 0..20 {
            insert(&conn, 100);
        }
        wait_for_file_pages(&path, before + 500);
        drop(ckpt);
        // Every row is there, whichever of WAL and file holds it.
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 4000);
        // After its own checkpoint nothing is left in the WAL.
        let out = checkpoint(&conn).unwrap();
        assert!(!out.busy);
        assert_eq!(out.wal_frames, out.checkpointed);
    }

    #[test]
    fn a_write_after_a_full_background_checkpoint_starts_the_wal_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = writer(&path);
        insert(&conn, 2000);
        let frames_before = wal_frames_on_disk(&path);
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        let pages = u64::try_from(pages).unwrap();
        let ckpt = Checkpointer::start(&path, "test", Duration::from_millis(10)).unwrap();
        // Wait until a background pass copied every page into the file...
        wait_for_file_pages(&path, pages);
        // (joining the thread lets a pass still running finish)...
        drop(ckpt);
        // ...then the next commit writes from the WAL's start: the WAL does not grow.
        insert(&conn, 10);
        let out = checkpoint(&conn).unwrap();
        assert!(
            out.wal_frames < frames_before,
            "WAL restarted: {} frames now, {frames_before} before",
            out.wal_frames
        );
    }

    /// Frames in the WAL of `path` as another connection sees them, without copying any.
    fn wal_frames_on_disk(path: &Path) -> i64 {
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        // Header 32 bytes, then frames of 24 + 4096 bytes.
        let len = std::fs::metadata(wal).unwrap().len();
        i64::try_from(len.saturating_sub(32) / (24 + 4096)).unwrap()
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_new_database() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            Checkpointer::start(&dir.path().join("absent"), "test", DEFAULT_INTERVAL).unwrap_err();
        assert!(matches!(err, StartError::Open(_)), "{err}");
        assert!(!dir.path().join("absent").exists());
    }
}
