//! The raw SQLite anchor for `scripts/bench` (issue 13): what SQLite itself does on this
//! machine with nsready's rows and no nsready in between (not a test).
//!
//! Copies (`VACUUM INTO`) an embedded store file that `nsready registry demo`/`registry
//! import` prepared, to `--db` (the platform schema: primary key, the `(device_id, parameter_key, time DESC)`
//! index, both foreign keys enforced, `json_valid` checks), and upserts `--rows` rows of the
//! loadgen shape (every device with templates, every key, one event per device and
//! microsecond, attributes `{"unit":"V"}`) with the store's own statement, in transactions of
//! `--batch-rows` rows, WAL and `synchronous=NORMAL`, SQLite's other settings left at their
//! defaults (1,000-page autocheckpoint) but the page cache, 64 MiB like the store's writer
//! (at SQLite's 2 MiB the index pages thrash through read(2) and the anchor measures the
//! kernel): the anchor the issue names
//! ("SQLite upsert of the same rows, WAL, synchronous=NORMAL, 1,500-row transactions").
//! Rows are formatted before the clock starts. Prints one JSON object.
//!
//! `cargo run --release --example bench_sqlite -- --from DATA_DIR/nsready.db --db /tmp/anchor.db`

use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Parser;
use rusqlite::{Connection, params};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser, Debug)]
struct Args {
    /// The embedded store file with the bench registry (only read).
    #[arg(long)]
    from: PathBuf,
    /// Where the copy goes (must not exist); the rows are written into it.
    #[arg(long)]
    db: PathBuf,
    /// Rows to upsert.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Rows per transaction.
    #[arg(long, default_value_t = 1_500)]
    batch_rows: usize,
}

/// The store's statement (src/store/sqlite/mod.rs `UPSERT`).
const UPSERT: &str = "INSERT INTO ingest_events \
    (time, device_id, parameter_key, value, quality, source, event_id, attributes) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
    ON CONFLICT (time, device_id, parameter_key) DO UPDATE SET \
    value = excluded.value, quality = excluded.quality, source = excluded.source, \
    event_id = excluded.event_id, attributes = excluded.attributes";

const TARGETS_SQL: &str = "\
SELECT d.id, t.key FROM devices d
  JOIN sites s ON s.id = d.site_id
  JOIN parameter_templates t ON t.key LIKE 'project:' || s.project_id || ':%'
 WHERE d.status = 'active'
 ORDER BY d.id, t.key";

struct RowText {
    time: String,
    device: String,
    key: String,
    value: f64,
    event_id: String,
}

fn build_rows(conn: &Connection, rows: usize) -> Result<Vec<RowText>> {
    let mut devices: Vec<(String, Vec<String>)> = Vec::new();
    let mut stmt = conn.prepare(TARGETS_SQL)?;
    let mut q = stmt.query([])?;
    while let Some(r) = q.next()? {
        let (d, k): (String, String) = (r.get(0)?, r.get(1)?);
        match devices.last_mut() {
            Some((last, keys)) if *last == d => keys.push(k),
            _ => devices.push((d, vec![k])),
        }
    }
    if devices.is_empty() {
        return Err("no device with parameter templates: run `nsready registry demo` first".into());
    }
    let base = Utc::now().timestamp_micros();
    let mut out = Vec::with_capacity(rows);
    let mut i = 0i64;
    while out.len() < rows {
        let (device, keys) = &devices[usize::try_from(i).unwrap_or(0) % devices.len()];
        let t = DateTime::from_timestamp_micros(base + i).ok_or("time out of range")?;
        let time = t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
        let ts = t.to_rfc3339_opts(SecondsFormat::Micros, true);
        for k in keys {
            if out.len() == rows {
                break;
            }
            out.push(RowText {
                time: time.clone(),
                device: device.clone(),
                key: k.clone(),
                value: 200.0 + (i % 4_000) as f64 / 100.0,
                event_id: format!("{device}:{ts}:{k}"),
            });
        }
        i += 1;
    }
    // The worker sorts each batch by key; the rows are in time order already.
    Ok(out)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn main() -> Result<()> {
    let args = Args::parse();
    Connection::open(&args.from)?.execute(
        "VACUUM INTO ?1",
        [args.db.to_str().ok_or("--db is not UTF-8")?],
    )?;
    let mut conn = Connection::open(&args.db)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("cannot switch to WAL (got {mode})").into());
    }
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536;",
    )?;
    eprintln!("sqlite anchor: building {} rows ...", args.rows);
    let rows = build_rows(&conn, args.rows)?;
    eprintln!("sqlite anchor: upsert ...");
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    for chunk in rows.chunks(args.batch_rows.max(1)) {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(UPSERT)?;
            for r in chunk {
                stmt.execute(params![
                    r.time,
                    r.device,
                    r.key,
                    r.value,
                    192,
                    "GPRS",
                    r.event_id,
                    "{\"unit\":\"V\"}"
                ])?;
            }
        }
        tx.commit()?;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let stored: i64 = conn.query_row("SELECT count(*) FROM ingest_events", [], |r| r.get(0))?;
    if usize::try_from(stored).unwrap_or(0) != rows.len() {
        return Err(format!("{stored} rows stored, {} upserted", rows.len()).into());
    }
    println!(
        "{}",
        json!({
            "rows": rows.len(),
            "batch_rows": args.batch_rows,
            "upsert_rows_per_s": (rows.len() as f64 / secs.max(1e-9)).round(),
            "cpu_ms_per_1000_rows": (cpu * 1e6 / rows.len().max(1) as f64 * 10.0).round() / 10.0,
            "secs": (secs * 1000.0).round() / 1000.0,
            "client_cpu_s": (cpu_seconds() * 100.0).round() / 100.0,
        })
    );
    Ok(())
}
