//! Classification of PostgreSQL and pool failures into [`StoreError`].
//!
//! This is the one place that decides what a PostgreSQL failure says about whose fault it
//! is ([`crate::store::Failure`]): proven infrastructure (the worker NAKs without counting
//! and pauses), a value that can never be stored (dead letter at once), or unclear (the
//! worker pings, bisects, and counts retries). Everything else in the PostgreSQL store maps
//! errors through [`classify`] or [`classify_pool`]. The text inside the returned error
//! quotes the database's code and message (never the SQL text); the HTTP layer never shows
//! it.

use deadpool_postgres::PoolError;
use tokio_postgres::error::{DbError, SqlState};

use crate::store::{Refusal, StoreError};

/// What a SQLSTATE says about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// The server cannot serve us (connection, shutdown, disk full, I/O): infrastructure.
    Unavailable,
    /// Class 22, data exception: the value can never be stored.
    Unstorable,
    /// Class 23, integrity constraint: the rows are refused as they are now (a missing
    /// device may be imported later).
    Constraint,
    /// Anything else, known or not: proves nothing by itself.
    Unclear,
}

/// The SQLSTATE table (the PostgreSQL manual, appendix A), by class and then by code.
fn class_of(state: &SqlState) -> Class {
    let code = state.code();
    let class = code.get(..2).unwrap_or("");
    match (class, code) {
        // Out of memory may be the statement's own doing (a huge batch): bisect it.
        ("53", "53200") => Class::Unclear,
        // Insufficient resources: disk full, too many connections, configuration limits.
        ("53", _) => Class::Unavailable,
        // Connection exception; system error (I/O error, missing files).
        ("08", _) | ("58", _) => Class::Unavailable,
        // admin_shutdown, crash_shutdown, cannot_connect_now, database_dropped,
        // idle_session_timeout. (57014 query_canceled, our own cancel or a
        // statement_timeout, stays unclear: a huge batch is bisected.)
        ("57", "57P01" | "57P02" | "57P03" | "57P04" | "57P05") => Class::Unavailable,
        ("22", _) => Class::Unstorable,
        ("23", _) => Class::Constraint,
        _ => Class::Unclear,
    }
}

/// One line for the log and the dead letter: SQLSTATE and message. Never the statement.
fn refusal(db: &DbError, never_storable: bool) -> Refusal {
    let mut message = db.message().to_string();
    if let Some(detail) = db.detail() {
        message.push_str(" (");
        message.push_str(detail);
        message.push(')');
    }
    Refusal {
        code: Some(format!("SQLSTATE {}", db.code().code())),
        message,
        never_storable,
    }
}

/// True for driver errors without a server answer that prove the connection is gone:
/// closed, or an I/O error other than the driver refusing to encode our own input.
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
    io.is_some_and(|io| {
        !matches!(
            io.kind(),
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
        )
    })
}

/// Maps a driver error to a [`StoreError`].
///
/// An error without a server answer (`DbError`) is infrastructure only when the connection
/// is proven gone ([`connection_lost`]); a value the driver cannot encode or a row it cannot
/// decode is unclear, and the worker bisects.
pub(crate) fn classify(e: &tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        if connection_lost(e) {
            return StoreError::Unavailable(e.to_string());
        }
        return StoreError::Rejected(Refusal::new(e.to_string(), false));
    };
    match class_of(db.code()) {
        Class::Unavailable => StoreError::Unavailable(refusal(db, false).to_string()),
        Class::Unstorable => StoreError::Data(refusal(db, true)),
        Class::Constraint => StoreError::Data(refusal(db, false)),
        Class::Unclear => StoreError::Rejected(refusal(db, false)),
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
                Some(db) => refusal(db, false).to_string(),
                // tokio-postgres's Display stops at the kind ("error performing TLS
                // handshake"); the cause (which certificate check failed) is its source.
                None => with_sources(e),
            };
            StoreError::Unavailable(format!("cannot connect: {text}"))
        }
        PoolError::Closed => StoreError::Unavailable("connection pool is closed".into()),
        PoolError::PostCreateHook(e) => StoreError::Unavailable(format!("cannot connect: {e}")),
        PoolError::NoRuntimeSpecified => StoreError::Other(e.to_string()),
    }
}

