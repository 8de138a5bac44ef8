//! The `tokens` table of the SQLite store: create, list, revoke (delete) and the load the
//! collector's token cache refreshes from. Times are stored in the store's fixed text
//! format ([`format_time`]).

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::{classify, format_time, parse_time, parse_uuid};
use crate::store::{NewToken, Revoke, StoreError, TokenGrant, TokenInfo};

/// Inserts a token row after checking that its device exists (a clear error instead of
/// SQLite's bare foreign-key message).
pub(super) fn create(conn: &Connection, t: &NewToken) -> Result<TokenInfo, StoreError> {
    let device = t.device_id.to_string();
    let known: Option<i64> = conn
        .query_row("SELECT 1 FROM devices WHERE id = ?1", [&device], |r| {
            r.get(0)
        })
        .optional()
        .map_err(classify)?;
    if known.is_none() {
        return Err(StoreError::Invalid(format!(
            "device {device} is not in the registry (import it first: `nsready registry import`)"
        )));
    }
    let created_at = Utc::now();
    conn.execute(
        "INSERT INTO tokens (id, device_id, token_hash, expires_at, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            t.id.to_string(),
            device,
            t.token_hash,
            t.expires_at.as_ref().map(format_time),
            format_time(&created_at)
        ],
    )
    .map_err(classify)?;
    Ok(TokenInfo {
        id: t.id,
        device_id: t.device_id,
        expires_at: t.expires_at,
        created_at,
    })
}

/// Tokens without their hashes, oldest first.
pub(super) fn list(conn: &Connection, device: Option<Uuid>) -> Result<Vec<TokenInfo>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT id, device_id, expires_at, created_at FROM tokens \
             WHERE ?1 IS NULL OR device_id = ?1 ORDER BY created_at, id",
        )
        .map_err(classify)?;
    let raw = stmt
        .query_map([device.map(|d| d.to_string())], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(classify)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(classify)?;
    raw.into_iter()
        .map(|(id, device_id, expires_at, created_at)| {
            Ok(TokenInfo {
                id: parse_uuid(&id)?,
                device_id: parse_uuid(&device_id)?,
                expires_at: expires_at.as_deref().map(parse_time).transpose()?,
                created_at: parse_time(&created_at)?,
            })
        })
        .collect()
}

/// Deletes the token(s); returns how many rows went.
pub(super) fn revoke(conn: &Connection, which: Revoke) -> Result<u64, StoreError> {
    let n = match which {
        Revoke::Id(id) => conn.execute("DELETE FROM tokens WHERE id = ?1", [id.to_string()]),
        Revoke::Device(d) => {
            conn.execute("DELETE FROM tokens WHERE device_id = ?1", [d.to_string()])
        }
    }
    .map_err(classify)?;
    Ok(n as u64)
}

/// Every token's hash, device and expiry. A row that cannot be read is skipped with an
/// error log (that token then authorizes nothing), instead of failing every refresh.
pub(super) fn load(conn: &Connection) -> Result<Vec<TokenGrant>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT token_hash, device_id, expires_at FROM tokens")
        .map_err(classify)?;
    let raw = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })
        .map_err(classify)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(classify)?;
    let mut out = Vec::with_capacity(raw.len());
    for (i, (token_hash, device, expires)) in raw.into_iter().enumerate() {
        let row = parse_uuid(&device).and_then(|device_id| {
            let expires_at: Option<DateTime<Utc>> =
                expires.as_deref().map(parse_time).transpose()?;
            Ok(TokenGrant {
                token_hash,
                device_id,
                expires_at,
            })
        });
        match row {
            Ok(g) => out.push(g),
            Err(e) => {
                tracing::error!(row = i, error = %e, "tokens: skipping a row that cannot be read")
            }
        }
    }
    Ok(out)
}
