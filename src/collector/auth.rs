//! Ingest authentication: who may write for which device (`INGEST_AUTH`).
//!
//! [`Auth`] is the mode in force: open, one shared bearer token (`INGEST_AUTH_TOKEN`), or
//! per-device tokens. Per-device tokens are random (256 bits from the OS, [`generate`]),
//! shown once by `nsready token create`, and stored only as their SHA-256 ([`hash`]) in the
//! `tokens` table. The collector never asks the database per request: a [`TokenCache`]
//! maps hash → (device, expiry) in memory and is reloaded every `REGISTRY_REFRESH_INTERVAL`
//! by a task spawned through the app's [`Shutdown`], so a revocation (a deleted row) is
//! seen within that interval; expiry is checked against the clock at each request. A
//! failed reload keeps the last good set (logged); the first load happens at start and,
//! when it fails, the collector refuses to start (never open by accident).
//!
//! Looking a token up by its hash does not leak the token through timing: what varies with
//! the lookup is the SHA-256 of the presented value, which an attacker cannot steer
//! towards a stored one. [`check_exposure`] is protected mode: no authentication
//! configured and a non-loopback address refuses to start.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{HeaderMap, header};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::ApiError;
use crate::config::{HttpArgs, IngestAuth, Secret, Settings};
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError, TokenGrant};

/// Prefix of every device token: makes them recognisable to secret scanners and people.
pub const TOKEN_PREFIX: &str = "nsr_";

/// Random bytes per token (256 bits; the issue asks for at least 128).
const TOKEN_BYTES: usize = 32;

/// Errors of token generation.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The operating system's random source failed.
    #[error("the operating system's random number source failed: {0}")]
    Random(getrandom::Error),
}

/// A fresh device token: `nsr_` and 64 hex digits of OS randomness.
///
/// # Errors
/// `Random` when the OS random source fails (never a weaker fallback).
pub fn generate() -> Result<String, TokenError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(TokenError::Random)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// The stored form of a token: SHA-256 of its text, lower-case hex.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The bearer credential of a request: `Authorization: Bearer <token>`, scheme compared
/// case-insensitively (RFC 9110 §11.1); None when absent or another scheme.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

/// Who a request may write for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Principal {
    /// Any device (open ingest, or the shared token).
    Anyone,
    /// Only this device (a per-device token).
    Device(Uuid),
}

impl Principal {
    /// True when an event for `device` may be written.
    pub fn allows(self, device: Uuid) -> bool {
        match self {
            Principal::Anyone => true,
            Principal::Device(d) => d == device,
        }
    }
}

/// The authentication in force.
#[derive(Clone)]
pub enum Auth {
    /// No credential needed.
    Open,
    /// One bearer token for every client.
    Shared(Secret),
    /// Per-device tokens, from the cache.
    Tokens(Arc<TokenCache>),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::Open => "Open",
            Auth::Shared(_) => "Shared(***)",
            Auth::Tokens(_) => "Tokens",
        })
    }
}

impl Auth {
    /// Checks a request's credential at time `now`.
    ///
    /// # Errors
    /// `Unauthorized` when a credential is needed and missing, unknown or expired.
    pub fn check(&self, headers: &HeaderMap, now: DateTime<Utc>) -> Result<Principal, ApiError> {
        match self {
            Auth::Open => Ok(Principal::Anyone),
            Auth::Shared(want) => {
                let got = bearer(headers).unwrap_or_default();
                if constant_time_eq(got.as_bytes(), want.expose().as_bytes()) {
                    Ok(Principal::Anyone)
                } else {
                    Err(ApiError::Unauthorized)
                }
            }
            Auth::Tokens(cache) => bearer(headers)
                .and_then(|t| cache.device_of(t, now))
                .map(Principal::Device)
                .ok_or(ApiError::Unauthorized),
        }
    }
}

