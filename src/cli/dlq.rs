//! `nsready dlq (list|show|replay|purge)`: the operator's view of dead letters.
//!
//! Replay publishes the original payload back onto the ingest subject with a fresh message
//! id (so the duplicate window does not swallow it) and removes the dead letter only after
//! the queue acknowledged the new copy. A replayed message that is still bad goes through
//! the normal policy again and comes back as a new dead letter: replay never loops.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};
use nsready::app::{AppError, DeploymentTask, with_deployment};
use nsready::config::Settings;
use nsready::queue::{DeadLetter, Outgoing, Queue};
use nsready::store::Store;

/// Most dead letters a command looks at.
const SCAN_LIMIT: usize = 1_000_000;

#[derive(Args, Debug, Clone, Default)]
pub struct Filter {
    /// Only dead letters whose error type or reason contains this text.
    #[arg(long)]
    reason: Option<String>,
    /// Only dead letters of this device.
    #[arg(long)]
    device: Option<String>,
    /// Only these DLQ sequences.
    seqs: Vec<u64>,
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters with counts by error type.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: headers and payload.
    Show {
        /// DLQ sequence.
        seq: u64,
    },
    /// Publish dead letters back onto the ingest subject (all matching the filter).
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Say what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters (all matching the filter).
    Purge {
        #[command(flatten)]
        filter: Filter,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

fn device_of(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let ev = v.get("event").unwrap_or(&v);
    ev.get("device_id")?.as_str().map(str::to_string)
}

impl Filter {
    fn matches(&self, d: &DeadLetter) -> bool {
        if !self.seqs.is_empty() && !self.seqs.contains(&d.seq) {
            return false;
        }
        if let Some(r) = &self.reason {
            if !d.error_type.contains(r.as_str()) && !d.reason.contains(r.as_str()) {
                return false;
            }
        }
        if let Some(dev) = &self.device {
            if device_of(&d.payload).as_deref() != Some(dev.as_str()) {
                return false;
            }
        }
        true
    }
}

enum Action {
    List,
    Replay { dry_run: bool },
    Purge,
}

struct Task {
    filter: Filter,
    action: Action,
}

impl DeploymentTask for Task {
    type Output = (Vec<DeadLetter>, usize);
    async fn run<Q: Queue, S: Store>(self, queue: Q, _store: S) -> Result<Self::Output, AppError> {
        let all = queue.dlq_list(0, SCAN_LIMIT).await?;
        let chosen: Vec<DeadLetter> = all.into_iter().filter(|d| self.filter.matches(d)).collect();
        let mut done = 0;
        match self.action {
            Action::List | Action::Replay { dry_run: true } => {}
            Action::Replay { dry_run: false } => {
                for d in &chosen {
                    let msg = Outgoing {
                        msg_id: format!("replay:{}:{}", d.seq, uuid::Uuid::new_v4()),
                        trace_id: d
                            .trace_id
                            .clone()
                            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                        payload: Bytes::clone(&d.payload),
                    };
                    // Remove the dead letter only once the new copy is durably queued.
                    queue.publish(msg).await?;
                    queue.dlq_remove(d.seq).await?;
                    done += 1;
                }
            }
            Action::Purge => {
                for d in &chosen {
                    queue.dlq_remove(d.seq).await?;
                    done += 1;
                }
            }
        }
        Ok((chosen, done))
    }
}

fn print_list(letters: &[DeadLetter]) {
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for d in letters {
        *by_type.entry(d.error_type.as_str()).or_default() += 1;
    }
    println!("{} dead letters", letters.len());
    for (t, n) in &by_type {
        println!("  {t:<22} {n}");
    }
    if !letters.is_empty() {
        println!(
            "\n{:>8} {:>10} {:<20} {:>9} {:<26} reason",
            "seq", "orig_seq", "error_type", "delivered", "time"
        );
    }
    for d in letters {
        let t = d.time.map(|t| t.to_rfc3339()).unwrap_or_default();
        println!(
            "{:>8} {:>10} {:<20} {:>9} {:<26} {}",
            d.seq, d.original_seq, d.error_type, d.delivered, t, d.reason
        );
    }
}

fn confirm(prompt: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    print!("{prompt} [type yes]: ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).is_ok() && line.trim() == "yes"
}

/// Runs a `dlq` subcommand.
pub async fn run(s: &Settings, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List { filter, json } => {
            let (letters, _) = with_deployment(
                s,
                Task {
                    filter,
                    action: Action::List,
                },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                print_list(&letters);
            }
        }
        DlqCommand::Show { seq } => {
            let filter = Filter {
                seqs: vec![seq],
                ..Filter::default()
            };
            let (letters, _) = with_deployment(
                s,
                Task {
                    filter,
                    action: Action::List,
                },
            )
            .await?;
            let d = letters
                .first()
                .with_context(|| format!("no dead letter with sequence {seq}"))?;
            println!("{}", serde_json::to_string_pretty(d)?);
            println!("payload:\n{}", String::from_utf8_lossy(&d.payload));
        }
        DlqCommand::Replay { filter, dry_run } => {
            let (letters, done) = with_deployment(
                s,
                Task {
                    filter,
                    action: Action::Replay { dry_run },
                },
            )
            .await?;
            if dry_run {
                print_list(&letters);
                println!(
                    "\ndry run: {} dead letters would be replayed",
                    letters.len()
                );
            } else {
                println!("replayed {done} dead letters");
            }
        }
        DlqCommand::Purge { filter, yes } => {
            if !yes && !confirm("Delete the matching dead letters for good?") {
                anyhow::bail!("not confirmed: pass --yes to purge without asking");
            }
            let (_, done) = with_deployment(
                s,
                Task {
                    filter,
                    action: Action::Purge,
                },
            )
            .await?;
            println!("purged {done} dead letters");
        }
    }
    Ok(ExitCode::SUCCESS)
}
