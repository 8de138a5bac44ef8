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
use nsready::config::{Settings, parse_duration};
use nsready::registry::RegistryDoc;
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
    /// Base URL of the running nsready (serve or collector); defaults to
    /// http://127.0.0.1:SERVICE_PORT.
    #[arg(long, env = "NSREADY_URL")]
    url: Option<String>,
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

/// The project id of a template key `project:<uuid>:<name>`, else of `metadata.project_id`.
fn template_project(key: &str, metadata: &Value) -> Option<Uuid> {
    key.strip_prefix("project:")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(id, _)| id.parse().ok())
        .or_else(|| metadata["project_id"].as_str().and_then(|s| s.parse().ok()))
}

/// Active devices whose project has templates, sorted by id, at most `want`.
fn pick_targets(doc: &RegistryDoc, want: usize, metrics: usize) -> Vec<Target> {
    let mut by_project: std::collections::HashMap<Uuid, Vec<(String, Option<String>)>> =
        std::collections::HashMap::new();
    for t in &doc.parameter_templates {
        if let Some(p) = template_project(&t.key, &t.metadata) {
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
        });
        if out.len() >= want {
            break;
        }
    }
    out
}

/// Answer of the batch endpoint (200 or 503), without the per-item results.
#[derive(Deserialize)]
struct BatchCounts {
    accepted: u64,
}

/// Answer of the batch endpoint with the per-item results.
#[derive(Deserialize)]
struct BatchResults {
    results: Vec<BatchItem>,
}

#[derive(Deserialize)]
struct BatchItem {
    index: usize,
    trace_id: Option<serde::de::IgnoredAny>,
}

/// Outcome of one request, in events and rows.
struct Outcome {
    accepted_events: u64,
    accepted_rows: u64,
    refused_events: u64,
    rejected_events: u64,
    failed_events: u64,
}

/// Where and how requests go; one per sender task (clones share the connection pool).
#[derive(Clone)]
struct Endpoint {
    client: reqwest::Client,
    /// `/v1/ingest` or `/v1/ingest/batch`.
    url: String,
    /// Bearer token when the service wants one (INGEST_AUTH_TOKEN).
    auth: Option<String>,
    batch: bool,
}

