//! The TimescaleDB step of `migrate`, and what the store reports about it.
//!
//! Where the extension is installed and preloaded, `ingest_events` becomes a hypertable
//! (rows written before the extension appeared are moved into chunks), compressed by
//! `device_id` and ordered by `time DESC`, with the compression and retention policies of
//! [`TimescalePolicy`], and the continuous aggregate `scada_rollup_1m` (per device,
//! parameter and minute: min, max, avg, last, count) behind `v_scada_history_1m`.
//!
//! Not a recorded migration: it runs at every `migrate` and compares what is there with the
//! settings, so installing the extension later, or changing a setting and migrating again,
//! takes effect. A database that already matches is only read. A role that does not own
//! `ingest_events` (`nsready_ingest`) never changes anything: it logs what differs and goes
//! on, so a service whose settings disagree with the owner's last `migrate` still starts.
//!
//! Late data: an upsert into a compressed chunk decompresses the rows of its segment and
//! lands (TimescaleDB 2.11 and later); the policy compresses them again on its next run.

use std::time::Duration;

use deadpool_postgres::Transaction;
use serde::Serialize;

use super::error::classify;
use crate::config::TimescalePolicy;
use crate::store::StoreError;

/// The continuous aggregate behind `v_scada_history_1m`.
pub(super) const ROLLUP: &str = "scada_rollup_1m";

/// Compression settings of the hypertable.
const SEGMENT_BY: &str = "device_id";
const ORDER_BY: &str = "time DESC";
/// [`ORDER_BY`] as `hypertable_compression_settings` prints it.
const ORDER_BY_SHOWN: &str = "\"time\" DESC";

/// What the store says about TimescaleDB (`/v1/health`, `nsready status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimescaleInfo {
    /// The installed extension version.
    pub version: String,
    /// Whether `ingest_events` is a hypertable.
    pub hypertable: bool,
    /// The chunk interval of new chunks, as PostgreSQL prints the interval.
    pub chunk_interval: Option<String>,
    /// Compression policy: chunks older than this are compressed (`None`: no policy).
    pub compress_after: Option<String>,
    /// Retention policy: chunks older than this are dropped (`None`: no policy).
    pub retention: Option<String>,
    /// The continuous aggregate's name, when it exists.
    pub rollup: Option<String>,
    pub chunks: i64,
    pub compressed_chunks: i64,
}

/// `INTERVAL '7 days'`, in the largest whole unit: built from a number, so nothing from
/// outside reaches the SQL, and TimescaleDB's job config reads as the operator wrote it.
fn interval(d: Duration) -> String {
    let secs = d.as_secs().max(1);
    let (n, unit) = [(86_400, "days"), (3600, "hours"), (60, "minutes")]
        .into_iter()
        .find(|(size, _)| secs.is_multiple_of(*size))
        .map_or((secs, "seconds"), |(size, unit)| (secs / size, unit));
    format!("INTERVAL '{n} {unit}'")
}

/// Whether `sql` returns any row.
async fn exists(tx: &Transaction<'_>, sql: &str) -> Result<bool, StoreError> {
    tx.query_one(&format!("SELECT EXISTS ({sql})"), &[])
        .await
        .map(|row| row.get(0))
        .map_err(|e| classify(&e))
}

/// `Some(true)` when the current policy job's `key` equals `want`, `Some(false)` when a job
/// exists with another value, `None` without a job.
async fn job_matches(
    tx: &Transaction<'_>,
    proc_name: &str,
    key: &str,
    want: Option<Duration>,
) -> Result<Option<bool>, StoreError> {
    let secs = want.map(|d| d.as_secs().max(1) as f64);
    let row = tx
        .query_opt(
            "SELECT ((config->>$2)::interval = make_interval(secs => $3::float8)) IS TRUE
               FROM timescaledb_information.jobs
              WHERE proc_name = $1 AND hypertable_schema = current_schema()
                AND hypertable_name = 'ingest_events'
              LIMIT 1",
            &[&proc_name, &key, &secs.unwrap_or(0.0)],
        )
        .await
        .map_err(|e| classify(&e))?;
    Ok(row.map(|r| r.get::<_, bool>(0) && want.is_some()))
}