impl Auth {
    /// Checks an MQTT CONNECT's login at time `now`: `shared` wants the shared token as the
    /// password (any username); `token` wants a device token as the password and, when a
    /// username is given, the token's device id as the username.
    ///
    /// # Errors
    /// `Unauthorized` when a credential is needed and missing, unknown, expired or not the
    /// username's.
    pub fn check_login(
        &self,
        username: Option<&str>,
        password: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Principal, ApiError> {
        let password = password.unwrap_or_default();
        match self {
            Auth::Open => Ok(Principal::Anyone),
            Auth::Shared(want) => constant_time_eq(password.as_bytes(), want.expose().as_bytes())
                .then_some(Principal::Anyone)
                .ok_or(ApiError::Unauthorized),
            Auth::Tokens(cache) => {
                let device = cache
                    .device_of(password, now)
                    .ok_or(ApiError::Unauthorized)?;
                match username.filter(|u| !u.is_empty()) {
                    Some(u) if u.parse::<Uuid>().ok() != Some(device) => {
                        Err(ApiError::Unauthorized)
                    }
                    _ => Ok(Principal::Device(device)),
                }
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One cached token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Grant {
    device_id: Uuid,
    expires_at: Option<DateTime<Utc>>,
}

/// The tokens the collector knows: SHA-256 → device and expiry, swapped whole on reload.
#[derive(Debug, Default)]
pub struct TokenCache {
    grants: RwLock<Arc<HashMap<[u8; 32], Grant>>>,
}

impl TokenCache {
    /// A cache holding `grants` (rows whose hash is not 64 hex digits are skipped).
    pub fn new(grants: Vec<TokenGrant>) -> TokenCache {
        let cache = TokenCache::default();
        cache.replace(grants);
        cache
    }

    /// Number of tokens held.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn current(&self) -> Arc<HashMap<[u8; 32], Grant>> {
        match self.grants.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Swaps in a freshly loaded set.
    pub fn replace(&self, grants: Vec<TokenGrant>) {
        let mut map = HashMap::with_capacity(grants.len());
        for g in grants {
            let mut key = [0u8; 32];
            if hex::decode_to_slice(&g.token_hash, &mut key).is_err() {
                tracing::error!(device_id = %g.device_id, "tokens: skipping a row whose hash is not SHA-256 hex");
                continue;
            }
            map.insert(
                key,
                Grant {
                    device_id: g.device_id,
                    expires_at: g.expires_at,
                },
            );
        }
        let map = Arc::new(map);
        match self.grants.write() {
            Ok(mut g) => *g = map,
            Err(p) => *p.into_inner() = map,
        }
    }

    /// The device a token authorizes at `now`; None when unknown or expired.
    pub fn device_of(&self, token: &str, now: DateTime<Utc>) -> Option<Uuid> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let grant = self.current().get(&key).copied()?;
        match grant.expires_at {
            Some(at) if at <= now => None,
            _ => Some(grant.device_id),
        }
    }

    /// Reloads from the store; on failure the last set stays.
    ///
    /// # Errors
    /// The store's error.
    pub async fn reload<S: Store>(&self, store: &S) -> Result<(), StoreError> {
        let grants = store.load_tokens().await?;
        self.replace(grants);
        Ok(())
    }

    /// Reloads every `every` until shutdown (tracked by `shutdown`).
    pub fn spawn_refresh<S: Store>(
        self: &Arc<Self>,
        store: S,
        every: Duration,
        shutdown: &Shutdown,
    ) {
        let cache = Arc::clone(self);
        let sd = shutdown.clone();
        shutdown.spawn(async move {
            let mut failing = false;
            loop {
                tokio::select! {
                    () = sd.wait() => break,
                    () = tokio::time::sleep(every) => {}
                }
                match cache.reload(&store).await {
                    Ok(()) => {
                        if failing {
                            tracing::info!(tokens = cache.len(), "token cache reloaded again");
                        }
                        failing = false;
                    }
                    Err(e) => {
                        // The last set stays: revocations are not seen until the store answers.
                        tracing::warn!(error = %e, "cannot reload the token cache; keeping the last set");
                        failing = true;
                    }
                }
            }
        });
    }
}

/// What protected mode says about the configured exposure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// Authentication is on, or the address is loopback.
    Safe,
    /// INGEST_AUTH=none on a non-loopback address: start, with a warning.
    OpenOnPurpose,
}

/// Protected mode refused to start; the message names every fix.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to start: SERVICE_HOST={host} is not a loopback address and no ingest \
     authentication is configured, so anyone who can reach the port could write for any \
     device. Set INGEST_AUTH=token (per-device tokens, `nsready token create`) or \
     INGEST_AUTH=shared with INGEST_AUTH_TOKEN; or INGEST_AUTH=none to accept open ingest on \
     purpose; or SERVICE_HOST=127.0.0.1"
)]
pub struct Unprotected {
    pub host: String,
}

/// Protected mode: `mode` is the authentication in force (None = nothing configured),
/// `host` the listen address.
///
/// # Errors
/// `Unprotected` when nothing is configured and `host` is not loopback.
pub fn check_exposure(mode: Option<IngestAuth>, host: &str) -> Result<Exposure, Unprotected> {
    let loopback = is_loopback(host);
    match mode {
        Some(IngestAuth::Shared | IngestAuth::Token) => Ok(Exposure::Safe),
        _ if loopback => Ok(Exposure::Safe),
        Some(IngestAuth::None) => Ok(Exposure::OpenOnPurpose),
        None => Err(Unprotected {
            host: host.to_string(),
        }),
    }
}

/// True for `localhost` and loopback IP addresses (127.0.0.0/8, ::1, bracketed or not).
/// Any other name counts as reachable from outside (it may resolve to anything).
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim();
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = h
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(h);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Protected mode for the configured listener: refuses open ingest beyond loopback unless
/// INGEST_AUTH=none says so, and then warns once (`App::build`, roles with a collector).
///
/// # Errors
/// `Unprotected` naming the fixes.
pub fn protected_mode(http: &HttpArgs) -> Result<(), Unprotected> {
    let host = &http.service_host;
    if check_exposure(http.auth_mode(), host)? == Exposure::OpenOnPurpose {
        tracing::warn!(
            service_host = %host,
            "INGEST_AUTH=none on a non-loopback address: ingest is open, anyone who can \
             reach the port can write for any device"
        );
    }
    Ok(())
}

/// Why the configured authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("INGEST_AUTH=shared needs INGEST_AUTH_TOKEN")]
    NoSharedToken,
    #[error(
        "INGEST_AUTH=token: cannot load the device tokens ({0}); refusing to start rather \
         than accept ingest it cannot authenticate"
    )]
    Load(StoreError),
}

