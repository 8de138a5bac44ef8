//! `nsready dlq (list|show|replay|purge)`: the operator's view of dead letters.
//!
//! Every subcommand takes the same filter: error type or reason text, device, time of the
//! dead letter (`--since` / `--until`, RFC 3339 or relative like `1h`), and DLQ sequences.
//! Replay publishes the original payload back onto the ingest subject with a fresh message
//! id (so the duplicate window does not swallow it) and removes the dead letter only after
//! the queue acknowledged the new copy. The new copy is a new message with a new sequence
//! and a delivery count of 1: if it is still bad it goes through the normal policy
//! (retries, then the DLQ) and comes back as one new dead letter. Replay never loops, and
//! replaying again works the same way.
//!
//! In embedded mode these commands take the DATA_DIR lock, so `nsready serve` must be
//! stopped first.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use nsready::app::{AppError, DeploymentTask, with_deployment};
use nsready::config::{Settings, parse_duration};
use nsready::queue::{DeadLetter, Outgoing, Queue};
use nsready::store::Store;
use serde_json::{Value, json};

/// Most dead letters a command looks at.
const SCAN_LIMIT: usize = 1_000_000;

#[derive(Args, Debug, Clone, Default)]
pub struct Filter {
    /// Only dead letters whose error type or reason contains this text
    /// (e.g. device_not_found).
    #[arg(long)]
    reason: Option<String>,
    /// Only dead letters of this device (device_id of the event).
    #[arg(long)]
    device: Option<String>,
    /// Only dead letters written at or after this time: RFC 3339
    /// (2025-11-14T12:00:00Z) or an age (30m, 1h, 24h).
    #[arg(long, value_parser = parse_time)]
    since: Option<DateTime<Utc>>,
    /// Only dead letters written before this time: RFC 3339 or an age (30m, 1h).
    #[arg(long, value_parser = parse_time)]
    until: Option<DateTime<Utc>>,
    /// Only these DLQ sequences (as `dlq list` shows them).
    seqs: Vec<u64>,
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead letters (oldest first) with counts by error type.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Print JSON: {"count", "by_error_type", "dead_letters": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: reason, error type, attempts, headers and payload.
    Show {
        /// DLQ sequence.
        seq: u64,
        /// Print JSON (the payload as JSON when it is JSON).
        #[arg(long)]
        json: bool,
    },
    /// Publish dead letters back onto the ingest subject: all of them, those matching the
    /// filter, or the given sequences. Still-bad ones come back as new dead letters.
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Say what would be replayed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead letters for good (all, or those matching the filter); asks first.
    Purge {
        #[command(flatten)]
        filter: Filter,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long)]
        yes: bool,
    },
}

/// An RFC 3339 time, or an age counted back from now (`90s`, `30m`, `1h`, `24h`).
fn parse_time(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw.trim()) {
        return Ok(t.to_utc());
    }
    let age = parse_duration(raw).map_err(|_| {
        format!("`{raw}` is neither an RFC 3339 time (2025-11-14T12:00:00Z) nor an age (30m, 1h)")
    })?;
    let age = chrono::Duration::from_std(age).map_err(|_| format!("`{raw}` is too long ago"))?;
    Utc::now()
        .checked_sub_signed(age)
        .ok_or_else(|| format!("`{raw}` is too long ago"))
}

fn device_of(payload: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(payload).ok()?;
    let ev = v.get("event").unwrap_or(&v);
    ev.get("device_id")?.as_str().map(str::to_string)
}

impl Filter {
    fn matches(&self, d: &DeadLetter) -> bool {
        if !self.seqs.is_empty() && !self.seqs.contains(&d.seq) {
            return false;
        }
        if let Some(r) = &self.reason
            && !d.error_type.contains(r.as_str())
            && !d.reason.contains(r.as_str())
        {
            return false;
        }
        if let Some(dev) = &self.device
            && device_of(&d.payload).as_deref() != Some(dev.as_str())
        {
            return false;
        }
        if let Some(since) = self.since
            && d.time.is_none_or(|t| t < since)
        {
            return false;
        }
        if let Some(until) = self.until
            && d.time.is_none_or(|t| t >= until)
        {
            return false;
        }
        true
    }
}

enum Action {
    List,
    /// One dead letter, read without scanning the whole DLQ.
    Show(u64),
    Replay {
        dry_run: bool,
    },
    Purge,
}

struct Task {
    filter: Filter,
    action: Action,
}