/// An error and its chain of causes, `a: b: c` (connection errors: no secret in them).
fn with_sources(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Failure;

    fn class(code: &str) -> Class {
        class_of(&SqlState::from_code(code))
    }

    /// Every class of appendix A, with the disposition its generic code gets.
    const CLASSES: &[(&str, Class)] = &[
        ("00000", Class::Unclear),     // successful completion (never an error)
        ("01000", Class::Unclear),     // warning
        ("02000", Class::Unclear),     // no data
        ("03000", Class::Unclear),     // SQL statement not yet complete
        ("08000", Class::Unavailable), // connection exception
        ("09000", Class::Unclear),     // triggered action exception
        ("0A000", Class::Unclear),     // feature not supported
        ("0B000", Class::Unclear),     // invalid transaction initiation
        ("0F000", Class::Unclear),     // locator exception
        ("0L000", Class::Unclear),     // invalid grantor
        ("0P000", Class::Unclear),     // invalid role specification
        ("0Z000", Class::Unclear),     // diagnostics exception
        ("20000", Class::Unclear),     // case not found
        ("21000", Class::Unclear),     // cardinality violation
        ("22000", Class::Unstorable),  // data exception
        ("23000", Class::Constraint),  // integrity constraint violation
        ("24000", Class::Unclear),     // invalid cursor state
        ("25000", Class::Unclear),     // invalid transaction state
        ("26000", Class::Unclear),     // invalid SQL statement name
        ("27000", Class::Unclear),     // triggered data change violation
        ("28000", Class::Unclear),     // invalid authorization specification
        ("2B000", Class::Unclear),     // dependent privilege descriptors still exist
        ("2D000", Class::Unclear),     // invalid transaction termination
        ("2F000", Class::Unclear),     // SQL routine exception
        ("34000", Class::Unclear),     // invalid cursor name
        ("38000", Class::Unclear),     // external routine exception
        ("39000", Class::Unclear),     // external routine invocation exception
        ("3B000", Class::Unclear),     // savepoint exception
        ("3D000", Class::Unclear),     // invalid catalog name
        ("3F000", Class::Unclear),     // invalid schema name
        ("40000", Class::Unclear),     // transaction rollback
        ("42000", Class::Unclear),     // syntax error or access rule violation
        ("44000", Class::Unclear),     // with check option violation
        ("53000", Class::Unavailable), // insufficient resources
        ("54000", Class::Unclear),     // program limit exceeded
        ("55000", Class::Unclear),     // object not in prerequisite state
        ("57000", Class::Unclear),     // operator intervention
        ("58000", Class::Unavailable), // system error
        ("72000", Class::Unclear),     // snapshot failure
        ("F0000", Class::Unclear),     // configuration file error
        ("HV000", Class::Unclear),     // foreign data wrapper error
        ("P0000", Class::Unclear),     // PL/pgSQL error
        ("XX000", Class::Unclear),     // internal error
    ];

    #[test]
    fn every_sqlstate_class_maps_to_a_known_disposition() {
        for (code, want) in CLASSES {
            assert_eq!(class(code), *want, "{code}");
        }
        assert_eq!(CLASSES.len(), 43, "every class of appendix A");
    }

    #[test]
    fn unknown_codes_bisect() {
        for code in ["ZZ999", "99999", "P0999", "XX999", "40ZZZ", "", "Q"] {
            assert_eq!(class(code), Class::Unclear, "{code}");
        }
    }

    #[test]
    fn concurrency_failures_and_timeouts_are_unclear_and_bisect() {
        // deadlock, serialization failure, lock not available, query canceled (statement
        // timeout): not proven infrastructure; the worker pings and bisects.
        for code in ["40P01", "40001", "55P03", "57014"] {
            assert_eq!(class(code), Class::Unclear, "{code}");
        }
    }

    #[test]
    fn connection_shutdown_and_resource_failures_are_unavailable() {
        for code in [
            "08000", "08006", "08001", "57P01", "57P02", "57P03", "53100", "53300", "58030",
        ] {
            assert_eq!(class(code), Class::Unavailable, "{code}");
        }
        assert_eq!(
            class("53200"),
            Class::Unclear,
            "out of memory may be the batch's"
        );
    }

    #[test]
    fn data_exceptions_are_unstorable_and_constraints_are_not() {
        // numeric out of range, invalid text, untranslatable character (NUL in jsonb)
        for code in ["22003", "22P02", "22P05", "22007", "22008"] {
            assert_eq!(class(code), Class::Unstorable, "{code}");
        }
        // foreign key, not null, unique, check
        for code in ["23503", "23502", "23505", "23514"] {
            assert_eq!(class(code), Class::Constraint, "{code}");
        }
    }

    #[test]
    fn schema_permission_and_raised_errors_are_unclear() {
        // undefined table, insufficient privilege, cardinality violation, internal error,
        // data corrupted, raise_exception
        for code in [
            "42P01", "42501", "21000", "XX000", "XX001", "55000", "P0001",
        ] {
            assert_eq!(class(code), Class::Unclear, "{code}");
        }
    }

    #[test]
    fn pool_timeouts_are_infrastructure() {
        let e = classify_pool(&PoolError::Timeout(deadpool_postgres::TimeoutType::Wait));
        assert!(e.is_transient(), "{e}");
        assert_eq!(e.failure(), Failure::Infrastructure);
        assert!(classify_pool(&PoolError::Closed).is_transient());
    }
}
