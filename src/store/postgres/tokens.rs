//! The `tokens` table of the PostgreSQL store: create, list, revoke (delete) and the load
//! the collector's token cache refreshes from.

use deadpool_postgres::Client;
use uuid::Uuid;

use super::error::classify;
use crate::store::{NewToken, Revoke, StoreError, TokenGrant, TokenInfo};

/// Inserts the row only when the device exists (one statement): no row back means the
/// device is unknown, reported by id instead of the bare foreign-key message.
pub(super) async fn create(client: &Client, t: &NewToken) -> Result<TokenInfo, StoreError> {
    let row = client
        .query_opt(
            "INSERT INTO tokens (id, device_id, token_hash, expires_at) \
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM devices WHERE id = $2) \
             RETURNING created_at",
            &[&t.id, &t.device_id, &t.token_hash, &t.expires_at],
        )
        .await
        .map_err(|e| classify(&e))?;
    let Some(row) = row else {
        return Err(StoreError::Invalid(format!(
            "device {} is not in the registry (import it first: `nsready registry import`)",
            t.device_id
        )));
    };
    Ok(TokenInfo {
        id: t.id,
        device_id: t.device_id,
        expires_at: t.expires_at,
        created_at: row.try_get(0).map_err(|e| classify(&e))?,
    })
}

/// Tokens without their hashes, oldest first.
pub(super) async fn list(
    client: &Client,
    device: Option<Uuid>,
) -> Result<Vec<TokenInfo>, StoreError> {
    let rows = client
        .query(
            "SELECT id, device_id, expires_at, created_at FROM tokens \
             WHERE $1::uuid IS NULL OR device_id = $1 ORDER BY created_at, id",
            &[&device],
        )
        .await
        .map_err(|e| classify(&e))?;
    rows.iter()
        .map(|r| {
            Ok(TokenInfo {
                id: r.try_get(0)?,
                device_id: r.try_get(1)?,
                expires_at: r.try_get(2)?,
                created_at: r.try_get(3)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(|e| classify(&e))
}

/// Deletes the token(s); returns how many rows went.
pub(super) async fn revoke(client: &Client, which: Revoke) -> Result<u64, StoreError> {
    match which {
        Revoke::Id(id) => {
            client
                .execute("DELETE FROM tokens WHERE id = $1", &[&id])
                .await
        }
        Revoke::Device(d) => {
            client
                .execute("DELETE FROM tokens WHERE device_id = $1", &[&d])
                .await
        }
    }
    .map_err(|e| classify(&e))
}

/// Every token's hash, device and expiry. A row that cannot be read is skipped with an
/// error log (that token then authorizes nothing).
pub(super) async fn load(client: &Client) -> Result<Vec<TokenGrant>, StoreError> {
    let stmt = client
        .prepare_cached("SELECT token_hash, device_id, expires_at FROM tokens")
        .await
        .map_err(|e| classify(&e))?;
    let rows = client.query(&stmt, &[]).await.map_err(|e| classify(&e))?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let read = || -> Result<TokenGrant, tokio_postgres::Error> {
            Ok(TokenGrant {
                token_hash: r.try_get(0)?,
                device_id: r.try_get(1)?,
                expires_at: r.try_get(2)?,
            })
        };
        match read() {
            Ok(g) => out.push(g),
            Err(e) => {
                tracing::error!(row = i, error = %e, "tokens: skipping a row that cannot be read")
            }
        }
    }
    Ok(out)
}