/// The changes the settings need; empty when the database already matches.
async fn plan(tx: &Transaction<'_>, p: &TimescalePolicy) -> Result<Vec<String>, StoreError> {
    let mut steps = Vec::new();
    let hyper = exists(
        tx,
        "SELECT 1 FROM timescaledb_information.hypertables
          WHERE hypertable_name = 'ingest_events' AND hypertable_schema = current_schema()",
    )
    .await?;
    let Some(chunk) = p.chunk_interval else {
        if hyper {
            tracing::warn!(
                "TIMESCALE_CHUNK_INTERVAL=off, but ingest_events is already a hypertable: \
                 it stays one, with its policies"
            );
        }
        return Ok(steps);
    };
    if hyper {
        let same = exists(
            tx,
            &format!(
                "SELECT 1 FROM timescaledb_information.dimensions
                  WHERE hypertable_name = 'ingest_events'
                    AND hypertable_schema = current_schema()
                    AND column_name = 'time' AND time_interval = {}",
                interval(chunk)
            ),
        )
        .await?;
        if !same {
            steps.push(format!(
                "SELECT set_chunk_time_interval('ingest_events', {})",
                interval(chunk)
            ));
        }
    } else {
        // migrate_data moves rows written before the extension appeared into chunks.
        steps.push(format!(
            "SELECT create_hypertable('ingest_events', 'time', chunk_time_interval => {},
                    if_not_exists => TRUE, migrate_data => TRUE)",
            interval(chunk)
        ));
    }
    let compression_ok = hyper
        && exists(
            tx,
            &format!(
                "SELECT 1 FROM timescaledb_information.hypertable_compression_settings
                  WHERE hypertable = 'ingest_events'::regclass
                    AND segmentby = '{SEGMENT_BY}' AND orderby = '{ORDER_BY_SHOWN}'"
            ),
        )
        .await?;
    if !compression_ok {
        let compressed = hyper
            && exists(
                tx,
                "SELECT 1 FROM timescaledb_information.chunks
                  WHERE hypertable_name = 'ingest_events'
                    AND hypertable_schema = current_schema() AND is_compressed",
            )
            .await?;
        if compressed {
            tracing::warn!(
                "the hypertable ingest_events has compressed chunks with other compression \
                 settings; keeping them (decompress_chunk them all to switch to segmentby \
                 {SEGMENT_BY}, orderby {ORDER_BY})"
            );
        } else {
            steps.push(format!(
                "ALTER TABLE ingest_events SET (timescaledb.compress,
                    timescaledb.compress_segmentby = '{SEGMENT_BY}',
                    timescaledb.compress_orderby = '{ORDER_BY}')"
            ));
        }
    }
    for (proc_name, key, want, remove, add) in [
        (
            "policy_compression",
            "compress_after",
            p.compress_after,
            "remove_compression_policy",
            "add_compression_policy",
        ),
        (
            "policy_retention",
            "drop_after",
            p.retention,
            "remove_retention_policy",
            "add_retention_policy",
        ),
    ] {
        let current = if hyper {
            job_matches(tx, proc_name, key, want).await?
        } else {
            None
        };
        if current.is_some() && current != Some(true) {
            steps.push(format!(
                "SELECT {remove}('ingest_events', if_exists => TRUE)"
            ));
        }
        if let Some(d) = want
            && current != Some(true)
        {
            steps.push(format!("SELECT {add}('ingest_events', {})", interval(d)));
        }
    }
    let rollup = exists(
        tx,
        &format!(
            "SELECT 1 FROM timescaledb_information.continuous_aggregates
              WHERE view_name = '{ROLLUP}' AND view_schema = current_schema()"
        ),
    )
    .await?;
    if !rollup {
        // WITH NO DATA: allowed inside the migration's transaction; the refresh policy
        // materialises it, and materialized_only = false lets reads see newer rows at once.
        steps.push(format!(
            "CREATE MATERIALIZED VIEW {ROLLUP}
                 WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
             SELECT time_bucket(INTERVAL '1 minute', time) AS bucket, device_id,
                    parameter_key, min(value) AS value_min, max(value) AS value_max,
                    avg(value) AS value_avg, last(value, time) AS value_last,
                    count(*) AS value_count
               FROM ingest_events
              GROUP BY bucket, device_id, parameter_key
             WITH NO DATA"
        ));
        // start_offset NULL: late readings anywhere in history are folded in by the next
        // run (only invalidated buckets are recomputed).
        // Oldest first: each batch the job commits moves the watermark forward, and reads
        // aggregate everything past it, so the view is complete even while a long refresh
        // (the first one after converting a big table) is under way.
        steps.push(format!(
            "SELECT add_continuous_aggregate_policy('{ROLLUP}', start_offset => NULL,
                    end_offset => INTERVAL '1 minute',
                    schedule_interval => INTERVAL '5 minutes', if_not_exists => TRUE,
                    refresh_newest_first => FALSE)"
        ));
    }
    let view_reads_rollup = exists(
        tx,
        &format!(
            "SELECT 1 WHERE to_regclass('v_scada_history_1m') IS NOT NULL
                AND pg_get_viewdef('v_scada_history_1m') LIKE '%{ROLLUP}%'"
        ),
    )
    .await?;
    if !view_reads_rollup {
        // Same columns as the plain-PostgreSQL view of migration 0005.
        steps.push(format!(
            "CREATE OR REPLACE VIEW v_scada_history_1m AS
             SELECT bucket, device_id, parameter_key, value_min, value_max, value_avg,
                    value_last, value_count
               FROM {ROLLUP}"
        ));
    }
    Ok(steps)
}

