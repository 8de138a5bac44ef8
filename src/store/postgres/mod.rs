//! The PostgreSQL store of the scale-out deployment: a connection pool and the [`Store`]
//! operations on the platform's schema.
//!
//! Telemetry goes in with one `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT` per batch;
//! migrations live in `migrate`, registry import/export in `registry`, and the decision
//! "transient or the data's fault" in `error` alone. Every operation is bounded by the
//! store's timeout, so a hung or unreachable database turns into an error instead of a
//! stuck worker (an unreachable one is [`StoreError::Unavailable`]; a statement past the
//! timeout is cancelled and [`StoreError::Rejected`], which the worker resolves by pinging).

mod error;
mod migrate;
mod registry;
mod timescale;
mod tls;
mod tokens;

pub use timescale::TimescaleInfo;

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Client, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::time::error::Elapsed;
use tokio_postgres::IsolationLevel;
use uuid::Uuid;

use self::error::{classify, classify_pool};
use self::tls::PgTlsConnector;
use crate::config::{PgConnect, TimescalePolicy};
use crate::registry::{ImportReport, RegistryDoc, RegistrySnapshot};
use crate::store::{
    ErrorLogEntry, LatestValue, NewToken, Refusal, Revoke, Row, Store, StoreError, StoreInfo,
    TokenGrant, TokenInfo,
};

/// One statement for a whole batch: the columns travel as eight arrays and UNNEST zips them
/// back into rows. A conflicting key takes the new values (last write wins) but keeps
/// `created_at` from the first write.
const UPSERT_SQL: &str = "\
INSERT INTO ingest_events (time, device_id, parameter_key, value, quality, source, event_id, attributes)
SELECT * FROM UNNEST($1::timestamptz[], $2::uuid[], $3::text[], $4::float8[], $5::int2[],
                     $6::text[], $7::text[], $8::jsonb[])
ON CONFLICT (time, device_id, parameter_key) DO UPDATE SET
    value = EXCLUDED.value, quality = EXCLUDED.quality, source = EXCLUDED.source,
    event_id = EXCLUDED.event_id, attributes = EXCLUDED.attributes";

/// All `error_logs` rows of a call in one statement; `time` takes its default.
const LOG_ERRORS_SQL: &str = "\
INSERT INTO error_logs (source, level, message, context)
SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::jsonb[])";

const LATEST_ALL_SQL: &str = "\
SELECT device_id, parameter_key, time, value, quality FROM v_scada_latest
ORDER BY device_id, parameter_key";

/// A separate statement rather than `$1 IS NULL OR ...`, so the planner can push the device
/// filter into the view and use the (device_id, parameter_key, time DESC) index.
const LATEST_ONE_SQL: &str = "\
SELECT device_id, parameter_key, time, value, quality FROM v_scada_latest
WHERE device_id = $1 ORDER BY device_id, parameter_key";

/// Upper bound on the wait for a cancel request after a timed-out statement.
const CANCEL_WAIT: Duration = Duration::from_secs(2);

/// The PostgreSQL store. Cloning is cheap: clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    /// Connections are opened on demand, at most `pool_size`, and reused; a connection that
    /// broke is noticed on checkout and replaced.
    pool: Pool,
    /// Longest wait for a connection (waiting for a free slot, connecting) and, separately,
    /// for one operation on it. Past it the database counts as unavailable.
    timeout: Duration,
    /// The pool's TLS connector (`sslmode`), also for cancel requests.
    tls: PgTlsConnector,
    /// The TimescaleDB settings `migrate` applies where the extension is installed.
    timescale: TimescalePolicy,
}

