//! `nsready status`: the seed's health-check script as a command.
//!
//! Reads `/v1/health` of a running nsready (any role), applies thresholds and exits 0
//! (healthy), 1 (warning) or 2 (critical). Thresholds are flags/env so runbooks can pick
//! their own (the platform's documents disagree: 100 / 1,000 / 5,000).
//!
//! Everything comes from the one health document, so `status` needs no queue or database
//! settings and works the same on both deployments while the service runs (in embedded
//! mode only the running process may open DATA_DIR). The DLQ by error type is counted by
//! the service (see `collector::health`), and throughput is the service's own rolling
//! one-minute figure of committed events, not two samples of `/metrics` taken here.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use nsready::config::{ServiceUrl, Settings, StatusThresholds};
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    service: ServiceUrl,
    #[command(flatten)]
    thresholds: StatusThresholds,
    /// Print the verdict, exit code, notes and the health document as JSON.
    #[arg(long)]
    json: bool,
}

const VERDICTS: [&str; 3] = ["OK", "WARNING", "CRITICAL"];

/// Prints a critical verdict for a service that gave no usable health document.
fn unreachable(base: &str, why: String, json: bool) -> ExitCode {
    if json {
        println!(
            "{}",
            json!({"verdict": "CRITICAL", "exit_code": 2, "url": base, "notes": [why], "health": null})
        );
    } else {
        println!("nsready CRITICAL  ({base})\n  ! {why}");
    }
    ExitCode::from(2)
}

/// The verdict level (0, 1, 2) and the notes that explain it.
fn judge(health: &Value, args: &StatusArgs) -> (u8, Vec<String>) {
    let depth = health["queue_depth"].as_u64().unwrap_or(0);
    let dlq = health["dlq_depth"].as_u64().unwrap_or(0);
    let mut level = 0u8;
    let mut notes = Vec::new();
    if health["db"] != "connected" {
        level = 2;
        notes.push("database disconnected".to_string());
    }
    if let Some(reasons) = health["reasons"].as_array() {
        for r in reasons.iter().filter_map(Value::as_str) {
            if r == "database disconnected" {
                continue; // said above
            }
            // A stall or an unreachable queue means nothing lands: critical.
            let critical = r.starts_with("stalled") || r.starts_with("queue unreachable");
            level = level.max(if critical { 2 } else { 1 });
            notes.push(r.to_string());
        }
    }
    if depth >= args.thresholds.crit_depth {
        level = 2;
        notes.push(format!(
            "queue depth {depth} ≥ {}",
            args.thresholds.crit_depth
        ));
    } else if depth >= args.thresholds.warn_depth {
        level = level.max(1);
        notes.push(format!(
            "queue depth {depth} ≥ {}",
            args.thresholds.warn_depth
        ));
    }
    if args.thresholds.crit_dlq > 0 && dlq >= args.thresholds.crit_dlq {
        level = 2;
        notes.push(format!(
            "{dlq} dead letters ≥ {} (nsready dlq list)",
            args.thresholds.crit_dlq
        ));
    } else if args.thresholds.warn_dlq > 0 && dlq >= args.thresholds.warn_dlq {
        level = level.max(1);
        notes.push(format!("{dlq} dead letters (nsready dlq list)"));
    }
    (level, notes)
}

