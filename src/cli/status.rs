//! `nsready status`: the seed's health-check script as a command.
//!
//! Reads `/v1/health` of a running nsready (any role), applies thresholds and exits 0
//! (healthy), 1 (warning) or 2 (critical). Thresholds are flags/env so runbooks can pick
//! their own (the platform's documents disagree: 100 / 1,000 / 5,000).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use nsready::config::Settings;
use serde_json::Value;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Base URL of the service; defaults to http://127.0.0.1:SERVICE_PORT.
    #[arg(long, env = "NSREADY_URL")]
    url: Option<String>,
    /// Queue depth that is a warning.
    #[arg(long, env = "QUEUE_DEPTH_WARN", default_value_t = 1_000)]
    warn_depth: u64,
    /// Queue depth that is critical.
    #[arg(long, env = "QUEUE_DEPTH_CRIT", default_value_t = 5_000)]
    crit_depth: u64,
    /// Print the health document and verdict as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `status`.
pub async fn run(s: &Settings, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{}", s.http.service_port));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let health: Value = match client.get(format!("{base}/v1/health")).send().await {
        Ok(r) => r.json().await?,
        Err(e) => {
            println!("CRITICAL: nsready at {base} does not answer ({e})");
            return Ok(ExitCode::from(2));
        }
    };
    let depth = health["queue_depth"].as_u64().unwrap_or(0);
    let dlq = health["dlq_depth"].as_u64().unwrap_or(0);
    let mut level = 0u8;
    let mut notes = Vec::new();
    if health["db"] != "connected" {
        level = 2;
        notes.push("database disconnected".to_string());
    }
    if let Some(reasons) = health["reasons"].as_array() {
        for r in reasons {
            if let Some(r) = r.as_str() {
                level = level.max(if r.starts_with("stalled") { 2 } else { 1 });
                notes.push(r.to_string());
            }
        }
    }
    if depth >= args.crit_depth {
        level = 2;
        notes.push(format!("queue depth {depth} ≥ {}", args.crit_depth));
    } else if depth >= args.warn_depth {
        level = level.max(1);
        notes.push(format!("queue depth {depth} ≥ {}", args.warn_depth));
    }
    if dlq > 0 {
        level = level.max(1);
        notes.push(format!("{dlq} dead letters (nsready dlq list)"));
    }
    let verdict = ["OK", "WARNING", "CRITICAL"][usize::from(level)];
    if args.json {
        println!(
            "{}",
            serde_json::json!({"verdict": verdict, "notes": notes, "health": health})
        );
    } else {
        let q = &health["queue"];
        println!(
            "nsready {verdict}  ({base}, role {})",
            health["role"].as_str().unwrap_or("?")
        );
        println!(
            "  queue depth     {depth} (pending {}, ack pending {}, redelivered {}, waiting pulls {})",
            q["pending"], q["ack_pending"], q["redelivered"], q["waiting_pulls"]
        );
        println!("  dlq depth       {dlq}");
        println!("  database        {}", health["db"].as_str().unwrap_or("?"));
        for n in &notes {
            println!("  ! {n}");
        }
    }
    Ok(ExitCode::from(level))
}