/// Sends one request for events `first..first + n` and classifies its answer.
async fn send_one(ep: &Endpoint, shared: &Shared, first: u64, n: u64, body: String) -> Outcome {
    let batch = ep.batch;
    let all_rows: u64 = (first..first + n).map(|i| shared.rows_of(i)).sum();
    let mut out = Outcome {
        accepted_events: 0,
        accepted_rows: 0,
        refused_events: 0,
        rejected_events: 0,
        failed_events: 0,
    };
    let mut req = ep
        .client
        .post(&ep.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(token) = &ep.auth {
        req = req.bearer_auth(token);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            shared.note_error(format!("request failed: {e}"));
            out.failed_events = n;
            shared.unknown_rows.fetch_add(all_rows, Ordering::Relaxed);
            return out;
        }
    };
    let status = resp.status();
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            shared.note_error(format!("reading the answer failed: {e}"));
            out.failed_events = n;
            shared.unknown_rows.fetch_add(all_rows, Ordering::Relaxed);
            return out;
        }
    };
    let code = status.as_u16();
    if !batch {
        match code {
            200 => {
                out.accepted_events = 1;
                out.accepted_rows = all_rows;
            }
            503 => {
                out.refused_events = 1;
                shared.unknown_rows.fetch_add(all_rows, Ordering::Relaxed);
            }
            400..=499 => {
                shared.note_error(format!(
                    "HTTP {code}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                ));
                out.rejected_events = 1;
            }
            _ => {
                shared.note_error(format!("HTTP {code}"));
                out.failed_events = 1;
                shared.unknown_rows.fetch_add(all_rows, Ordering::Relaxed);
            }
        }
        return out;
    }
    if code != 200 && code != 503 {
        if (400..500).contains(&code) {
            shared.note_error(format!(
                "HTTP {code}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            ));
            out.rejected_events = n;
        } else {
            shared.note_error(format!("HTTP {code}"));
            out.failed_events = n;
            shared.unknown_rows.fetch_add(all_rows, Ordering::Relaxed);
        }
        return out;
    }
    let accepted = serde_json::from_slice::<BatchCounts>(&bytes)
        .map(|c| c.accepted)
        .unwrap_or(0);
    if accepted == n {
        out.accepted_events = n;
        out.accepted_rows = all_rows;
        return out;
    }
    // Some items were not queued: find which from the per-item results.
    let Ok(detail) = serde_json::from_slice::<BatchResults>(&bytes) else {
        shared.note_error(format!("HTTP {code}: unreadable batch answer"));
        out.failed_events = n;
        shared.unknown_rows.fetch_add(all_rows, Ordering::Relaxed);
        return out;
    };
    for item in detail.results {
        let i = first + item.index as u64;
        if item.trace_id.is_some() {
            out.accepted_events += 1;
            out.accepted_rows += shared.rows_of(i);
        } else if code == 503 {
            out.refused_events += 1;
            shared
                .unknown_rows
                .fetch_add(shared.rows_of(i), Ordering::Relaxed);
        } else {
            out.rejected_events += 1;
        }
    }
    if out.rejected_events > 0 {
        shared.note_error("batch items rejected as invalid (HTTP 200 with rejected > 0)".into());
    }
    out
}

/// One sender: takes the next slot (paced when a rate is set) and the next events, sends,
/// records. Returns its request latencies in microseconds.
async fn sender(
    shared: Arc<Shared>,
    ep: Endpoint,
    args: Arc<LoadgenArgs>,
    start: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> Vec<u32> {
    let per_request = args.batch.max(1) as u64;
    let requests_per_sec = if args.rate > 0.0 {
        Some(args.rate / per_request as f64)
    } else {
        None
    };
    let mut latencies = Vec::with_capacity(4_096);
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(rps) = requests_per_sec {
            let slot = shared.next_slot.fetch_add(1, Ordering::Relaxed);
            let due = start + Duration::from_secs_f64(slot as f64 / rps);
            if due >= deadline {
                break;
            }
            tokio::time::sleep_until(due).await;
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let mut n = per_request;
        let first = shared.next_event.fetch_add(n, Ordering::Relaxed);
        if let Some(cap) = args.events {
            if first >= cap {
                shared.stop.store(true, Ordering::Relaxed);
                break;
            }
            n = n.min(cap - first);
        }
        let mut body = String::with_capacity(700 * n as usize + 2);
        if args.batch > 0 {
            body.push('[');
            for i in first..first + n {
                if i > first {
                    body.push(',');
                }
                shared.write_event(&mut body, i);
            }
            body.push(']');
        } else {
            shared.write_event(&mut body, first);
        }
        shared.sent_events.fetch_add(n, Ordering::Relaxed);
        shared.requests.fetch_add(1, Ordering::Relaxed);
        shared.in_flight.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        let o = send_one(&ep, &shared, first, n, body).await;
        let us = t0.elapsed().as_micros();
        latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        shared
            .accepted_events
            .fetch_add(o.accepted_events, Ordering::Relaxed);
        shared
            .accepted_rows
            .fetch_add(o.accepted_rows, Ordering::Relaxed);
        shared
            .refused_events
            .fetch_add(o.refused_events, Ordering::Relaxed);
        shared
            .rejected_events
            .fetch_add(o.rejected_events, Ordering::Relaxed);
        shared
            .failed_events
            .fetch_add(o.failed_events, Ordering::Relaxed);
    }
    latencies
}

// ------------------------------------------------------------------------------------------
// Prometheus text: the few series loadgen reads.
// ------------------------------------------------------------------------------------------

/// A histogram as scraped: cumulative bucket counts by upper bound, sum and count.
#[derive(Clone, Debug, Default, PartialEq)]
struct Hist {
    /// (le, cumulative count), ascending; the last bound is +Inf.
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Hist {
    /// `self - before`, bucket by bucket (same layout); `self` when the layouts differ.
    fn minus(&self, before: &Hist) -> Hist {
        if before.buckets.len() != self.buckets.len() {
            return self.clone();
        }
        Hist {
            buckets: self
                .buckets
                .iter()
                .zip(&before.buckets)
                .map(|((le, a), (_, b))| (*le, (a - b).max(0.0)))
                .collect(),
            sum: (self.sum - before.sum).max(0.0),
            count: (self.count - before.count).max(0.0),
        }
    }

    /// Adds another process's histogram of the same layout.
    fn plus(&mut self, other: &Hist) {
        if self.buckets.is_empty() {
            *self = other.clone();
            return;
        }
        if self.buckets.len() != other.buckets.len() {
            return;
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            a.1 += b.1;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The q-quantile, interpolated linearly inside its bucket (as Prometheus's
    /// `histogram_quantile`); in the +Inf bucket, the highest finite bound.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut prev_le = 0.0;
        let mut prev_count = 0.0;
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(prev_le);
                }
                let width = count - prev_count;
                if width <= 0.0 {
                    return Some(le);
                }
                return Some(prev_le + (le - prev_le) * (rank - prev_count) / width);
            }
            prev_le = le;
            prev_count = count;
        }
        Some(prev_le)
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

/// The value of a label in `{a="x",le="0.5"}`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!("{name}=\"");
    let start = labels.find(&pat)? + pat.len();
    let rest = &labels[start..];
    Some(&rest[..rest.find('"')?])
}

/// Splits a sample line into (name, labels, value).
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    match series.split_once('{') {
        Some((name, labels)) => Some((name, labels.trim_end_matches('}'), value)),
        None => Some((series, "", value)),
    }
}

/// Reads the histogram `name` from Prometheus text.
fn parse_hist(text: &str, name: &str) -> Option<Hist> {
    let bucket = format!("{name}_bucket");
    let sum = format!("{name}_sum");
    let count = format!("{name}_count");
    let mut h = Hist::default();
    let mut seen = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((n, labels, v)) = sample(line) else {
            continue;
        };
        if n == bucket {
            let le = label(labels, "le").and_then(|s| {
                if s == "+Inf" {
                    Some(f64::INFINITY)
                } else {
                    s.parse().ok()
                }
            })?;
            h.buckets.push((le, v));
            seen = true;
        } else if n == sum {
            h.sum = v;
        } else if n == count {
            h.count = v;
        }
    }
    h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    seen.then_some(h)
}

/// Reads an unlabelled counter or gauge.
fn parse_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(sample)
        .find(|(n, l, _)| *n == name && l.is_empty())
        .map(|(_, _, v)| v)
}

/// The histograms and counters loadgen reports, summed over the metrics URLs.
#[derive(Clone, Debug, Default)]
struct Scrape {
    processing: Hist,
    db_write: Hist,
    batch_size: Hist,
    publish: Hist,
    rows_total: Option<f64>,
}

impl Scrape {
    fn minus(&self, before: &Scrape) -> Scrape {
        Scrape {
            processing: self.processing.minus(&before.processing),
            db_write: self.db_write.minus(&before.db_write),
            batch_size: self.batch_size.minus(&before.batch_size),
            publish: self.publish.minus(&before.publish),
            rows_total: match (self.rows_total, before.rows_total) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
        }
    }
}

async fn scrape(client: &reqwest::Client, urls: &[String]) -> Option<Scrape> {
    let mut out = Scrape::default();
    let mut any = false;
    for base in urls {
        let text = match client.get(format!("{base}/metrics")).send().await {
            Ok(r) if r.status().is_success() => r.text().await.ok(),
            _ => None,
        };
        let Some(text) = text else { continue };
        any = true;
        let add = |h: &mut Hist, name: &str| {
            if let Some(x) = parse_hist(&text, name) {
                h.plus(&x);
            }
        };
        add(&mut out.processing, "ingest_processing_duration_seconds");
        add(&mut out.db_write, "ingest_db_write_duration_seconds");
        add(&mut out.batch_size, "ingest_batch_size");
        add(&mut out.publish, "ingest_publish_duration_seconds");
        if let Some(v) = parse_value(&text, "ingest_rows_total") {
            out.rows_total = Some(out.rows_total.unwrap_or(0.0) + v);
        }
    }
    any.then_some(out)
}

async fn queue_depth(client: &reqwest::Client, base: &str) -> Option<u64> {
    let r = client.get(format!("{base}/v1/health")).send().await.ok()?;
    let v: Value = r.json().await.ok()?;
    v["queue_depth"].as_u64()
}

// ------------------------------------------------------------------------------------------
// Statistics and the report.
// ------------------------------------------------------------------------------------------

/// CPU time (user + system) this process used so far, in seconds: the client's own share
/// of the machine, which on a small box is part of every figure.
fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return None;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms(us: Option<u32>) -> Value {
    us.map_or(Value::Null, |u| json!(round(f64::from(u) / 1000.0, 3)))
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn hist_json(h: &Hist, scale: f64, unit_digits: i32) -> Value {
    let q = |p: f64| {
        h.quantile(p)
            .map_or(Value::Null, |v| json!(round(v * scale, unit_digits)))
    };
    json!({
        "count": h.count,
        "mean": h.mean().map_or(Value::Null, |v| json!(round(v * scale, unit_digits))),
        "p50": q(0.50), "p95": q(0.95), "p99": q(0.99),
    })
}

/// Thousands separators for the human table.
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn fmt_ms(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_string(), |v| format!("{v:.2} ms"))
}

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
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{}", s.http.service_port))
        .trim_end_matches('/')
        .to_string();
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
    let targets = pick_targets(&doc, args.devices.max(1), args.metrics);
    if targets.is_empty() {
        bail!(
            "no active device whose project has parameter templates in the registry \
             (load one with `nsready registry demo` or `registry import`)"
        );
    }
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
    let scrape_before = scrape(&probe, &metrics_urls).await;

    let cpu_at_start = cpu_seconds();
    let base_us = chrono::Utc::now().timestamp_micros();
    let shared = Arc::new(Shared {
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
    });
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
            {
                if Some(r) != last_rows {
                    last_rows = Some(r);
                    last_change = now;
                }
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
            v["source"] = json!("ingest_processing_duration_seconds (publish → commit, per event, bucket-interpolated)");
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

fn print_human(r: &Value) {
    let n = |k: &str| r[k].as_u64().map_or_else(|| "-".into(), group);
    let f = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".into(), |x| group(x.round() as u64))
    };
    let mode = if r["batch"].as_u64().unwrap_or(0) > 0 {
        format!("batch {}", r["batch"])
    } else {
        "single-event".into()
    };
    let rate = match r["rate_target"].as_f64() {
        Some(x) if x > 0.0 => format!("{} events/s target", group(x as u64)),
        _ => "as fast as possible".into(),
    };
    println!(
        "nsready loadgen  {}  {mode}, {} devices x {} metrics, {rate}, concurrency {}, {} s",
        r["url"].as_str().unwrap_or(""),
        r["devices"],
        r["metrics_per_event"],
        r["concurrency"],
        r["duration_s"]
    );
    println!();
    println!("{:<34} {}", "requests", n("requests"));
    println!(
        "{:<34} {} of {} sent  (503: {}, 4xx: {}, failed: {})",
        "accepted events",
        n("accepted_events"),
        n("sent_events"),
        n("refused_503_events"),
        n("rejected_4xx_events"),
        n("failed_events")
    );
    println!(
        "{:<34} {} /s over {} s",
        "accepted events/s",
        f(&r["accepted_events_per_s"]),
        r["load_s"]
    );
    println!(
        "{:<34} {} /s  ({} events/s; first POST → drained {} s)",
        "committed rows/s",
        f(&r["committed_rows_per_s"]),
        f(&r["committed_events_per_s"]),
        r["drained_s"]
    );
    let l = &r["latency_ms"];
    println!(
        "{:<34} p50 {}  p95 {}  p99 {}  max {}",
        format!(
            "ingest latency per {}",
            l["per"].as_str().unwrap_or("request")
        ),
        fmt_ms(&l["p50"]),
        fmt_ms(&l["p95"]),
        fmt_ms(&l["p99"]),
        fmt_ms(&l["max"])
    );
    let c = &r["commit_latency_ms"];
    if c.is_object() {
        println!(
            "{:<34} p50 {}  p95 {}  p99 {}  (workers' histogram ingest_processing_duration_seconds, per event, ×2 buckets interpolated)",
            "POST → committed",
            fmt_ms(&c["p50"]),
            fmt_ms(&c["p95"]),
            fmt_ms(&c["p99"])
        );
        let sv = &r["server"];
        println!(
            "{:<34} batch size mean {}, DB write mean {} (p99 {}), publish wait mean {} (p99 {})",
            "server side",
            sv["batch_size"]["mean"],
            fmt_ms(&sv["db_write_ms"]["mean"]),
            fmt_ms(&sv["db_write_ms"]["p99"]),
            fmt_ms(&sv["publish_ms"]["mean"]),
            fmt_ms(&sv["publish_ms"]["p99"])
        );
    } else {
        println!("{:<34} (no /metrics readable)", "POST → committed");
    }
    if let Some(cpu) = r["client_cpu_s"].as_f64() {
        println!(
            "{:<34} {cpu:.1} s (loadgen's own, user + system)",
            "client CPU"
        );
    }
    if let Some(e) = r["first_error"].as_str() {
        println!("{:<34} {e}", "first error");
    }
    let v = &r["verification"];
    println!(
        "{:<34} expected rows {} (accepted events × metrics), actual delta {}: {} ({})",
        "verification",
        v["expected_rows"]
            .as_u64()
            .map_or_else(|| "-".into(), group),
        v["actual_rows"].as_u64().map_or_else(|| "-".into(), group),
        v["status"].as_str().unwrap_or("?"),
        v["note"].as_str().unwrap_or("")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(targets: Vec<Target>) -> Shared {
        Shared {
            targets,
            base_us: 1_763_121_600_000_000,
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

    #[test]
    fn demo_targets_are_the_devices_of_the_project_with_templates() {
        let doc = nsready::registry::demo();
        let t = pick_targets(&doc, 20, 2);
        assert_eq!(t.len(), 2, "only Customer 01's project has templates");
        assert!(t.iter().all(|t| t.params.len() == 3 && t.per_event == 2));
        let t = pick_targets(&doc, 20, 10);
        assert!(t.iter().all(|t| t.per_event == 3), "fewer templates: all");
    }

    #[test]
    fn events_are_valid_and_have_distinct_keys() {
        let doc = nsready::registry::demo();
        let sh = shared(pick_targets(&doc, 20, 2));
        let mut keys = std::collections::HashSet::new();
        let mut seen_params = std::collections::HashSet::new();
        for i in 0..50 {
            let mut s = String::new();
            sh.write_event(&mut s, i);
            let e = nsready::event::NormalizedEvent::parse(s.as_bytes())
                .unwrap_or_else(|r| panic!("event {i} invalid: {} in {s}", r.detail()));
            assert_eq!(e.metrics().len() as u64, sh.rows_of(i));
            for m in e.metrics() {
                seen_params.insert(m.parameter_key().to_string());
                assert!(
                    keys.insert((
                        e.source_timestamp(),
                        e.device_id(),
                        m.parameter_key().to_string()
                    )),
                    "duplicate key in event {i}"
                );
            }
        }
        assert_eq!(seen_params.len(), 3, "the templates are cycled");
    }

    const METRICS: &str = "# HELP x\n\
        ingest_processing_duration_seconds_sum 3.0\n\
        ingest_processing_duration_seconds_count 100\n\
        ingest_processing_duration_seconds_bucket{le=\"0.001\"} 0\n\
        ingest_processing_duration_seconds_bucket{le=\"0.002\"} 50\n\
        ingest_processing_duration_seconds_bucket{le=\"0.004\"} 90\n\
        ingest_processing_duration_seconds_bucket{le=\"+Inf\"} 100\n\
        ingest_rows_total 300\n\
        ingest_events_total{status=\"success\"} 100\n\
        # EOF\n";

    #[test]
    fn histograms_and_counters_are_read_from_prometheus_text() {
        let h = parse_hist(METRICS, "ingest_processing_duration_seconds").expect("hist");
        assert_eq!(h.buckets.len(), 4);
        assert_eq!(h.count, 100.0);
        let p50 = h.quantile(0.5).expect("p50");
        assert!((p50 - 0.002).abs() < 1e-9, "{p50}");
        let p70 = h.quantile(0.7).expect("p70");
        assert!((p70 - 0.003).abs() < 1e-9, "{p70}");
        assert_eq!(
            h.quantile(0.99),
            Some(0.004),
            "+Inf bucket: highest finite bound"
        );
        assert_eq!(parse_value(METRICS, "ingest_rows_total"), Some(300.0));
        assert_eq!(parse_value(METRICS, "ingest_events_total"), None);
        let d = h.minus(&h);
        assert_eq!(d.quantile(0.5), None, "empty delta has no quantiles");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(12), "12");
    }
}
