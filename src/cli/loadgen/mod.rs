//! `nsready loadgen`: realistic traffic against a running nsready, and a capacity report.
//!
//! Devices come from the registry (read through the same store settings as the service:
//! `DATA_DIR`, or `DATABASE_URL`); each event carries up to `--metrics` of its project's
//! parameter templates. Every event has keys no earlier run used: its timestamp is the run's
//! start time plus a per-run event counter in microseconds. Traffic is single-event POSTs or
//! batch POSTs, at a target rate or as fast as `--concurrency` in-flight requests allow.
//!
//! At the end it waits for the queue to drain (`/v1/health` `queue_depth` 0), counts the rows
//! of `ingest_events` again and checks `rows after - rows before = accepted events × metrics`
//! (PASS, exit 0; FAIL, exit 1). The count is a delta, so the database must be otherwise idle
//! while loadgen runs. POST → committed latency is not sampled per event: it comes from the
//! workers' `ingest_processing_duration_seconds` histogram (scraped before and after, quantiles
//! interpolated inside its ×2 buckets), as do the batch-size, DB-write and publish figures.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use nsready::app::{AppError, StoreTask, with_store};
use nsready::config::{ServiceUrl, Settings, parse_duration};
use nsready::registry::RegistryDoc;
use nsready::store::Store;
use serde::Deserialize;
use serde_json::{Value, json};

/// How often the drain wait polls health and metrics.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// Health readings are cached up to 1 s by the service; only readings taken this long after
/// the last response can prove the queue drained.
const HEALTH_MAX_AGE: Duration = Duration::from_millis(1_100);
/// Timeout of one ingest request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct LoadgenArgs {
    /// The running nsready (serve or collector) to load.
    #[command(flatten)]
    service: ServiceUrl,
    /// Base URL whose /metrics holds the workers' histograms (repeat once per worker
    /// process); defaults to --url, which is right for `nsready serve`.
    #[arg(long = "metrics-url")]
    metrics_urls: Vec<String>,
    /// Devices to send for (active devices whose project has parameter templates).
    #[arg(long, default_value_t = 20)]
    devices: usize,
    /// Metrics per event (the project's templates, cycled; all of them when it has fewer).
    #[arg(long, default_value_t = 3)]
    metrics: usize,
    /// Target events per second; 0 = as fast as --concurrency allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Events per request: 0 = single-event POSTs to /v1/ingest, N = /v1/ingest/batch with N.
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// How long to send (seconds or 250ms, 2m, ...).
    #[arg(long, default_value = "10", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many events even if --duration has not passed.
    #[arg(long)]
    events: Option<u64>,
    /// Longest wait for the queue to drain after the load.
    #[arg(long, default_value = "300", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Do not wait for the queue to drain and do not verify (e.g. workers are stopped on
    /// purpose); the report still gives the accepted counts and rows before the run.
    #[arg(long)]
    no_wait: bool,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// For a service with INGEST_AUTH=token: create a token per device for the run, send
    /// each device's events with its own, revoke them after (single-event POSTs, or
    /// batches with --devices 1: a token writes for one device only).
    #[arg(long)]
    mint_tokens: bool,
}