impl fmt::Debug for PostgresStore {
    // Not derived: the pool's Debug would print the whole connection configuration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PostgresStore")
            .field("pool_size", &status.max_size)
            .field("connections", &status.size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl PostgresStore {
    /// Builds the pool (lazy: does not fail when the database is down; [`Store::ping`]
    /// tells).
    ///
    /// # Errors
    /// `Other` when the pool cannot be built (a programming error, not the database), or
    /// when the TLS settings cannot be used (an unreadable `sslrootcert`).
    pub fn connect(
        pg: &PgConnect,
        pool_size: usize,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        // TLS as `sslmode` says (see `tls`); the driver's own ssl_mode was set to match.
        let tls = PgTlsConnector::new(&pg.tls)?;
        let manager = Manager::from_config(
            pg.config.clone(),
            tls.clone(),
            ManagerConfig {
                // Fast: only checks that the connection is not closed. A connection that
                // died unnoticed fails one operation as Unavailable, which the worker retries;
                // cheaper than a test query on every checkout.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            // Without these, a dead database makes `get()` wait forever.
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| StoreError::Other(format!("cannot build the connection pool: {e}")))?;
        Ok(PostgresStore {
            pool,
            timeout,
            tls,
            timescale: TimescalePolicy::default(),
        })
    }

    /// The TimescaleDB settings `migrate` applies (the defaults otherwise).
    #[must_use]
    pub fn with_timescale(mut self, policy: TimescalePolicy) -> Self {
        self.timescale = policy;
        self
    }

    /// A pooled connection, within the pool's timeouts.
    async fn client(&self) -> Result<Client, StoreError> {
        self.pool.get().await.map_err(|e| classify_pool(&e))
    }

    /// Settles an operation run under [`tokio::time::timeout`] on `client`.
    ///
    /// On timeout the statement may still be running on the server: ask the server to cancel
    /// it (so it stops holding locks) and drop the connection instead of returning it to the
    /// pool, where the next user would queue behind the abandoned statement.
    async fn settle<T>(
        &self,
        client: Client,
        outcome: Result<Result<T, StoreError>, Elapsed>,
        what: &str,
    ) -> Result<T, StoreError> {
        match outcome {
            Ok(result) => result,
            Err(_) => {
                let token = client.cancel_token();
                // Bounded: an unreachable server is the usual reason we got here.
                if let Ok(Err(e)) =
                    tokio::time::timeout(CANCEL_WAIT, token.cancel_query(self.tls.clone())).await
                {
                    tracing::debug!(error = %e, "cancel request failed");
                }
                drop(Object::take(client));
                // Not proven infrastructure: a huge batch may simply be slow. The worker
                // pings; a hung database fails the ping too, a slow batch is bisected.
                Err(StoreError::Rejected(Refusal::new(
                    format!(
                        "{what} did not finish within {:?} (DB_TIMEOUT); cancelled",
                        self.timeout
                    ),
                    false,
                )))
            }
        }
    }
}

impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        // No statement timeout here: the advisory lock may wait for another process's
        // migration, and converting a big table to a hypertable takes as long as it takes.
        let tx = client.transaction().await.map_err(|e| classify(&e))?;
        migrate::run(&tx).await?;
        timescale::apply(&tx, &self.timescale).await?;
        tx.commit().await.map_err(|e| classify(&e))
    }

    async fn create_roles(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| classify(&e))?;
        migrate::create_roles(&tx).await?;
        tx.commit().await.map_err(|e| classify(&e))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout, async {
            client
                .simple_query("SELECT 1")
                .await
                .map(drop)
                .map_err(|e| classify(&e))
        })
        .await;
        self.settle(client, outcome, "ping").await
    }

    #[tracing::instrument(name = "store.upsert", skip_all, fields(rows = rows.len()))]
    async fn upsert(&self, rows: &[Row]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        debug_assert!(
            rows.windows(2).all(|w| w[0].key() < w[1].key()),
            "rows must be unique by key and sorted: ON CONFLICT cannot touch a row twice"
        );
        // Column vectors borrow from the rows: only the eight vectors are allocated.
        let n = rows.len();
        let mut times = Vec::with_capacity(n);
        let mut devices = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut values = Vec::with_capacity(n);
        let mut qualities = Vec::with_capacity(n);
        let mut sources = Vec::with_capacity(n);
        let mut event_ids = Vec::with_capacity(n);
        let mut attributes = Vec::with_capacity(n);
        for r in rows {
            times.push(r.time);
            devices.push(r.device_id);
            keys.push(r.parameter_key.as_str());
            values.push(r.value);
            qualities.push(r.quality);
            sources.push(&*r.source);
            event_ids.push(r.event_id.as_str());
            attributes.push(&r.attributes);
        }
        let client = self.client().await?;
        // A single statement is its own transaction in PostgreSQL: all rows or none, with
        // no BEGIN/COMMIT round trips.
        let outcome = tokio::time::timeout(self.timeout, async {
            let stmt = client
                .prepare_cached(UPSERT_SQL)
                .await
                .map_err(|e| classify(&e))?;
            client
                .execute(
                    &stmt,
                    &[
                        &times,
                        &devices,
                        &keys,
                        &values,
                        &qualities,
                        &sources,
                        &event_ids,
                        &attributes,
                    ],
                )
                .await
                .map_err(|e| classify(&e))
        })
        .await;
        self.settle(client, outcome, "upsert").await
    }

    async fn log_errors(&self, entries: &[ErrorLogEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let sources: Vec<&str> = entries.iter().map(|e| e.source.as_str()).collect();
        let levels: Vec<&str> = entries.iter().map(|e| e.level.as_str()).collect();
        let messages: Vec<&str> = entries.iter().map(|e| e.message.as_str()).collect();
        let contexts: Vec<&serde_json::Value> = entries.iter().map(|e| &e.context).collect();
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout, async {
            let stmt = client
                .prepare_cached(LOG_ERRORS_SQL)
                .await
                .map_err(|e| classify(&e))?;
            client
                .execute(&stmt, &[&sources, &levels, &messages, &contexts])
                .await
                .map(drop)
                .map_err(|e| classify(&e))
        })
        .await;
        self.settle(client, outcome, "log_errors").await
    }

    async fn load_registry(&self) -> Result<RegistrySnapshot, StoreError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout, registry::load(&client)).await;
        self.settle(client, outcome, "load_registry").await
    }

    async fn import_registry(&self, doc: &RegistryDoc) -> Result<ImportReport, StoreError> {
        let mut client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout, async {
            // One transaction: a refused row leaves the registry as it was.
            let tx = client.transaction().await.map_err(|e| classify(&e))?;
            let report = registry::import(&tx, doc).await?;
            tx.commit().await.map_err(|e| classify(&e))?;
            Ok(report)
        })
        .await;
        self.settle(client, outcome, "import_registry").await
    }

    async fn export_registry(&self) -> Result<RegistryDoc, StoreError> {
        let mut client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout, async {
            // Repeatable read: the five tables come from one snapshot, so a concurrent
            // import cannot produce a device whose site is missing from the export.
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(|e| classify(&e))?;
            let doc = registry::export(&tx).await?;
            tx.commit().await.map_err(|e| classify(&e))?;
            Ok(doc)
        })
        .await;
        self.settle(client, outcome, "export_registry").await
    }

    async fn latest(&self, device: Option<Uuid>) -> Result<Vec<LatestValue>, StoreError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout, async {
            let rows = match device {
                Some(id) => {
                    let stmt = client.prepare_cached(LATEST_ONE_SQL).await;
                    let stmt = stmt.map_err(|e| classify(&e))?;
                    client.query(&stmt, &[&id]).await
                }
                None => {
                    let stmt = client.prepare_cached(LATEST_ALL_SQL).await;
                    let stmt = stmt.map_err(|e| classify(&e))?;
                    client.query(&stmt, &[]).await
                }
            }
            .map_err(|e| classify(&e))?;
            rows.iter()
                .map(|r| {
                    Ok(LatestValue {
                        device_id: r.try_get(0)?,
                        parameter_key: r.try_get(1)?,
                        time: r.try_get(2)?,
                        value: r.try_get(3)?,
                        quality: r.try_get(4)?,
                    })
                })
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                .map_err(|e| classify(&e))
        })
        .await;
        self.settle(client, outcome, "latest").await
    }

    async fn info(&self) -> Result<StoreInfo, StoreError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout, timescale::info(&client)).await;
        let timescale = self.settle(client, outcome, "info").await?;
        Ok(StoreInfo {
            backend: if timescale.is_some() {
                "timescaledb"
            } else {
                "postgresql"
            },
            timescale,
        })
    }

    async fn count_rows(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout, async {
            let stmt = client
                .prepare_cached("SELECT count(*) FROM ingest_events")
                .await
                .map_err(|e| classify(&e))?;
            let row = client
                .query_one(&stmt, &[])
                .await
                .map_err(|e| classify(&e))?;
            let count: i64 = row.try_get(0).map_err(|e| classify(&e))?;
            // count(*) is never negative; saturate instead of trusting that blindly.
            Ok(u64::try_from(count).unwrap_or_default())
        })
        .await;
        self.settle(client, outcome, "count_rows").await
    }

    async fn create_token(&self, token: &NewToken) -> Result<TokenInfo, StoreError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout, tokens::create(&client, token)).await;
        self.settle(client, outcome, "create_token").await
    }

    async fn list_tokens(&self, device: Option<Uuid>) -> Result<Vec<TokenInfo>, StoreError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout, tokens::list(&client, device)).await;
        self.settle(client, outcome, "list_tokens").await
    }

    async fn revoke_tokens(&self, which: Revoke) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout, tokens::revoke(&client, which)).await;
        self.settle(client, outcome, "revoke_tokens").await
    }

    async fn load_tokens(&self) -> Result<Vec<TokenGrant>, StoreError> {
        let client = self.client().await?;
        let outcome = tokio::time::timeout(self.timeout, tokens::load(&client)).await;
        self.settle(client, outcome, "load_tokens").await
    }
}