/// Applies the TimescaleDB settings where the extension can be used; a no-op on plain
/// PostgreSQL. Runs inside the migration's transaction, after the SQL files.
///
/// # Errors
/// A failing statement, classified.
pub(super) async fn apply(tx: &Transaction<'_>, p: &TimescalePolicy) -> Result<(), StoreError> {
    let owner = exists(
        tx,
        "SELECT 1 FROM pg_class
          WHERE oid = 'ingest_events'::regclass AND pg_has_role(relowner, 'USAGE')",
    )
    .await?;
    let installed = exists(
        tx,
        "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'",
    )
    .await?;
    if !installed {
        if !exists(
            tx,
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'",
        )
        .await?
        {
            tracing::debug!("TimescaleDB not available: ingest_events stays a plain table");
            return Ok(());
        }
        // CREATE EXTENSION fails unless the library is preloaded; check instead of failing
        // the whole migration. Not through `shared_preload_libraries`, which only superusers
        // may read: a loaded library has registered its settings, which anyone may see.
        let preloaded = exists(
            tx,
            "SELECT 1 FROM pg_settings WHERE name = 'timescaledb.max_background_workers'",
        )
        .await?;
        if !preloaded {
            tracing::warn!(
                "TimescaleDB is installed but not in shared_preload_libraries: \
                 ingest_events stays a plain table"
            );
            return Ok(());
        }
        if p.chunk_interval.is_none() {
            tracing::info!("TIMESCALE_CHUNK_INTERVAL=off: ingest_events stays a plain table");
            return Ok(());
        }
        let superuser = exists(
            tx,
            "SELECT 1 FROM pg_roles WHERE rolname = current_user AND rolsuper",
        )
        .await?;
        if !owner || !superuser {
            tracing::warn!(
                "TimescaleDB is preloaded but not created in this database, and only a \
                 superuser may create it: run `CREATE EXTENSION timescaledb` as one, then \
                 `nsready migrate` as the owner of ingest_events to turn it into a hypertable"
            );
            return Ok(());
        }
        tx.batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            .await
            .map_err(|e| classify(&e))?;
    }
    let steps = plan(tx, p).await?;
    if steps.is_empty() {
        return Ok(());
    }
    if !owner {
        tracing::warn!(
            changes = steps.len(),
            "the TimescaleDB settings differ from the database's, but this role does not own \
             ingest_events: run `nsready migrate` as the owner to apply them"
        );
        return Ok(());
    }
    for step in &steps {
        tracing::info!(step = %step.split_whitespace().collect::<Vec<_>>().join(" "), "TimescaleDB");
        tx.batch_execute(step).await.map_err(|e| classify(&e))?;
    }
    Ok(())
}

/// TimescaleDB's state, or `None` when the extension is not installed in this database.
///
/// # Errors
/// A failing catalog query, classified.
pub(super) async fn info(
    client: &tokio_postgres::Client,
) -> Result<Option<TimescaleInfo>, StoreError> {
    let Some(row) = client
        .query_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await
        .map_err(|e| classify(&e))?
    else {
        return Ok(None);
    };
    let version: String = row.get(0);
    let row = client
        .query_one(
            "SELECT
               EXISTS (SELECT 1 FROM timescaledb_information.hypertables h
                        WHERE h.hypertable_name = 'ingest_events'
                          AND h.hypertable_schema = current_schema()),
               (SELECT d.time_interval::text FROM timescaledb_information.dimensions d
                 WHERE d.hypertable_name = 'ingest_events'
                   AND d.hypertable_schema = current_schema() AND d.column_name = 'time'),
               (SELECT j.config->>'compress_after' FROM timescaledb_information.jobs j
                 WHERE j.proc_name = 'policy_compression' AND j.hypertable_name = 'ingest_events'
                   AND j.hypertable_schema = current_schema() LIMIT 1),
               (SELECT j.config->>'drop_after' FROM timescaledb_information.jobs j
                 WHERE j.proc_name = 'policy_retention' AND j.hypertable_name = 'ingest_events'
                   AND j.hypertable_schema = current_schema() LIMIT 1),
               (SELECT c.view_name::text FROM timescaledb_information.continuous_aggregates c
                 WHERE c.view_name = $1 AND c.view_schema = current_schema()),
               (SELECT count(*) FROM timescaledb_information.chunks c
                 WHERE c.hypertable_name = 'ingest_events'
                   AND c.hypertable_schema = current_schema()),
               (SELECT count(*) FROM timescaledb_information.chunks c
                 WHERE c.hypertable_name = 'ingest_events'
                   AND c.hypertable_schema = current_schema() AND c.is_compressed)",
            &[&ROLLUP],
        )
        .await
        .map_err(|e| classify(&e))?;
    let get =
        |i| -> Result<Option<String>, StoreError> { row.try_get(i).map_err(|e| classify(&e)) };
    Ok(Some(TimescaleInfo {
        version,
        hypertable: row.try_get(0).map_err(|e| classify(&e))?,
        chunk_interval: get(1)?,
        compress_after: get(2)?,
        retention: get(3)?,
        rollup: get(4)?,
        chunks: row.try_get(5).map_err(|e| classify(&e))?,
        compressed_chunks: row.try_get(6).map_err(|e| classify(&e))?,
    }))
}