fn print_text(base: &str, health: &Value, verdict: &str, notes: &[String]) {
    let q = &health["queue"];
    println!(
        "nsready {verdict}  ({base}, role {})",
        health["role"].as_str().unwrap_or("?")
    );
    println!(
        "  queue depth     {} (pending {}, ack pending {}, redelivered {}, waiting pulls {})",
        health["queue_depth"], q["pending"], q["ack_pending"], q["redelivered"], q["waiting_pulls"]
    );
    let mut dlq = format!("  dlq depth       {}", health["dlq_depth"]);
    if let Some(by) = health["dlq_by_reason"]
        .as_object()
        .filter(|m| !m.is_empty())
    {
        let parts: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let partial = if health["dlq_by_reason_complete"] == false {
            ", oldest only"
        } else {
            ""
        };
        dlq.push_str(&format!(" ({}{partial})", parts.join(", ")));
    }
    println!("{dlq}");
    println!("  database        {}", health["db"].as_str().unwrap_or("?"));
    if let Some(backend) = health["store"]["backend"].as_str() {
        println!("  store           {backend}");
    }
    let ts = &health["store"]["timescale"];
    if ts.is_object() {
        let or_off = |v: &Value| v.as_str().unwrap_or("off").to_string();
        println!(
            "  timescaledb     {} (hypertable {}, chunk {}, compress after {}, retention {}, \
             rollup {}; chunks {}, compressed {})",
            ts["version"].as_str().unwrap_or("?"),
            ts["hypertable"],
            or_off(&ts["chunk_interval"]),
            or_off(&ts["compress_after"]),
            or_off(&ts["retention"]),
            or_off(&ts["rollup"]),
            ts["chunks"],
            ts["compressed_chunks"]
        );
    }
    println!("  workers         {}", health["workers"]);
    match health["throughput"]["committed_per_sec"].as_f64() {
        Some(rate) => println!(
            "  throughput      {rate:.1} events/s committed (last {} s, this process)",
            health["throughput"]["window_secs"]
        ),
        None => println!("  throughput      - (no workers in this process)"),
    }
    for n in notes {
        println!("  ! {n}");
    }
}

/// Runs `status`.
pub async fn run(s: &Settings, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let base = args.service.base(&s.http);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let health: Value = match client.get(format!("{base}/v1/health")).send().await {
        Ok(r) => match r.json().await {
            Ok(v) => v,
            Err(e) => {
                let why = format!("{base}/v1/health is not nsready's health document ({e})");
                return Ok(unreachable(&base, why, args.json));
            }
        },
        Err(e) => {
            let why = format!("nsready at {base} does not answer ({e})");
            return Ok(unreachable(&base, why, args.json));
        }
    };
    let (level, notes) = judge(&health, &args);
    let verdict = VERDICTS[usize::from(level)];
    if args.json {
        println!(
            "{}",
            json!({"verdict": verdict, "exit_code": level, "url": base, "notes": notes, "health": health})
        );
    } else {
        print_text(&base, &health, verdict, &notes);
    }
    Ok(ExitCode::from(level))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> StatusArgs {
        StatusArgs {
            service: ServiceUrl::default(),
            thresholds: StatusThresholds::default(),
            json: false,
        }
    }

    fn healthy() -> Value {
        json!({"service": "ok", "queue_depth": 0, "db": "connected", "dlq_depth": 0, "reasons": []})
    }

    #[test]
    fn thresholds_give_the_levels() {
        assert_eq!(judge(&healthy(), &args()).0, 0);
        let mut h = healthy();
        h["dlq_depth"] = json!(2);
        assert_eq!(judge(&h, &args()).0, 1);
        let mut a = args();
        a.thresholds.warn_dlq = 0;
        assert_eq!(judge(&h, &a).0, 0, "DLQ check off");
        a.thresholds.crit_dlq = 2;
        assert_eq!(judge(&h, &a).0, 2);
        let mut h = healthy();
        h["queue_depth"] = json!(1_000);
        assert_eq!(judge(&h, &args()).0, 1);
        h["queue_depth"] = json!(5_000);
        assert_eq!(judge(&h, &args()).0, 2);
    }

    #[test]
    fn database_down_and_stalls_are_critical() {
        let mut h = healthy();
        h["db"] = json!("disconnected");
        h["reasons"] = json!(["database disconnected"]);
        let (level, notes) = judge(&h, &args());
        assert_eq!((level, notes.len()), (2, 1), "{notes:?}");
        let mut h = healthy();
        h["reasons"] = json!(["stalled: queue not empty and nothing committed for more than 60 s"]);
        assert_eq!(judge(&h, &args()).0, 2);
    }
}
