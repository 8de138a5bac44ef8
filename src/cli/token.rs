//! `nsready token (create|list|revoke)`: per-device ingest tokens (INGEST_AUTH=token).
//!
//! `create` prints the token once; only its SHA-256 is stored, so a lost token cannot be
//! shown again (create another, revoke the old). `list` never prints tokens or hashes.
//! `revoke` deletes the row(s); a running collector stops accepting the token within
//! REGISTRY_REFRESH_INTERVAL.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use nsready::app::{AppError, StoreTask, with_existing_store, with_store};
use nsready::collector::auth;
use nsready::config::{Settings, parse_duration};
use nsready::store::{NewToken, Revoke, Store, TokenInfo};
use uuid::Uuid;

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token for one device and print it (once: only its hash is stored).
    Create {
        /// The device the token authorizes (must be in the registry).
        #[arg(long)]
        device: Uuid,
        /// Lifetime (90d, 12h, ...); without it the token does not expire.
        #[arg(long, value_parser = parse_duration)]
        expires: Option<Duration>,
        /// Print {"id","device_id","token","expires_at"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (ids, devices, expiry; never the tokens).
    List {
        /// Only this device's tokens.
        #[arg(long)]
        device: Option<Uuid>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke one token by id, or every token of a device.
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct RevokeArgs {
    /// The token's id (from `token list`).
    token_id: Option<Uuid>,
    /// Revoke every token of this device.
    #[arg(long)]
    device: Option<Uuid>,
}

struct Create(NewToken);
impl StoreTask for Create {
    type Output = TokenInfo;
    async fn run<S: Store>(self, store: S) -> Result<TokenInfo, AppError> {
        store.migrate().await?;
        Ok(store.create_token(&self.0).await?)
    }
}

struct List(Option<Uuid>);
impl StoreTask for List {
    type Output = Vec<TokenInfo>;
    async fn run<S: Store>(self, store: S) -> Result<Vec<TokenInfo>, AppError> {
        Ok(store.list_tokens(self.0).await?)
    }
}

struct RevokeTask(Revoke);
impl StoreTask for RevokeTask {
    type Output = u64;
    async fn run<S: Store>(self, store: S) -> Result<u64, AppError> {
        Ok(store.revoke_tokens(self.0).await?)
    }
}

/// Creates a token for `device` without expiry and returns its text (`serve --demo` with
/// INGEST_AUTH=token, so its printed curl works as printed).
pub async fn mint(s: &Settings, device: Uuid) -> anyhow::Result<String> {
    let token = auth::generate()?;
    let new = NewToken {
        id: Uuid::new_v4(),
        device_id: device,
        token_hash: auth::hash(&token),
        expires_at: None,
    };
    with_store(s, Create(new))
        .await
        .context("cannot create the demo token")?;
    Ok(token)
}

fn expiry(t: &TokenInfo) -> String {
    t.expires_at
        .map(|e| e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "never".into())
}

/// `nsready token ...`.
pub async fn run(s: &Settings, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            device,
            expires,
            json,
        } => {
            let expires_at = match expires {
                None => None,
                Some(d) if d.is_zero() => bail!("--expires must be longer than 0"),
                Some(d) => Some(
                    chrono::Duration::from_std(d)
                        .ok()
                        .and_then(|d| chrono::Utc::now().checked_add_signed(d))
                        .context("--expires is too far in the future")?,
                ),
            };
            let token = auth::generate()?;
            let new = NewToken {
                id: Uuid::new_v4(),
                device_id: device,
                token_hash: auth::hash(&token),
                expires_at,
            };
            let info = with_store(s, Create(new))
                .await
                .context("cannot create the token")?;
            if json {
                let out = serde_json::json!({
                    "id": info.id,
                    "device_id": info.device_id,
                    "token": token,
                    "expires_at": info.expires_at,
                });
                println!("{out}");
            } else {
                println!(
                    "token {} for device {} (expires: {})",
                    info.id,
                    info.device_id,
                    expiry(&info)
                );
                println!("\n{token}\n");
                println!(
                    "Shown once: only its hash is stored. Devices send it as \
                     `Authorization: Bearer <token>` (INGEST_AUTH=token)."
                );
            }
        }
        TokenCommand::List { device, json } => {
            let tokens = with_existing_store(s, List(device)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                println!("{:<38} {:<38} {:<22} created", "id", "device_id", "expires");
                for t in &tokens {
                    println!(
                        "{:<38} {:<38} {:<22} {}",
                        t.id,
                        t.device_id,
                        expiry(t),
                        t.created_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    );
                }
                if tokens.is_empty() {
                    println!("(no tokens)");
                }
            }
        }
        TokenCommand::Revoke(RevokeArgs { token_id, device }) => {
            let which = match (token_id, device) {
                (Some(id), _) => Revoke::Id(id),
                (None, Some(d)) => Revoke::Device(d),
                (None, None) => bail!("give a TOKEN_ID or --device"),
            };
            let n = with_existing_store(s, RevokeTask(which)).await?;
            if n == 0 {
                eprintln!("no such token");
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "revoked {n} token(s); running collectors refuse them within \
                 REGISTRY_REFRESH_INTERVAL"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