/// The authentication of a role with a collector. With INGEST_AUTH=token the tokens are
/// loaded now (retrying while the database is unreachable, DB_CONNECT_RETRIES times) and
/// reloaded every REGISTRY_REFRESH_INTERVAL by a task tracked by `shutdown`; when they
/// cannot be loaded the service refuses to start (never open by accident, and a 503 for
/// every request would only hide the cause).
///
/// # Errors
/// `NoSharedToken`, or `Load` with the store's error.
pub async fn setup<S: Store>(
    store: &S,
    settings: &Settings,
    shutdown: &Shutdown,
) -> Result<Auth, SetupError> {
    match settings.http.auth_mode() {
        None | Some(IngestAuth::None) => Ok(Auth::Open),
        Some(IngestAuth::Shared) => match &settings.http.ingest_auth_token {
            Some(t) => Ok(Auth::Shared(t.clone())),
            None => Err(SetupError::NoSharedToken),
        },
        Some(IngestAuth::Token) => {
            let tries = settings.db.db_connect_retries;
            let mut attempt = 0;
            let grants = loop {
                attempt += 1;
                match store.load_tokens().await {
                    Ok(g) => break g,
                    Err(e) if e.is_transient() && attempt < tries => {
                        tracing::warn!(attempt, tries, error = %e, "database not ready; retrying the token load");
                        tokio::time::sleep(settings.db.db_connect_delay).await;
                    }
                    Err(e) => return Err(SetupError::Load(e)),
                }
            };
            let cache = Arc::new(TokenCache::new(grants));
            tracing::info!(tokens = cache.len(), "ingest needs per-device tokens");
            cache.spawn_refresh(
                store.clone(),
                settings.worker.registry_refresh_interval,
                shutdown,
            );
            Ok(Auth::Tokens(cache))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(auth) {
            h.insert(header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn tokens_are_long_random_and_stored_as_sha256() {
        let a = generate().expect("random");
        let b = generate().expect("random");
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        let h = hash(&a);
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&a[TOKEN_PREFIX.len()..]));
        // Known vector: SHA-256("abc").
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_others_are_not_bearer() {
        for v in ["Bearer abc", "bearer abc", "BEARER   abc ", "bEaReR abc"] {
            assert_eq!(bearer(&headers(v)), Some("abc"), "{v}");
        }
        for v in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "abc", ""] {
            assert_eq!(bearer(&headers(v)), None, "{v}");
        }
    }

    #[test]
    fn a_token_authorizes_its_device_until_it_expires() {
        let device = Uuid::new_v4();
        let now = Utc::now();
        let cache = TokenCache::new(vec![
            TokenGrant {
                token_hash: hash("live"),
                device_id: device,
                expires_at: Some(now + chrono::Duration::hours(1)),
            },
            TokenGrant {
                token_hash: hash("old"),
                device_id: device,
                expires_at: Some(now - chrono::Duration::seconds(1)),
            },
            TokenGrant {
                token_hash: "not hex".into(),
                device_id: device,
                expires_at: None,
            },
        ]);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.device_of("live", now), Some(device));
        assert_eq!(
            cache.device_of("live", now + chrono::Duration::hours(2)),
            None
        );
        assert_eq!(cache.device_of("old", now), None);
        assert_eq!(cache.device_of("unknown", now), None);
        let auth = Auth::Tokens(Arc::new(cache));
        let p = auth
            .check(&headers("bearer live"), now)
            .expect("valid token");
        assert_eq!(p, Principal::Device(device));
        assert!(p.allows(device) && !p.allows(Uuid::new_v4()));
        assert!(auth.check(&headers("Bearer old"), now).is_err());
        assert!(auth.check(&HeaderMap::new(), now).is_err());
    }

    #[test]
    fn shared_mode_compares_the_whole_token() {
        let auth = Auth::Shared("s3cret".parse().unwrap_or_default());
        let now = Utc::now();
        assert_eq!(
            auth.check(&headers("bearer s3cret"), now).ok(),
            Some(Principal::Anyone)
        );
        for v in ["Bearer s3cre", "Bearer s3cret2", "Basic s3cret", ""] {
            assert!(auth.check(&headers(v), now).is_err(), "{v}");
        }
        assert_eq!(format!("{auth:?}"), "Shared(***)");
    }

    #[test]
    fn protected_mode_refuses_open_ingest_beyond_loopback() {
        for h in ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"] {
            assert!(is_loopback(h), "{h}");
            assert_eq!(check_exposure(None, h).ok(), Some(Exposure::Safe));
        }
        for h in ["0.0.0.0", "::", "10.0.0.5", "example.com"] {
            assert!(!is_loopback(h), "{h}");
            let e = check_exposure(None, h).expect_err("refused");
            let msg = e.to_string();
            for fix in [
                "INGEST_AUTH=token",
                "INGEST_AUTH=none",
                "SERVICE_HOST=127.0.0.1",
            ] {
                assert!(msg.contains(fix), "{msg}");
            }
            assert_eq!(
                check_exposure(Some(IngestAuth::None), h).ok(),
                Some(Exposure::OpenOnPurpose)
            );
            assert_eq!(
                check_exposure(Some(IngestAuth::Token), h).ok(),
                Some(Exposure::Safe)
            );
            assert_eq!(
                check_exposure(Some(IngestAuth::Shared), h).ok(),
                Some(Exposure::Safe)
            );
        }
    }
}
