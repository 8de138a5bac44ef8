//! Schema migrations of the PostgreSQL store: embedded SQL files (the optional TimescaleDB
//! step is `timescale`).
//!
//! The SQL files under `src/store/migrations/postgres/` are compiled into the binary and
//! applied in version order, each recorded in `nsready_schema_migrations`. Everything runs in
//! one transaction that first takes a transaction-scoped advisory lock, so several processes
//! starting at once apply each migration exactly once and the losers see the winner's result.
//!
//! A database that is already current is only read (no DDL at all), so processes that run
//! as the least-privilege role `nsready_ingest` start without owner rights; `create_roles`
//! (`nsready migrate --create-roles`, `migrations/postgres/roles.sql`) creates that role
//! and `nsready_read`.

use deadpool_postgres::Transaction;
use tokio_postgres::error::SqlState;

use super::error::classify;
use crate::store::StoreError;

/// Key of the advisory lock that serialises migrations across processes (an arbitrary
/// constant, "nsready" in ASCII, so it does not collide with other applications' locks).
const MIGRATION_LOCK: i64 = 0x6e_73_72_65_61_64_79;

/// One embedded migration.
#[derive(Debug)]
pub(super) struct Migration {
    /// Strictly increasing; recorded in `nsready_schema_migrations.version`.
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in the order they are applied. Never edit an applied file: add one.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "platform_schema",
        sql: include_str!("../migrations/postgres/0001_platform_schema.sql"),
    },
    Migration {
        version: 5,
        name: "scada_history_rollup",
        sql: include_str!("../migrations/postgres/0005_scada_history_rollup.sql"),
    },
];

/// Applies the migrations that are not applied yet (the TimescaleDB step follows, in
/// `timescale::apply`).
///
/// # Errors
/// The first failing statement, classified; nothing of this run is kept then.
pub(super) async fn run(tx: &Transaction<'_>) -> Result<(), StoreError> {
    // The lock comes first: it serialises even the creation of the bookkeeping table.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| classify(&e))?;
    // `CREATE TABLE IF NOT EXISTS` needs CREATE on the schema even when the table exists:
    // ask first, so a current database is only read.
    let bookkept: bool = tx
        .query_one(
            "SELECT to_regclass('nsready_schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| classify(&e))?
        .get(0);
    if !bookkept {
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS nsready_schema_migrations (
                 version    INT         PRIMARY KEY,
                 name       TEXT        NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(|e| owner_needed(&e, "creating nsready_schema_migrations"))?;
    }
    let applied: Vec<i32> = tx
        .query("SELECT version FROM nsready_schema_migrations", &[])
        .await
        .map_err(|e| classify(&e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(newest) = applied.iter().max()
        && MIGRATIONS.last().is_some_and(|m| *newest > m.version)
    {
        // A newer binary migrated this database; its schema is a superset of ours.
        tracing::warn!(
            newest,
            "database has migrations this nsready does not know; running anyway"
        );
    }
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        tracing::info!(version = m.version, name = m.name, "applying migration");
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| owner_needed(&e, &format!("migration {:04}_{}", m.version, m.name)))?;
        tx.execute(
            "INSERT INTO nsready_schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(|e| classify(&e))?;
    }
    Ok(())
}

/// A failed migration step, with a hint when the role lacks the owner's rights (a process
/// running as `nsready_ingest` against a database that is not migrated yet). Other errors
/// keep their class (a lost connection stays transient, so start-up retries it).
fn owner_needed(e: &tokio_postgres::Error, step: &str) -> StoreError {
    let err = classify(e);
    if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
        StoreError::Other(format!(
            "{step}: {err} (this role may not change the schema: run `nsready migrate` \
             as the database owner first)"
        ))
    } else if err.is_transient() {
        err
    } else {
        StoreError::Other(format!("{step}: {err}"))
    }
}

/// The least-privilege roles and their grants (`roles.sql`), idempotent.
const ROLES_SQL: &str = include_str!("../migrations/postgres/roles.sql");

/// Creates `nsready_ingest` and `nsready_read` when missing and (re)grants their rights on
/// the current schema. Run after [`run`], in its own transaction.
///
/// # Errors
/// The role lacks CREATEROLE or does not own the tables (named in the message).
pub(super) async fn create_roles(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| classify(&e))?;
    tx.batch_execute(ROLES_SQL).await.map_err(|e| {
        let err = classify(&e);
        if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            StoreError::Other(format!(
                "creating roles: {err} (needs a role with CREATEROLE that owns the tables)"
            ))
        } else {
            StoreError::Other(format!("creating roles: {err}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_in_strictly_increasing_order() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert!(
            MIGRATIONS
                .iter()
                .all(|m| m.version > 0 && !m.sql.trim().is_empty())
        );
    }

    #[test]
    fn the_roles_grant_no_delete_truncate_or_ddl() {
        let sql: String = ROLES_SQL
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n")
            .to_uppercase();
        for word in [
            "DELETE",
            "TRUNCATE",
            "ALL PRIVILEGES",
            "SUPERUSER",
            " LOGIN",
            "CREATE ON",
        ] {
            assert!(!sql.contains(word), "{word} in roles.sql");
        }
        assert!(sql.contains("CREATE ROLE NSREADY_INGEST NOLOGIN"));
    }

    #[test]
    fn the_schema_has_no_unique_index_on_event_id() {
        // DESIGN.md §6: an event_id shared by two devices must not fail an insert.
        let sql: String = MIGRATIONS
            .iter()
            .flat_map(|m| m.sql.lines())
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n")
            .to_lowercase();
        assert!(!sql.contains("(time, event_id)"), "{sql}");
    }
}