impl DeploymentTask for Task {
    type Output = (Vec<DeadLetter>, usize);
    async fn run<Q: Queue, S: Store>(self, queue: Q, _store: S) -> Result<Self::Output, AppError> {
        if let Action::Show(seq) = self.action {
            let one = queue.dlq_list(seq, 1).await?;
            return Ok((one.into_iter().filter(|d| d.seq == seq).collect(), 0));
        }
        let all = queue.dlq_list(0, SCAN_LIMIT).await?;
        let chosen: Vec<DeadLetter> = all.into_iter().filter(|d| self.filter.matches(d)).collect();
        let mut done = 0;
        match self.action {
            Action::List | Action::Show(_) | Action::Replay { dry_run: true } => {}
            Action::Replay { dry_run: false } => {
                for d in &chosen {
                    let msg = Outgoing {
                        // Fresh per replay: the duplicate window must not swallow it, and a
                        // second replay of the same payload is a new message again.
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

fn by_error_type(letters: &[DeadLetter]) -> BTreeMap<&str, usize> {
    let mut by_type: BTreeMap<&str, usize> = BTreeMap::new();
    for d in letters {
        *by_type.entry(d.error_type.as_str()).or_default() += 1;
    }
    by_type
}

fn print_list(letters: &[DeadLetter]) {
    println!("{} dead letters", letters.len());
    for (t, n) in by_error_type(letters) {
        println!("  {t:<22} {n}");
    }
    if !letters.is_empty() {
        println!(
            "\n{:>8} {:>10} {:<20} {:>9} {:<20} {:<36} reason",
            "seq", "orig_seq", "error_type", "attempts", "time", "device"
        );
    }
    for d in letters {
        let t = d
            .time
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .unwrap_or_else(|| "-".into());
        let device = device_of(&d.payload).unwrap_or_else(|| "-".into());
        println!(
            "{:>8} {:>10} {:<20} {:>9} {:<20} {:<36} {}",
            d.seq, d.original_seq, d.error_type, d.delivered, t, device, d.reason
        );
    }
}

/// One dead letter as JSON; `with_payload` adds the payload (as JSON when it is JSON).
fn letter_json(d: &DeadLetter, with_payload: bool) -> Value {
    let mut v = json!({
        "seq": d.seq,
        "original_seq": d.original_seq,
        "error_type": d.error_type,
        "reason": d.reason,
        "attempts": d.delivered,
        "trace_id": d.trace_id,
        "time": d.time,
        "device_id": device_of(&d.payload),
    });
    if with_payload {
        v["payload"] = serde_json::from_slice(&d.payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&d.payload).into_owned()));
    }
    v
}

fn print_show(d: &DeadLetter) {
    println!("dead letter {}", d.seq);
    println!("  error type     {}", d.error_type);
    println!("  reason         {}", d.reason);
    let plural = if d.delivered == 1 {
        "delivery"
    } else {
        "deliveries"
    };
    println!("  attempts       {} {plural}", d.delivered);
    println!("headers");
    println!("  original seq   {}", d.original_seq);
    println!("  trace id       {}", d.trace_id.as_deref().unwrap_or("-"));
    println!(
        "  dead at        {}",
        d.time
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_else(|| "-".into())
    );
    println!(
        "  device         {}",
        device_of(&d.payload).unwrap_or_else(|| "-".into())
    );
    println!("payload");
    match serde_json::from_slice::<Value>(&d.payload) {
        Ok(v) => println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        ),
        Err(_) => println!("{}", String::from_utf8_lossy(&d.payload)),
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
                let doc = json!({
                    "count": letters.len(),
                    "by_error_type": by_error_type(&letters),
                    "dead_letters": letters.iter().map(|d| letter_json(d, false)).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print_list(&letters);
            }
        }
        DlqCommand::Show { seq, json } => {
            let (letters, _) = with_deployment(
                s,
                Task {
                    filter: Filter::default(),
                    action: Action::Show(seq),
                },
            )
            .await?;
            let d = letters
                .first()
                .with_context(|| format!("no dead letter with sequence {seq}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letter_json(d, true))?);
            } else {
                print_show(d);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(seq: u64, error_type: &str, device: &str, time: &str) -> DeadLetter {
        DeadLetter {
            seq,
            original_seq: seq + 100,
            error_type: error_type.into(),
            reason: format!("{error_type}: something"),
            delivered: 3,
            trace_id: None,
            time: Some(parse_time(time).expect("time")),
            payload: Bytes::from(format!(
                r#"{{"trace_id":"t","event":{{"device_id":"{device}"}}}}"#
            )),
        }
    }

    #[test]
    fn times_are_rfc3339_or_an_age() {
        let t = parse_time("2025-11-14T12:00:00Z").expect("rfc3339");
        assert_eq!(t.to_rfc3339(), "2025-11-14T12:00:00+00:00");
        let hour_ago = parse_time("1h").expect("age");
        let secs = (Utc::now() - hour_ago).num_seconds();
        assert!((3599..=3601).contains(&secs), "{secs}");
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn the_filter_combines_reason_device_time_and_sequences() {
        let a = letter(1, "device_not_found", "d1", "2025-11-14T12:00:00Z");
        let b = letter(2, "validation_error", "d2", "2025-11-14T13:00:00Z");
        let all = Filter::default();
        assert!(all.matches(&a) && all.matches(&b));
        let f = Filter {
            reason: Some("device_not".into()),
            ..Filter::default()
        };
        assert!(f.matches(&a) && !f.matches(&b));
        let f = Filter {
            device: Some("d2".into()),
            ..Filter::default()
        };
        assert!(!f.matches(&a) && f.matches(&b));
        let f = Filter {
            since: parse_time("2025-11-14T12:30:00Z").ok(),
            ..Filter::default()
        };
        assert!(!f.matches(&a) && f.matches(&b));
        let f = Filter {
            until: parse_time("2025-11-14T13:00:00Z").ok(),
            ..Filter::default()
        };
        assert!(f.matches(&a) && !f.matches(&b));
        let f = Filter {
            seqs: vec![2],
            ..Filter::default()
        };
        assert!(!f.matches(&a) && f.matches(&b));
    }
}
