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
use nsready::registry::{RegistryDoc, template_project};
use nsready::store::Store;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

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

/// One device and the parameters its events carry.
#[derive(Clone, Debug)]
struct Target {
    device: Uuid,
    site: Uuid,
    project: Uuid,
    /// (parameter key, unit) of the project's templates.
    params: Vec<(String, Option<String>)>,
    /// Metrics per event for this device: min(--metrics, params).
    per_event: usize,
    /// The device's own bearer token (`--mint-tokens`).
    token: Option<String>,
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

/// Active devices whose project has templates, sorted by id, at most `want`.
fn pick_targets(doc: &RegistryDoc, want: usize, metrics: usize) -> Vec<Target> {
    let mut by_project: std::collections::HashMap<Uuid, Vec<(String, Option<String>)>> =
        std::collections::HashMap::new();
    for t in &doc.parameter_templates {
        if let Some(p) = template_project(&t.key, t.metadata["project_id"].as_str()) {
            by_project
                .entry(p)
                .or_default()
                .push((t.key.clone(), t.unit.clone()));
        }
    }
    for params in by_project.values_mut() {
        params.sort();
    }
    let mut devices: Vec<_> = doc
        .devices
        .iter()
        .filter(|d| d.status == "active")
        .collect();
    devices.sort_by_key(|d| d.id);
    let mut out = Vec::new();
    for d in devices {
        let Some(site) = doc.sites.iter().find(|s| s.id == d.site_id) else {
            continue;
        };
        let Some(params) = by_project.get(&site.project_id) else {
            continue;
        };
        out.push(Target {
            device: d.id,
            site: site.id,
            project: site.project_id,
            params: params.clone(),
            per_event: metrics.clamp(1, params.len()),
            token: None,
        });
        if out.len() >= want {
            break;
        }
    }
    out
}

mod drain;
mod drive;
mod prepare;
mod report;
mod scrape;
mod send;
mod tokens;
mod verify;

use report::*;
use scrape::*;
use send::*;

/// Runs `loadgen`: prepare (registry, targets, clients, the "before" readings), drive the
/// load, wait for the drain, verify the row count, report.
pub async fn run(s: &Settings, args: LoadgenArgs) -> anyhow::Result<ExitCode> {
    let run = prepare::prepare(s, args).await?;
    let load = drive::drive(&run).await;
    let drained = if run.args.no_wait {
        None
    } else {
        Some(drain::drain(&run, &load).await)
    };
    let scrape_after = scrape(&run.probe, &run.metrics_urls).await;
    let server = match (&run.scrape_before, &scrape_after) {
        (Some(b), Some(a)) => Some(a.minus(b)),
        (None, Some(a)) => Some(a.clone()),
        _ => None,
    };
    let rows_after = match drained {
        None => None,
        Some(_) => Some(
            with_store(s, CountRows)
                .await
                .context("cannot count the rows of ingest_events after the run")?,
        ),
    };
    if let Some(ids) = &run.minted {
        tokens::revoke(s, ids.clone()).await?;
    }
    let verdict = verify::verify(&run, rows_after, drained.as_ref());
    let report = report::build(
        &run,
        &load,
        drained.as_ref(),
        server.as_ref(),
        rows_after,
        &verdict,
    );
    if run.args.json {
        println!("{report}");
    } else {
        print_human(&report);
    }
    Ok(if verdict.status == verify::Status::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests;