/// What every sender task shares.
struct Shared {
    targets: Vec<Target>,
    base_us: i64,
    next_event: AtomicU64,
    next_slot: AtomicU64,
    stop: AtomicBool,
    sent_events: AtomicU64,
    requests: AtomicU64,
    accepted_events: AtomicU64,
    accepted_rows: AtomicU64,
    /// Events answered 503 (not queued; a 503 promises nothing was acknowledged).
    refused_events: AtomicU64,
    /// Rows of the refused or failed events: the most that may still land (a publish can
    /// complete after the collector gave up on it).
    unknown_rows: AtomicU64,
    /// Events refused with another 4xx (never queued).
    rejected_events: AtomicU64,
    /// Events whose request failed otherwise (transport error, 5xx other than 503).
    failed_events: AtomicU64,
    in_flight: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Shared {
    /// Fresh counters for a run whose event timestamps start at `base_us`.
    fn new(targets: Vec<Target>, base_us: i64) -> Shared {
        Shared {
            targets,
            base_us,
            next_event: AtomicU64::new(0),
            next_slot: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            sent_events: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            accepted_events: AtomicU64::new(0),
            accepted_rows: AtomicU64::new(0),
            refused_events: AtomicU64::new(0),
            unknown_rows: AtomicU64::new(0),
            rejected_events: AtomicU64::new(0),
            failed_events: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            first_error: std::sync::Mutex::new(None),
        }
    }

    fn target(&self, i: u64) -> &Target {
        let n = self.targets.len() as u64;
        &self.targets[usize::try_from(i % n).unwrap_or(0)]
    }

    /// Rows event `i` writes.
    fn rows_of(&self, i: u64) -> u64 {
        self.target(i).per_event as u64
    }

    /// Appends event `i` as JSON: device `i mod N`, time = base + i µs, the next
    /// `per_event` parameters of the device's cycle.
    fn write_event(&self, out: &mut String, i: u64) {
        let t = self.target(i);
        let n = self.targets.len() as u64;
        let round = i / n;
        let ts = chrono::DateTime::from_timestamp_micros(
            self.base_us
                .saturating_add(i64::try_from(i).unwrap_or(i64::MAX)),
        )
        .unwrap_or_default();
        let _ = write!(
            out,
            r#"{{"project_id":"{}","site_id":"{}","device_id":"{}","protocol":"GPRS","source_timestamp":"{}","config_version":"v1.0","metrics":["#,
            t.project,
            t.site,
            t.device,
            ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
        let count = t.params.len() as u64;
        for j in 0..t.per_event as u64 {
            let idx = usize::try_from((round * t.per_event as u64 + j) % count).unwrap_or(0);
            let (key, unit) = &t.params[idx];
            if j > 0 {
                out.push(',');
            }
            // A smooth, bounded value that differs per event.
            let value = 200.0 + ((i + j) % 4_000) as f64 / 100.0;
            let _ = write!(
                out,
                r#"{{"parameter_key":{},"value":{value},"quality":192,"attributes":{{"unit":{}}}}}"#,
                Value::String(key.clone()),
                Value::String(unit.clone().unwrap_or_default())
            );
        }
        out.push_str("]}");
    }

    fn note_error(&self, msg: String) {
        if let Ok(mut e) = self.first_error.lock() {
            e.get_or_insert(msg);
        }
    }
}

struct Export;
impl StoreTask for Export {
    type Output = RegistryDoc;
    async fn run<S: Store>(self, store: S) -> Result<RegistryDoc, AppError> {
        Ok(store.export_registry().await?)
    }
}

struct CountRows;
impl StoreTask for CountRows {
    type Output = u64;
    async fn run<S: Store>(self, store: S) -> Result<u64, AppError> {
        Ok(store.count_rows().await?)
    }
}

// Prometheus text: the few series loadgen reads.

mod report;
mod scrape;
mod send;
mod targets;
mod tokens;

use report::*;
use scrape::*;
use send::*;
use targets::*;

/// Runs `loadgen`.
pub async fn run(s: &Settings, args: LoadgenArgs) -> anyhow::Result<ExitCode> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.metrics == 0 {
        bail!("--metrics must be at least 1");
    }
    if !args.rate.is_finite() || args.rate < 0.0 {
        bail!("--rate must be 0 (as fast as possible) or a positive number of events/s");
    }
    let base = args.service.base(&s.http);
    let metrics_urls: Vec<String> = if args.metrics_urls.is_empty() {
        vec![base.clone()]
    } else {
        args.metrics_urls
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect()
    };

    let doc = with_store(s, Export).await.context(
        "cannot read the registry (loadgen needs the service's store settings: the same \
         DATA_DIR, or DATABASE_URL and NATS_URL)",
    )?;
    let mut targets = pick_targets(&doc, args.devices.max(1), args.metrics);
    if targets.is_empty() {
        bail!(
            "no active device whose project has parameter templates in the registry \
             (load one with `nsready registry demo` or `registry import`)"
        );
    }
    if args.mint_tokens && args.batch > 0 && targets.len() > 1 {
        bail!("--mint-tokens with --batch needs --devices 1 (a token writes for one device)");
    }
    let minted = if args.mint_tokens {
        Some(tokens::mint(s, &mut targets).await?)
    } else {
        None
    };
    let rows_before = with_store(s, CountRows)
        .await
        .context("cannot count the rows of ingest_events")?;

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    if let Err(e) = probe.get(format!("{base}/v1/health")).send().await {
        bail!("nsready at {base} does not answer: {e}");
    }
    if minted.is_some() {
        tokens::wait_seen(&probe, &format!("{base}/v1/ingest"), &targets).await?;
    }
    let scrape_before = scrape(&probe, &metrics_urls).await;

    let cpu_at_start = cpu_seconds();
    let base_us = chrono::Utc::now().timestamp_micros();
    let shared = Arc::new(Shared::new(targets, base_us));
    let args = Arc::new(args);
    let url = if args.batch > 0 {
        format!("{base}/v1/ingest/batch")
    } else {
        format!("{base}/v1/ingest")
    };
    let auth = s
        .http
        .ingest_auth_token
        .as_ref()
        .map(|t| t.expose().to_string());

    let ep = Endpoint {
        client: client.clone(),
        url,
        auth,
        batch: args.batch > 0,
    };
    let start = tokio::time::Instant::now();
    let t0 = Instant::now();
    let deadline = start + args.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        tasks.spawn(sender(
            Arc::clone(&shared),
            ep.clone(),
            Arc::clone(&args),
            start,
            deadline,
        ));
    }
    let timer = {
        let shared = Arc::clone(&shared);
        let quiet = args.quiet;
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            let mut last_sent = 0;
            let mut second = 0u64;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {
                        shared.stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    _ = tick.tick() => {
                        second += 1;
                        let sent = shared.sent_events.load(Ordering::Relaxed);
                        if !quiet {
                            eprintln!(
                                "[{second:>4}s] sent {:>8} ev/s  accepted {:>10}  503 {:>7}  errors {:>5}  in-flight {:>4}",
                                group(sent - last_sent),
                                group(shared.accepted_events.load(Ordering::Relaxed)),
                                group(shared.refused_events.load(Ordering::Relaxed)),
                                group(shared.rejected_events.load(Ordering::Relaxed)
                                    + shared.failed_events.load(Ordering::Relaxed)),
                                shared.in_flight.load(Ordering::Relaxed),
                            );
                        }
                        last_sent = sent;
                        if shared.stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            }
        })
    };
    let mut latencies: Vec<u32> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(mut l) => latencies.append(&mut l),
            Err(e) => shared.note_error(format!("sender task failed: {e}")),
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    timer.abort();
    let load_secs = t0.elapsed().as_secs_f64();
    let load_end = Instant::now();
    latencies.sort_unstable();

    let accepted_events = shared.accepted_events.load(Ordering::Relaxed);
    let accepted_rows = shared.accepted_rows.load(Ordering::Relaxed);

    // Drain: health proves the queue is empty; the workers' rows counter says when the last
    // commit happened (health is cached up to 1 s, the counter is live).
    let mut drained_after: Option<f64> = None;
    let mut drain_note = String::new();
    if !args.no_wait {
        if !args.quiet {
            eprintln!("load done; waiting for the queue to drain ...");
        }
        let mut last_rows = scrape(&probe, &metrics_urls)
            .await
            .and_then(|s| s.rows_total);
        let mut last_change = load_end;
        loop {
            let now = Instant::now();
            if let Some(r) = scrape(&probe, &metrics_urls)
                .await
                .and_then(|s| s.rows_total)
                && Some(r) != last_rows
            {
                last_rows = Some(r);
                last_change = now;
            }
            let trusted = now.duration_since(load_end) >= HEALTH_MAX_AGE;
            if trusted && queue_depth(&probe, &base).await == Some(0) {
                let end = if last_rows.is_some() {
                    last_change
                } else {
                    now
                };
                drained_after = Some(end.duration_since(t0).as_secs_f64());
                break;
            }
            if now.duration_since(load_end) > args.drain_timeout {
                drain_note = format!(
                    "the queue did not drain within {} s",
                    args.drain_timeout.as_secs()
                );
                break;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
    let scrape_after = scrape(&probe, &metrics_urls).await;
    let server = match (&scrape_before, &scrape_after) {
        (Some(b), Some(a)) => Some(a.minus(b)),
        (None, Some(a)) => Some(a.clone()),
        _ => None,
    };
    let rows_after = if args.no_wait {
        None
    } else {
        Some(
            with_store(s, CountRows)
                .await
                .context("cannot count the rows of ingest_events after the run")?,
        )
    };

    // Verification.
    if let Some(ids) = minted {
        tokens::revoke(s, ids).await?;
    }
    let unknown_rows = shared.unknown_rows.load(Ordering::Relaxed);
    let (verdict, verdict_note) = match (rows_after, drained_after) {
        (None, _) => (
            "NOT VERIFIED",
            "--no-wait: nothing counted after the run".to_string(),
        ),
        (Some(_), None) => ("FAIL", drain_note.clone()),
        (Some(after), Some(_)) => {
            let actual = after.saturating_sub(rows_before);
            if after < rows_before {
                (
                    "FAIL",
                    "fewer rows than before the run (rows deleted meanwhile?)".into(),
                )
            } else if actual == accepted_rows {
                ("PASS", "rows delta = accepted events × metrics".into())
            } else if actual > accepted_rows && actual <= accepted_rows + unknown_rows {
                (
                    "PASS",
                    format!(
                        "{} more rows than accepted: events answered 503 or failed whose publish \
                         completed anyway (a 503 acknowledges nothing; retrying it is safe)",
                        actual - accepted_rows
                    ),
                )
            } else if actual < accepted_rows {
                (
                    "FAIL",
                    format!("{} accepted rows missing", accepted_rows - actual),
                )
            } else {
                (
                    "FAIL",
                    format!(
                        "{} rows more than accepted (another writer, or duplicates)",
                        actual - accepted_rows
                    ),
                )
            }
        }
    };

    let committed_rows = rows_after.map(|a| a.saturating_sub(rows_before));
    let total_secs = drained_after;
    let rate_of = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let mean_us = if latencies.is_empty() {
        None
    } else {
        let sum: u64 = latencies.iter().map(|&u| u64::from(u)).sum();
        Some(u32::try_from(sum / latencies.len() as u64).unwrap_or(u32::MAX))
    };
    let first_error = shared.first_error.lock().ok().and_then(|e| e.clone());
    let client_cpu = cpu_seconds().map(|c| round(c - cpu_at_start.unwrap_or(0.0), 2));
    let report = json!({
        "url": base,
        "mode": if args.batch > 0 { "batch" } else { "single" },
        "batch": args.batch,
        "devices": shared.targets.len(),
        "metrics_per_event": shared.targets.iter().map(|t| t.per_event).max().unwrap_or(0),
        "rate_target": args.rate,
        "concurrency": args.concurrency,
        "auth": if args.mint_tokens { "device tokens" } else if ep.auth.is_some() { "shared token" } else { "none" },
        "duration_s": args.duration.as_secs_f64(),
        "requests": shared.requests.load(Ordering::Relaxed),
        "sent_events": shared.sent_events.load(Ordering::Relaxed),
        "accepted_events": accepted_events,
        "accepted_rows": accepted_rows,
        "refused_503_events": shared.refused_events.load(Ordering::Relaxed),
        "rejected_4xx_events": shared.rejected_events.load(Ordering::Relaxed),
        "failed_events": shared.failed_events.load(Ordering::Relaxed),
        "first_error": first_error,
        "client_cpu_s": client_cpu,
        "load_s": round(load_secs, 3),
        "drained_s": total_secs.map(|t| round(t, 3)),
        "accepted_events_per_s": round(rate_of(accepted_events, load_secs), 1),
        "committed_rows_per_s": match (committed_rows, total_secs) {
            (Some(r), Some(t)) => json!(round(rate_of(r, t), 1)),
            _ => Value::Null,
        },
        "committed_events_per_s": match total_secs {
            Some(t) => json!(round(rate_of(accepted_events, t), 1)),
            None => Value::Null,
        },
        "latency_ms": {
            "per": if args.batch > 0 { "request (batch)" } else { "request (event)" },
            "samples": latencies.len(),
            "mean": ms(mean_us),
            "p50": ms(percentile(&latencies, 0.50)),
            "p95": ms(percentile(&latencies, 0.95)),
            "p99": ms(percentile(&latencies, 0.99)),
            "max": ms(latencies.last().copied()),
        },
        "commit_latency_ms": server.as_ref().map_or(Value::Null, |sv| {
            let mut v = hist_json(&sv.processing, 1000.0, 2);
            v["source"] = json!(format!(
                "{} (publish → commit, per event, bucket-interpolated)",
                nsready::metrics::names::PROCESSING_SECONDS
            ));
            v
        }),
        "server": server.as_ref().map_or(Value::Null, |sv| json!({
            "db_write_ms": hist_json(&sv.db_write, 1000.0, 2),
            "batch_size": hist_json(&sv.batch_size, 1.0, 1),
            "publish_ms": hist_json(&sv.publish, 1000.0, 3),
            "rows_counted_by_workers": sv.rows_total,
        })),
        "rows_before": rows_before,
        "rows_after": rows_after,
        "verification": {
            "status": verdict,
            "expected_rows": accepted_rows,
            "actual_rows": committed_rows,
            "note": verdict_note,
        },
    });

    if args.json {
        println!("{report}");
    } else {
        print_human(&report);
    }
    Ok(if verdict == "FAIL" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests;
