//! Classification of PostgreSQL and pool failures into [`StoreError`].
//!
//! This is the one place that decides whether a failure is transient (the worker NAKs and
//! pauses) or belongs to the data (the worker retries, then dead-letters). Everything else
//! in the PostgreSQL store maps errors through [`classify`] or [`classify_pool`].
//! The text inside the returned error is for logs only: it may quote the database's message
//! and values, and the HTTP layer never shows it.

use deadpool_postgres::PoolError;
use tokio_postgres::error::{DbError, SqlState};

use crate::store::StoreError;

/// What kind of failure a SQLSTATE stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Concurrency: retrying the same statement later may succeed.
    Conflict,
    /// The server cannot serve us right now.
    Unavailable,
    /// The rows themselves are refused.
    Data,
    /// Anything else (schema, permissions, bugs).
    Other,
}

/// The SQLSTATE table (see the PostgreSQL manual, appendix A).
fn class_of(state: &SqlState) -> Class {
    let code = state.code();
    match code {
        // deadlock_detected, serialization_failure, lock_not_available, query_canceled
        "40P01" | "40001" | "55P03" | "57014" => Class::Conflict,
        // admin_shutdown, crash_shutdown, cannot_connect_now (starting up / shutting down)
        "57P01" | "57P02" | "57P03" => Class::Unavailable,
        // 08: connection exception; 53: insufficient resources (disk full, out of memory,
        // too many connections)
        _ if code.starts_with("08") || code.starts_with("53") => Class::Unavailable,
        // 23: integrity constraint violation (FK, not null, unique, check);
        // 22: data exception (out of range, invalid text representation)
        _ if code.starts_with("23") || code.starts_with("22") => Class::Data,
        _ => Class::Other,
    }
}

/// One line for the log: severity, SQLSTATE, message and detail (which may hold values).
fn describe(db: &DbError) -> String {
    let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    if let Some(detail) = db.detail() {
        text.push_str(" (");
        text.push_str(detail);
        text.push(')');
    }
    text
}

/// Maps a driver error to a [`StoreError`].
///
/// An error without a server answer (`DbError`) means the connection broke, never opened or
/// timed out: `Unavailable`, so the worker waits for the database instead of blaming the
/// message.
pub(crate) fn classify(e: &tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        return StoreError::Unavailable(e.to_string());
    };
    let text = describe(db);
    match class_of(db.code()) {
        Class::Conflict => StoreError::Conflict(text),
        Class::Unavailable => StoreError::Unavailable(text),
        Class::Data => StoreError::Data(text),
        Class::Other => StoreError::Other(text),
    }
}

/// Maps a failure to get a pooled connection to a [`StoreError`].
///
/// Every variant here is about reaching the database, never about a message's data, so all
/// but a misbuilt pool are `Unavailable`. That includes a server that refuses the login
/// (wrong password, missing database): the fix is in the deployment, and dead-lettering
/// messages meanwhile would be wrong.
pub(crate) fn classify_pool(e: &PoolError) -> StoreError {
    match e {
        PoolError::Timeout(kind) => {
            StoreError::Unavailable(format!("no database connection in time ({kind:?})"))
        }
        PoolError::Backend(e) => {
            let text = match e.as_db_error() {
                Some(db) => describe(db),
                None => e.to_string(),
            };
            StoreError::Unavailable(format!("cannot connect: {text}"))
        }
        PoolError::Closed => StoreError::Unavailable("connection pool is closed".into()),
        PoolError::PostCreateHook(e) => StoreError::Unavailable(format!("cannot connect: {e}")),
        PoolError::NoRuntimeSpecified => StoreError::Other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(code: &str) -> Class {
        class_of(&SqlState::from_code(code))
    }

    #[test]
    fn concurrency_failures_are_conflicts() {
        for code in ["40P01", "40001", "55P03", "57014"] {
            assert_eq!(class(code), Class::Conflict, "{code}");
        }
    }

    #[test]
    fn connection_shutdown_and_resource_failures_are_unavailable() {
        for code in [
            "08000", "08006", "08001", "57P01", "57P02", "57P03", "53100", "53300",
        ] {
            assert_eq!(class(code), Class::Unavailable, "{code}");
        }
    }

    #[test]
    fn integrity_and_data_exceptions_are_data() {
        // foreign key, not null, unique, check; numeric out of range, invalid text
        for code in ["23503", "23502", "23505", "23514", "22003", "22P02"] {
            assert_eq!(class(code), Class::Data, "{code}");
        }
    }

    #[test]
    fn schema_and_permission_errors_are_other() {
        // undefined table, insufficient privilege, cardinality violation, internal error
        for code in ["42P01", "42501", "21000", "XX000", "55000"] {
            assert_eq!(class(code), Class::Other, "{code}");
        }
    }

    #[test]
    fn pool_timeouts_are_transient() {
        let e = classify_pool(&PoolError::Timeout(deadpool_postgres::TimeoutType::Wait));
        assert!(e.is_transient(), "{e}");
        assert!(classify_pool(&PoolError::Closed).is_transient());
    }
}
