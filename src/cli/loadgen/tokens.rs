//! `loadgen --mint-tokens`: load a service that runs with INGEST_AUTH=token. One token per
//! target device is created through the store settings before the run, each device's
//! events carry its own token, and the tokens are revoked (deleted) after the run. Before
//! sending, loadgen waits until the service has loaded every token (its cache reloads every
//! REGISTRY_REFRESH_INTERVAL), probing with an empty body: 400 means authenticated and
//! nothing queued, 401 not loaded yet.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nsready::app::{AppError, StoreTask, with_store};
use nsready::collector::auth;
use nsready::config::Settings;
use nsready::store::{NewToken, Revoke, Store};
use uuid::Uuid;

use super::Target;

/// Longest wait for the service to load the new tokens.
const SEEN_WITHIN: Duration = Duration::from_secs(120);

struct CreateAll(Vec<NewToken>);
impl StoreTask for CreateAll {
    type Output = ();
    async fn run<S: Store>(self, store: S) -> Result<(), AppError> {
        for t in &self.0 {
            store.create_token(t).await?;
        }
        Ok(())
    }
}

struct RevokeAll(Vec<Uuid>);
impl StoreTask for RevokeAll {
    type Output = ();
    async fn run<S: Store>(self, store: S) -> Result<(), AppError> {
        for id in self.0 {
            store.revoke_tokens(Revoke::Id(id)).await?;
        }
        Ok(())
    }
}

/// Creates a token per target (kept in the target); returns the token ids to revoke.
pub(super) async fn mint(s: &Settings, targets: &mut [Target]) -> anyhow::Result<Vec<Uuid>> {
    let mut rows = Vec::with_capacity(targets.len());
    for t in targets.iter_mut() {
        let token = auth::generate()?;
        rows.push(NewToken {
            id: Uuid::new_v4(),
            device_id: t.device,
            token_hash: auth::hash(&token),
            expires_at: None,
        });
        t.token = Some(token);
    }
    let ids = rows.iter().map(|r| r.id).collect();
    with_store(s, CreateAll(rows))
        .await
        .context("cannot create the device tokens (--mint-tokens)")?;
    Ok(ids)
}

/// Waits until the service at `url` (an ingest route) accepts every target's token.
pub(super) async fn wait_seen(
    client: &reqwest::Client,
    url: &str,
    targets: &[Target],
) -> anyhow::Result<()> {
    let start = Instant::now();
    for t in targets {
        let Some(token) = &t.token else { continue };
        loop {
            let status = client
                .post(url)
                .bearer_auth(token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body("{}")
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            match status {
                401 if start.elapsed() < SEEN_WITHIN => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                401 => bail!(
                    "the service did not accept the minted tokens within {} s: does it run \
                     with INGEST_AUTH=token on the same store?",
                    SEEN_WITHIN.as_secs()
                ),
                _ => break,
            }
        }
    }
    Ok(())
}

/// Deletes the run's tokens.
pub(super) async fn revoke(s: &Settings, ids: Vec<Uuid>) -> anyhow::Result<()> {
    with_store(s, RevokeAll(ids))
        .await
        .context("cannot revoke the minted tokens")
}
