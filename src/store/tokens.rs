//! Device tokens as the stores keep them: rows of the `tokens` table (id, device, SHA-256
//! hash of the token, expiry), never the token itself.
//!
//! Revoking a token deletes its row (the schema has no `revoked_at`; a deleted row is the
//! simplest revocation that every reader sees, and the collector's cache drops it at its
//! next refresh). The SQL lives beside each store (`sqlite/tokens.rs`, `postgres/tokens.rs`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// One token as listed: everything but its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub device_id: Uuid,
    /// None: never expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A new token's row: the id is chosen by the caller, the hash is the SHA-256 hex of the
/// token text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewToken {
    pub id: Uuid,
    pub device_id: Uuid,
    pub token_hash: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What the collector's token cache holds per token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenGrant {
    /// SHA-256 hex of the token.
    pub token_hash: String,
    pub device_id: Uuid,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Which tokens to revoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoke {
    /// One token, by its id.
    Id(Uuid),
    /// Every token of a device.
    Device(Uuid),
}
