//! Renders `BENCHMARKS.md` from the results `scripts/bench` collected (not a test).
//!
//! Reads the JSON files of one run (`meta`, `baseline`, one loadgen report per run, the
//! backlog drain) and the memory samples (`rss.log`: elapsed s, process, pid, VmRSS kB;
//! `hwm.log`: process, pid, VmHWM kB), and writes the figures, the ratios to the raw baselines
//! and the issue's targets. Everything in the previous file below [`KEEP_MARKER`] (the
//! hand-written analysis and the history) is carried over unchanged.
//!
//! `bench_report --dir RESULTS --out BENCHMARKS.md --keep-from BENCHMARKS.md`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::Value;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Everything below this line of the old file is kept.
const KEEP_MARKER: &str = "<!-- scripts/bench keeps everything below this line -->";

#[derive(Parser, Debug)]
struct Args {
    /// Directory with the run's results.
    #[arg(long)]
    dir: PathBuf,
    /// Where to write the report.
    #[arg(long)]
    out: PathBuf,
    /// Previous report whose sections below the keep marker are carried over.
    #[arg(long)]
    keep_from: Option<PathBuf>,
}

fn read_json(dir: &Path, name: &str) -> Value {
    std::fs::read_to_string(dir.join(format!("{name}.json")))
        .ok()
        .and_then(|t| serde_json::from_str(t.trim()).ok())
        .unwrap_or(Value::Null)
}

/// Thousands separators.
fn group(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let n = x.round() as i64;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    if n < 0 {
        out.push('-');
    }
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn num(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), group)
}

fn ms(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

fn pct(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.0} %", 100.0 * a / b),
        _ => "-".into(),
    }
}

fn describe(r: &Value) -> String {
    let batch = r["batch"].as_u64().unwrap_or(0);
    let mode = if batch > 0 {
        format!("batch {batch}")
    } else {
        "single-event".into()
    };
    let rate = match r["rate_target"].as_f64() {
        Some(x) if x > 0.0 => format!("at {} ev/s", group(x)),
        _ => "max".into(),
    };
    format!(
        "{mode}, {} in flight, {rate}",
        r["concurrency"].as_u64().unwrap_or(0)
    )
}

/// Memory samples of one process label: (elapsed s, VmRSS kB).
fn rss_samples(dir: &Path) -> BTreeMap<String, Vec<(u64, u64)>> {
    let mut out: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let text = std::fs::read_to_string(dir.join("rss.log")).unwrap_or_default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [t, label, _pid, kb] = f[..]
            && let (Ok(t), Ok(kb)) = (t.parse(), kb.parse())
        {
            out.entry(label.to_string()).or_default().push((t, kb));
        }
    }
    out
}

fn hwm(dir: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(dir.join("hwm.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f[..] {
                [label, _pid, kb] => Some((label.to_string(), kb.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

fn mib(kb: u64) -> String {
    format!("{:.0}", kb as f64 / 1024.0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let d = &args.dir;
    let meta = read_json(d, "meta");
    let base = read_json(d, "baseline");
    let pg = &base["postgres"];
    let js = &base["jetstream"];
    let runs: Vec<(&str, &str, Value)> = vec![
        ("so-single", "scale-out `serve`", read_json(d, "so-single")),
        ("so-batch", "scale-out `serve`", read_json(d, "so-batch")),
        ("so-half", "scale-out `serve`", read_json(d, "so-half")),
        ("emb-batch", "embedded `serve`", read_json(d, "emb-batch")),
        ("emb-single", "embedded `serve`", read_json(d, "emb-single")),
        ("emb-half", "embedded `serve`", read_json(d, "emb-half")),
    ];
    let sqlite = read_json(d, "sqlite");
    let backlog_load = read_json(d, "backlog-load");
    let backlog = read_json(d, "backlog");
    let up1 = pg["upsert_platform_schema_rows_per_s_1conn"].as_f64();
    let up2 = pg["upsert_platform_schema_rows_per_s_2conn"].as_f64();
    let up_best = match (up1, up2) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    // The better of the two concurrent patterns is what JetStream can do here.
    let js_both = match (
        js["publish_consume_concurrent_msgs_per_s"].as_f64(),
        js["publish_consume_concurrent_stream_msgs_per_s"].as_f64(),
    ) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let drain_rows_per_s = match (backlog["rows"].as_f64(), backlog["drain_s"].as_f64()) {
        (Some(r), Some(s)) if s > 0.0 => Some(r / s),
        _ => None,
    };
    let drain_events_per_s = match (backlog["events"].as_f64(), backlog["drain_s"].as_f64()) {
        (Some(e), Some(s)) if s > 0.0 => Some(e / s),
        _ => None,
    };
    let smoke = meta["mode"] == "smoke";

    let mut o = String::new();
    let w = &mut o;
    writeln!(w, "# Benchmarks\n")?;
    if smoke {
        writeln!(
            w,
            "**Smoke run** (`scripts/bench --smoke`): tiny counts, for correctness only; the \
             figures below mean nothing about speed.\n"
        )?;
    }
    writeln!(
        w,
        "Written by `scripts/bench` on {} ({} run: {} s in all, of which {} s building). \
         Reproduce with `scripts/bench` from a clean clone; knobs: `BENCH_EVENTS` (backlog \
         events, used here: {}), `BENCH_ROWS` (baseline rows: {}), `BENCH_MESSAGES` (JetStream \
         messages: {}), `BENCH_DURATION` (seconds per loadgen run: {}). `scripts/bench --smoke` \
         is the seconds-long correctness version CI runs.\n",
        meta["date"].as_str().unwrap_or("?"),
        meta["mode"].as_str().unwrap_or("?"),
        num(&meta["total_s"]),
        num(&meta["build_s"]),
        num(&meta["bench_events"]),
        num(&meta["bench_rows"]),
        num(&meta["bench_messages"]),
        num(&meta["bench_duration"]),
    )?;

    writeln!(w, "## Machine and versions\n")?;
    writeln!(w, "| | |\n|---|---|")?;
    writeln!(
        w,
        "| cores (`nproc`) | {} (shared; everything below runs on them, loadgen included) |",
        meta["nproc"]
    )?;
    writeln!(w, "| CPU | {} |", meta["cpu"].as_str().unwrap_or("?"))?;
    writeln!(
        w,
        "| memory | {:.1} GiB |",
        meta["mem_kb"].as_f64().unwrap_or(0.0) / 1024.0 / 1024.0
    )?;
    writeln!(w, "| kernel | {} |", meta["kernel"].as_str().unwrap_or("?"))?;
    writeln!(
        w,
        "| nats-server | {} |",
        meta["nats_server"].as_str().unwrap_or("?")
    )?;
    writeln!(
        w,
        "| PostgreSQL | {} |",
        meta["postgres"].as_str().unwrap_or("?")
    )?;
    writeln!(w, "| rustc | {} |", meta["rustc"].as_str().unwrap_or("?"))?;
    writeln!(
        w,
        "| nsready | git {} |\n",
        meta["nsready_rev"].as_str().unwrap_or("?")
    )?;

    writeln!(w, "## Settings\n")?;
    writeln!(
        w,
        "- Everything on loopback on this one machine: nats-server, PostgreSQL, nsready and the \
         load generator share the {} cores, so the client's CPU is part of every figure.",
        meta["nproc"]
    )?;
    writeln!(
        w,
        "- **PostgreSQL**: a fresh `initdb` cluster with default settings (`fsync`, \
         `synchronous_commit` and `full_page_writes` on, `shared_buffers` 128 MB): durable \
         commits, honest numbers. Platform schema (primary key, both foreign keys, the \
         `(device_id, parameter_key, time DESC)` index). `ingest_events` is truncated before \
         each measured run, so every run (and every baseline) starts from an empty table."
    )?;
    writeln!(
        w,
        "- **nats-server**: defaults (`-js`, file storage, JetStream's default 2-minute sync \
         interval). Stream `INGRESS` as nsready provisions it (work queue, `discard: new`); \
         `STREAM_MAX_MSGS`/`STREAM_MAX_BYTES` raised so the backlog fits."
    )?;
    writeln!(
        w,
        "- **nsready**: release build, {} settings ({}), `LOG_LEVEL=warn`.",
        if meta["nsready_settings_default"] == false {
            "**non-default**"
        } else {
            "default"
        },
        meta["nsready_settings"].as_str().unwrap_or(
            "WORKER_POOL_SIZE 4, WORKER_BATCH_SIZE 500, WORKER_BATCH_TIMEOUT 0.1 s, DB_POOL_SIZE 8"
        )
    )?;
    writeln!(
        w,
        "- **Load** (`nsready loadgen`): {} devices (the demo's 2 with templates plus a bench \
         project), 3 metrics per event (~600-byte events), every event with keys of its own; \
         committed = first POST until the queue is drained; POST → committed from the \
         workers' `ingest_processing_duration_seconds` histogram (×2 buckets, interpolated). \
         Each run's rows are counted and compared with accepted events × 3.\n",
        num(&meta["devices"])
    )?;

    writeln!(
        w,
        "## Raw baselines (same run, same row and message shapes)\n"
    )?;
    writeln!(w, "| write path | rate |\n|---|---|")?;
    writeln!(
        w,
        "| PostgreSQL binary COPY, fresh logged table with the primary key only, {} rows | {} rows/s |",
        num(&pg["rows"]),
        num(&pg["copy_pk_only_rows_per_s"])
    )?;
    writeln!(
        w,
        "| PostgreSQL bulk upsert into `ingest_events` (platform schema), nsready's `UNNEST ... ON CONFLICT DO UPDATE`, {}-row statements, 1 connection | {} rows/s |",
        num(&pg["batch_rows"]),
        num(&pg["upsert_platform_schema_rows_per_s_1conn"])
    )?;
    writeln!(
        w,
        "| same, 2 connections | {} rows/s |",
        num(&pg["upsert_platform_schema_rows_per_s_2conn"])
    )?;
    writeln!(
        w,
        "| same, 2 connections, without the two foreign keys (their cost; nsready keeps them) | {} rows/s |",
        num(&pg["upsert_no_fk_rows_per_s_2conn"])
    )?;
    let drain_anchor = read_json(d, "drain-anchor");
    if !drain_anchor.is_null() {
        writeln!(
            w,
            "| same, 2 connections, {} rows (the backlog's), into the same server right before the backlog drain: the drain's anchor | {} rows/s (postgres {} ms CPU per 1,000 rows) |",
            num(&drain_anchor["postgres"]["rows"]),
            num(&drain_anchor["postgres"]["upsert_platform_schema_rows_per_s_2conn"]),
            pg_ms_per_k_rows(d, "drain-anchor", drain_anchor["postgres"]["rows"].as_f64())
                .map_or_else(|| "-".into(), |v| format!("{v:.0}"))
        )?;
    }
    let decode = read_json(d, "decode");
    if !decode.is_null() {
        writeln!(
            w,
            "| JSON work per event alone (examples/bench_decode.rs, {} loadgen-shaped events of {} bytes, fastest of 3 passes): collector parse / envelope + dedupe id / worker decode | {} / {} / {} ns |",
            num(&decode["events"]),
            num(&decode["bytes_per_event"]),
            num(&decode["parse_ns"]),
            num(&decode["encode_ns"]),
            num(&decode["decode_ns"])
        )?;
    }
    writeln!(
        w,
        "| SQLite upsert into a copy of the embedded store file (platform schema, foreign keys on), the store's statement, WAL, `synchronous=NORMAL`, 64 MiB page cache, {}-row transactions, {} rows (examples/bench_sqlite.rs) | {} rows/s ({} ms CPU per 1,000 rows) |",
        num(&sqlite["batch_rows"]),
        num(&sqlite["rows"]),
        num(&sqlite["upsert_rows_per_s"]),
        num(&sqlite["cpu_ms_per_1000_rows"])
    )?;
    writeln!(
        w,
        "| JetStream async publish, {} messages of {} bytes with `Nats-Msg-Id`, {} acks in flight | {} msgs/s |",
        num(&js["messages"]),
        num(&js["payload_bytes"]),
        num(&js["acks_in_flight"]),
        num(&js["publish_msgs_per_s"])
    )?;
    writeln!(
        w,
        "| JetStream pull consume + ack, {} consumers fetching {} | {} msgs/s |",
        num(&js["consumers"]),
        num(&js["fetch"]),
        num(&js["consume_msgs_per_s"])
    )?;
    writeln!(
        w,
        "| JetStream publish and consume at the same time, consumers fetching {} with 100 ms expiry (nsready's pattern) | {} msgs/s |",
        num(&js["fetch"]),
        num(&js["publish_consume_concurrent_msgs_per_s"])
    )?;
    writeln!(
        w,
        "| JetStream publish and consume at the same time, continuous pull streams (`messages()`) | {} msgs/s |\n",
        num(&js["publish_consume_concurrent_stream_msgs_per_s"])
    )?;

    writeln!(w, "## nsready end to end\n")?;
    writeln!(
        w,
        "| deployment | load | accepted events/s | committed events/s | committed rows/s | POST latency p50 / p95 / p99 / max (ms) | POST → committed p50 / p95 / p99 (ms) | 503 | rows check |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|---|---|---|")?;
    for (_, dep, r) in &runs {
        if r.is_null() {
            continue;
        }
        let l = &r["latency_ms"];
        let c = &r["commit_latency_ms"];
        let per = if r["batch"].as_u64().unwrap_or(0) > 0 {
            " per request"
        } else {
            ""
        };
        writeln!(
            w,
            "| {dep} | {} | {} | {} | {} | {} / {} / {} / {}{per} | {} / {} / {} | {} | {} ({} = {} × 3) |",
            describe(r),
            num(&r["accepted_events_per_s"]),
            num(&r["committed_events_per_s"]),
            num(&r["committed_rows_per_s"]),
            ms(&l["p50"]),
            ms(&l["p95"]),
            ms(&l["p99"]),
            ms(&l["max"]),
            ms(&c["p50"]),
            ms(&c["p95"]),
            ms(&c["p99"]),
            num(&r["refused_503_events"]),
            r["verification"]["status"].as_str().unwrap_or("?"),
            num(&r["verification"]["actual_rows"]),
            num(&r["accepted_events"]),
        )?;
    }
    writeln!(w)?;

    writeln!(w, "## Backlog drain\n")?;
    writeln!(
        w,
        "{} events were queued through `nsready collector` alone (no worker running; {}, \
         accepted at {} events/s, POST p99 {} ms per request); then one `nsready worker` \
         process (4 worker loops) was started and timed, from process start until its \
         `ingest_rows_total` reached the accepted rows.\n",
        num(&backlog["events"]),
        describe(&backlog_load),
        num(&backlog_load["accepted_events_per_s"]),
        ms(&backlog_load["latency_ms"]["p99"]),
    )?;
    writeln!(
        w,
        "| rows | drain time | rows/s | events/s | rows check |\n|---|---|---|---|---|"
    )?;
    writeln!(
        w,
        "| {} | {:.1} s | {} | {} | {} ({} rows for {} accepted events × 3; queue depth after: {}) |\n",
        num(&backlog["rows"]),
        backlog["drain_s"].as_f64().unwrap_or(0.0),
        drain_rows_per_s.map_or_else(|| "-".into(), group),
        drain_events_per_s.map_or_else(|| "-".into(), group),
        backlog["status"].as_str().unwrap_or("?"),
        num(&backlog["rows"]),
        num(&backlog["events"]),
        backlog["queue_depth_after"],
    )?;

    timescale_section(w, &base, d, drain_rows_per_s, up1, up2)?;

    writeln!(w, "## Ratios to the raw baselines\n")?;
    writeln!(
        w,
        "Raw bulk upsert = the better of 1 and 2 connections ({} rows/s); raw JetStream = \
         publish and consume at the same time, the better of the two consumer patterns ({} \
         msgs/s).\n",
        up_best.map_or_else(|| "-".into(), group),
        js_both.map_or_else(|| "-".into(), group)
    )?;
    writeln!(
        w,
        "| run | nsready rows/s ÷ raw bulk-upsert rows/s | nsready events/s ÷ raw JetStream publish+consume msgs/s |\n|---|---|---|"
    )?;
    for (_, dep, r) in &runs {
        if r.is_null() {
            continue;
        }
        writeln!(
            w,
            "| {dep}, {} | {} | {} |",
            describe(r),
            pct(r["committed_rows_per_s"].as_f64(), up_best),
            pct(r["committed_events_per_s"].as_f64(), js_both),
        )?;
    }
    writeln!(
        w,
        "| backlog drain (worker only) | {} (vs 1 connection: {}; vs the same rows upserted right before the drain: **{}**) | {} |\n",
        pct(drain_rows_per_s, up_best),
        pct(drain_rows_per_s, up1),
        pct(
            drain_rows_per_s,
            read_json(d, "drain-anchor")["postgres"]["upsert_platform_schema_rows_per_s_2conn"]
                .as_f64()
        ),
        pct(drain_events_per_s, js["consume_msgs_per_s"].as_f64()),
    )?;
    writeln!(
        w,
        "(The drain row compares events/s with JetStream consume alone, since nothing is \
         published meanwhile. Embedded runs are compared with the same PostgreSQL and \
         JetStream baselines for scale; their store is SQLite.)\n"
    )?;

    writeln!(
        w,
        "## Server-side splits (from each run's `/metrics` deltas)\n"
    )?;
    writeln!(
        w,
        "| run | batch size (messages) mean / p99 | DB write per batch mean / p99 (ms) | publish wait mean / p99 (ms) |\n|---|---|---|---|"
    )?;
    for (_, dep, r) in &runs {
        if r.is_null() {
            continue;
        }
        let s = &r["server"];
        writeln!(
            w,
            "| {dep}, {} | {} / {} | {} / {} | {} / {} |",
            describe(r),
            ms(&s["batch_size"]["mean"]),
            ms(&s["batch_size"]["p99"]),
            ms(&s["db_write_ms"]["mean"]),
            ms(&s["db_write_ms"]["p99"]),
            ms(&s["publish_ms"]["mean"]),
            ms(&s["publish_ms"]["p99"]),
        )?;
    }
    writeln!(w)?;

    writeln!(w, "## CPU: who used the cores during each run\n")?;
    writeln!(
        w,
        "CPU seconds (user + system) from `/proc/<pid>/stat` before and after each run (load \
         and drain); \"others\" is the machine's busy time minus ours (other users of the \
         shared box); busy = all of it ÷ (wall × {} cores).\n",
        meta["nproc"]
    )?;
    writeln!(
        w,
        "| run | wall (s) | client (loadgen) | nsready | nats-server | postgres | others | busy | nsready CPU ms per 1,000 events |\n|---|---|---|---|---|---|---|---|---|"
    )?;
    let nproc = meta["nproc"].as_f64().unwrap_or(1.0);
    let mut cpu_rows: Vec<(String, Value, Value, f64)> = runs
        .iter()
        .filter(|(_, _, r)| !r.is_null())
        .map(|(name, dep, r)| {
            (
                format!("{dep}, {}", describe(r)),
                read_json(d, &format!("{name}.cpu")),
                r["client_cpu_s"].clone(),
                r["accepted_events"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    cpu_rows.insert(
        0,
        (
            "raw baselines (client: bench_baseline)".into(),
            read_json(d, "baseline.cpu"),
            base["client_cpu_s"].clone(),
            0.0,
        ),
    );
    cpu_rows.insert(
        1,
        (
            "raw SQLite anchor (client: bench_sqlite)".into(),
            read_json(d, "sqlite.cpu"),
            sqlite["client_cpu_s"].clone(),
            0.0,
        ),
    );
    cpu_rows.push((
        "backlog drain (worker only)".into(),
        read_json(d, "backlog.cpu"),
        Value::from(0.0),
        backlog["events"].as_f64().unwrap_or(0.0),
    ));
    let mut disturbed = Vec::new();
    for (label, c, client, events) in &cpu_rows {
        if c.is_null() {
            continue;
        }
        let f = |k: &str| c[k].as_f64().unwrap_or(0.0);
        let client = client.as_f64().unwrap_or(0.0);
        let ours = f("nats_s") + f("postgres_s") + f("nsready_s") + client;
        let others = (f("machine_s") - ours).max(0.0);
        if others > 0.10 * f("wall_s") * nproc {
            disturbed.push(label.clone());
        }
        let busy = if f("wall_s") > 0.0 {
            format!("{:.0} %", 100.0 * f("machine_s") / (f("wall_s") * nproc))
        } else {
            "-".into()
        };
        let per_k = if *events > 0.0 {
            format!("{:.0}", 1000.0 * f("nsready_s") / events * 1000.0)
        } else {
            "-".into()
        };
        writeln!(
            w,
            "| {label} | {:.1} | {client:.1} | {:.1} | {:.1} | {:.1} | {others:.1} | {busy} | {per_k} |",
            f("wall_s"),
            f("nsready_s"),
            f("nats_s"),
            f("postgres_s"),
        )?;
    }
    if !disturbed.is_empty() {
        writeln!(
            w,
            "\n**Disturbed:** other work on the shared machine took more than 10 % of the cores \
             during: {}. Those figures are low; rerun on a quiet machine to compare.",
            disturbed.join("; ")
        )?;
    }
    writeln!(
        w,
        "\nLoad average at the start / end of the whole run: {} / {}.\n",
        meta["loadavg_start"].as_str().unwrap_or("?"),
        meta["loadavg_end"].as_str().unwrap_or("?")
    )?;

    writeln!(w, "## Memory\n")?;
    writeln!(
        w,
        "VmHWM (peak RSS) read from `/proc/<pid>/status` just before each process was stopped; \
         VmRSS sampled every second over the process's life (ten evenly spaced samples shown, \
         to see whether it grows with run length or queue size).\n"
    )?;
    writeln!(
        w,
        "| process | life (s) | VmHWM (MiB) | VmRSS min / median / max (MiB) | VmRSS over time (MiB) |\n|---|---|---|---|---|"
    )?;
    let samples = rss_samples(d);
    let peaks = hwm(d);
    for label in ["serve-scaleout", "collector", "worker", "serve-embedded"] {
        let Some(s) = samples.get(label) else {
            continue;
        };
        if s.is_empty() {
            continue;
        }
        let mut kb: Vec<u64> = s.iter().map(|x| x.1).collect();
        let life = s.last().map_or(0, |x| x.0) - s.first().map_or(0, |x| x.0);
        let timeline: Vec<String> = (0..10).map(|i| mib(s[(i * (s.len() - 1)) / 9].1)).collect();
        kb.sort_unstable();
        writeln!(
            w,
            "| `{label}` | {life} | {} | {} / {} / {} | {} |",
            peaks.get(label).map_or_else(|| "-".into(), |k| mib(*k)),
            mib(kb[0]),
            mib(kb[kb.len() / 2]),
            mib(kb[kb.len() - 1]),
            timeline.join(" → ")
        )?;
    }
    writeln!(w)?;

    // Targets of issue 5.
    let get = |name: &str| {
        runs.iter()
            .find(|(n, _, _)| *n == name)
            .map_or(Value::Null, |(_, _, r)| r.clone())
    };
    let single = get("so-single");
    let batch = get("so-batch");
    let half = get("so-half");
    let emb = get("emb-batch");
    let mark = |ok: bool| if ok { "met" } else { "**missed**" };
    let ge = |v: Option<f64>, t: f64| v.is_some_and(|v| v >= t);
    let le = |v: Option<f64>, t: f64| v.is_some_and(|v| v <= t);
    // Against the drain's own anchor (same rows, right before it) when measured.
    let drain_base =
        read_json(d, "drain-anchor")["postgres"]["upsert_platform_schema_rows_per_s_2conn"]
            .as_f64()
            .or(up_best);
    let drain_ratio = match (drain_rows_per_s, drain_base) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    writeln!(w, "## Targets of issue 5\n")?;
    writeln!(w, "| target | measured | |\n|---|---|---|")?;
    writeln!(
        w,
        "| backlog drain ≥ 70 % of raw bulk upsert (the same rows, right before the drain) | {} | {} |",
        pct(drain_rows_per_s, drain_base),
        mark(ge(drain_ratio, 0.70))
    )?;
    let sc = single["committed_events_per_s"].as_f64();
    writeln!(
        w,
        "| scale-out, single-event POSTs, ≥ 10,000 events/s sustained, zero loss | {} events/s, {} | {} |",
        num(&single["committed_events_per_s"]),
        single["verification"]["status"].as_str().unwrap_or("?"),
        mark(ge(sc, 10_000.0) && single["verification"]["status"] == "PASS")
    )?;
    let bc = batch["committed_events_per_s"].as_f64();
    writeln!(
        w,
        "| scale-out, batch requests, ≥ 20,000 events/s sustained, zero loss | {} events/s, {} | {} |",
        num(&batch["committed_events_per_s"]),
        batch["verification"]["status"].as_str().unwrap_or("?"),
        mark(ge(bc, 20_000.0) && batch["verification"]["status"] == "PASS")
    )?;
    let ec = emb["committed_events_per_s"].as_f64();
    writeln!(
        w,
        "| embedded, batch requests, ≥ 10,000 events/s sustained | {} events/s, {} | {} |",
        num(&emb["committed_events_per_s"]),
        emb["verification"]["status"].as_str().unwrap_or("?"),
        mark(ge(ec, 10_000.0) && emb["verification"]["status"] == "PASS")
    )?;
    writeln!(
        w,
        "| at half the sustained single-event rate ({} events/s): POST p99 ≤ 5 ms | {} ms | {} |",
        num(&meta["half_rate"]),
        ms(&half["latency_ms"]["p99"]),
        mark(le(half["latency_ms"]["p99"].as_f64(), 5.0))
    )?;
    writeln!(
        w,
        "| same: POST → committed p99 ≤ WORKER_BATCH_TIMEOUT + 100 ms = 200 ms | {} ms | {} |\n",
        ms(&half["commit_latency_ms"]["p99"]),
        mark(le(half["commit_latency_ms"]["p99"].as_f64(), 200.0))
    )?;

    issue13_section(w, d, &meta, &runs, up_best, drain_rows_per_s)?;
    mqtt_section(w, d, &runs)?;

    // Carried-over sections.
    writeln!(w, "{KEEP_MARKER}\n")?;
    let old = args
        .keep_from
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    match old.split_once(KEEP_MARKER) {
        Some((_, kept)) => w.push_str(kept.trim_start_matches('\n')),
        None if !old.trim().is_empty() => {
            writeln!(w, "## History\n")?;
            for line in old.lines() {
                match line.strip_prefix("# ") {
                    Some(title) => writeln!(w, "### {title}")?,
                    None => writeln!(w, "{line}")?,
                }
            }
        }
        None => {}
    }
    if !o.ends_with('\n') {
        o.push('\n');
    }
    std::fs::write(&args.out, o)?;
    Ok(())
}

/// `## TimescaleDB (same run)`: the hypertable's raw upsert, drain and compressed size next
/// to the plain table's; nothing when the run had no TimescaleDB.
fn timescale_section(
    w: &mut String,
    base: &Value,
    d: &Path,
    plain_drain_rows_per_s: Option<f64>,
    up1: Option<f64>,
    up2: Option<f64>,
) -> Result<()> {
    let ts = &base["timescale"];
    if !ts.is_object() {
        return Ok(());
    }
    let drain = read_json(d, "backlog-ts");
    let ts_drain = match (drain["rows"].as_f64(), drain["drain_s"].as_f64()) {
        (Some(r), Some(s)) if s > 0.0 => Some(r / s),
        _ => None,
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.0} %", a / b * 100.0),
        _ => "-".into(),
    };
    let f = |v: Option<f64>| v.map_or_else(|| "-".into(), group);
    writeln!(w, "## TimescaleDB (same run)\n")?;
    writeln!(
        w,
        "The same PostgreSQL server, with TimescaleDB preloaded for the whole run; the figures \
         above use a database where `TIMESCALE_CHUNK_INTERVAL=off` keeps `ingest_events` a \
         plain table, these a second one where it is a hypertable (default settings: 1-day \
         chunks, compression segmented by `device_id`).\n"
    )?;
    writeln!(
        w,
        "| measure | plain table | hypertable | hypertable ÷ plain |\n|---|---|---|---|"
    )?;
    let ts1 = ts["upsert_rows_per_s_1conn"].as_f64();
    let ts2 = ts["upsert_rows_per_s_2conn"].as_f64();
    writeln!(
        w,
        "| raw bulk upsert, 1 connection, rows/s | {} | {} | {} |",
        f(up1),
        f(ts1),
        ratio(ts1, up1)
    )?;
    writeln!(
        w,
        "| raw bulk upsert, 2 connections, rows/s | {} | {} | {} |",
        f(up2),
        f(ts2),
        ratio(ts2, up2)
    )?;
    writeln!(
        w,
        "| backlog drain (one worker), rows/s | {} | {} ({} rows in {:.1} s, {}) | {} |",
        f(plain_drain_rows_per_s),
        f(ts_drain),
        num(&drain["rows"]),
        drain["drain_s"].as_f64().unwrap_or(0.0),
        drain["status"].as_str().unwrap_or("?"),
        ratio(ts_drain, plain_drain_rows_per_s)
    )?;
    let mib_per_m = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".into(), |b| format!("{:.1} MiB", b / 1_048_576.0))
    };
    writeln!(
        w,
        "| size per million rows (table + indexes) | - | {} uncompressed, **{} compressed** \
         (`compress_chunk` on every chunk: {:.1} s) | - |\n",
        mib_per_m(&ts["bytes_per_million_rows_uncompressed"]),
        mib_per_m(&ts["bytes_per_million_rows_compressed"]),
        ts["compress_s"].as_f64().unwrap_or(0.0)
    )?;
    Ok(())
}

/// CPU accounting of one run, in words: what the cores did (for a target not met).
/// Postgres CPU (ms) per 1,000 rows during run `name` (its `.cpu.json`).
fn pg_ms_per_k_rows(d: &Path, name: &str, rows: Option<f64>) -> Option<f64> {
    let c = read_json(d, &format!("{name}.cpu"));
    match (c["postgres_s"].as_f64(), rows) {
        (Some(s), Some(r)) if r > 0.0 => Some(1e6 * s / r),
        _ => None,
    }
}

fn cpu_words(
    d: &Path,
    name: &str,
    meta: &Value,
    events: f64,
    sqlite: &Value,
    embedded: bool,
) -> String {
    let c = read_json(d, &format!("{name}.cpu"));
    if c.is_null() {
        return "-".into();
    }
    let f = |k: &str| c[k].as_f64().unwrap_or(0.0);
    let nproc = meta["nproc"].as_f64().unwrap_or(1.0);
    let cores = f("wall_s") * nproc;
    let r = read_json(d, name);
    let client = r["client_cpu_s"].as_f64().unwrap_or(0.0);
    let share = |x: f64| if cores > 0.0 { 100.0 * x / cores } else { 0.0 };
    let per_k = |x: f64| if events > 0.0 { 1e6 * x / events } else { 0.0 };
    let mut out = format!(
        "cores {:.0} % busy; nsready {:.0} % ({:.0} ms per 1,000 events), loadgen {:.0} %",
        share(f("machine_s")),
        share(f("nsready_s")),
        per_k(f("nsready_s")),
        share(client)
    );
    if embedded {
        let floor = sqlite["cpu_ms_per_1000_rows"].as_f64().unwrap_or(0.0) * 3.0;
        let queue = per_k(f("queue_thread_s"));
        let rest = per_k(f("nsready_s")) - queue;
        out.push_str(&format!(
            "; of nsready's: the queue thread {queue:.0} ms per 1,000 events (each event \
             written, leased and deleted, group-committed), everything else {rest:.0} ms, of \
             which ~{floor:.0} ms is what SQLite alone spends on the same 3 rows (the anchor's \
             CPU) and the remaining ~{:.0} ms HTTP, JSON and the worker",
            (rest - floor).max(0.0)
        ));
    } else {
        let rows = events * 3.0;
        let pg = if rows > 0.0 {
            1e6 * f("postgres_s") / rows
        } else {
            0.0
        };
        out.push_str(&format!(
            ", postgres {:.0} % ({pg:.0} ms per 1,000 rows), nats-server {:.0} %",
            share(f("postgres_s")),
            share(f("nats_s"))
        ));
    }
    out
}

/// Why a rate target cannot be reached on this machine, from the run's own figures: for the
/// embedded store, the SQLite anchor alone caps the events/s below the target; for
/// PostgreSQL, the postgres CPU the run spent per row, times the target's rows, exceeds the
/// cores there are.
fn rate_ceiling(
    d: &Path,
    name: &str,
    meta: &Value,
    target_events: f64,
    anchor_rows: Option<f64>,
    embedded: bool,
) -> String {
    let nproc = meta["nproc"].as_f64().unwrap_or(1.0);
    if embedded {
        return match anchor_rows {
            Some(a) if a / 3.0 < target_events => format!(
                " — **why it goes no further on this machine**: SQLite alone, doing nothing but these \
                 rows (the anchor), writes {} rows/s = {} events/s of 3 rows, below the \
                 target's {}; no change inside nsready gets past the store's own ceiling",
                group(a),
                group(a / 3.0),
                group(target_events)
            ),
            _ => String::new(),
        };
    }
    let r = read_json(d, name);
    let rows = r["accepted_events"].as_f64().map(|e| e * 3.0);
    match pg_ms_per_k_rows(d, name, rows) {
        Some(pg) => {
            let needed = target_events * 3.0 * pg / 1e6;
            if needed > nproc {
                format!(
                    " — **why it goes no further on this machine**: postgres spent {pg:.0} ms CPU per \
                     1,000 rows in this run, so {} events/s ({} rows/s) would need {needed:.1} \
                     cores of postgres alone, on {nproc:.0} cores shared with nats-server, \
                     nsready and the client",
                    group(target_events),
                    group(target_events * 3.0)
                )
            } else {
                format!(
                    " — postgres would need {needed:.1} of the {nproc:.0} cores at the target \
                     ({pg:.0} ms CPU per 1,000 rows here); the rest of the cores go to nats-server, \
                     nsready and the client"
                )
            }
        }
        None => String::new(),
    }
}

/// `## Targets of issue 13`: each target against its raw anchor of the same run.
fn issue13_section(
    w: &mut String,
    d: &Path,
    meta: &Value,
    runs: &[(&str, &str, Value)],
    up_best: Option<f64>,
    drain_rows_per_s: Option<f64>,
) -> Result<()> {
    let get = |name: &str| {
        runs.iter()
            .find(|(n, _, _)| *n == name)
            .map_or(Value::Null, |(_, _, r)| r.clone())
    };
    let sqlite = read_json(d, "sqlite");
    let anchor = sqlite["upsert_rows_per_s"].as_f64();
    let mark = |ok: bool| if ok { "met" } else { "**not met**" };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    let pass = |r: &Value| r["verification"]["status"] == "PASS";
    writeln!(w, "## Targets of issue 13\n")?;
    writeln!(
        w,
        "Each target against its raw anchor, measured in the same run (embedded: the SQLite \
         anchor above, in rows/s; scale-out: the better of the PostgreSQL bulk upserts). Ratio = \
         nsready's committed rows/s ÷ the anchor's rows/s. Flame graphs of the embedded path \
         (batch-500 load, `perf record --call-graph dwarf`, inferno): \
         [before](docs/profile-embedded-before.svg), [after](docs/profile-embedded-after.svg).\n"
    )?;
    writeln!(
        w,
        "| target | measured | anchor (same run) | ratio | | where the time goes (CPU accounting of the run) |\n|---|---|---|---|---|---|"
    )?;
    let rate_row =
        |w: &mut String, label: &str, name: &str, target: f64, embedded: bool| -> Result<()> {
            let r = get(name);
            let ev = r["committed_events_per_s"].as_f64();
            let rows = r["committed_rows_per_s"].as_f64();
            let a = if embedded { anchor } else { up_best };
            let ok = ev.is_some_and(|v| v >= target) && pass(&r);
            let why = if ok {
                "-".to_string()
            } else {
                cpu_words(
                    d,
                    name,
                    meta,
                    r["accepted_events"].as_f64().unwrap_or(0.0),
                    &sqlite,
                    embedded,
                ) + &rate_ceiling(d, name, meta, target, a, embedded)
            };
            writeln!(
                w,
                "| {label} | {} events/s = {} rows/s, {} | {} rows/s | {} | {} | {why} |",
                num(&r["committed_events_per_s"]),
                num(&r["committed_rows_per_s"]),
                r["verification"]["status"].as_str().unwrap_or("?"),
                a.map_or_else(|| "-".into(), group),
                ratio(rows, a),
                mark(ok)
            )?;
            Ok(())
        };
    rate_row(
        w,
        "embedded, batch 500: ≥ 50,000 events/s committed",
        "emb-batch",
        50_000.0,
        true,
    )?;
    rate_row(
        w,
        "embedded, single-event POSTs: ≥ 20,000 events/s",
        "emb-single",
        20_000.0,
        true,
    )?;
    let eh = get("emb-half");
    let p99 = eh["commit_latency_ms"]["p99"].as_f64();
    let ok = p99.is_some_and(|v| v <= 250.0);
    writeln!(
        w,
        "| embedded, at half the single-event rate ({} events/s): POST → committed p99 ≤ 250 ms | {} ms (POST p99 {} ms) | - | - | {} | {} |",
        num(&meta["emb_half_rate"]),
        ms(&eh["commit_latency_ms"]["p99"]),
        ms(&eh["latency_ms"]["p99"]),
        mark(ok),
        if ok {
            "-".to_string()
        } else {
            cpu_words(
                d,
                "emb-half",
                meta,
                eh["accepted_events"].as_f64().unwrap_or(0.0),
                &sqlite,
                true,
            )
        }
    )?;
    // Memory: flat when the last half of the run peaks no more than 10 % above the first.
    let samples = rss_samples(d);
    let peaks = hwm(d);
    if let Some(s) = samples.get("serve-embedded").filter(|s| s.len() >= 4) {
        let half = s.len() / 2;
        let first = s[..half].iter().map(|x| x.1).max().unwrap_or(0);
        let last = s[half..].iter().map(|x| x.1).max().unwrap_or(0);
        let ok = (last as f64) <= 1.10 * first as f64;
        writeln!(
            w,
            "| embedded: memory flat over the run, bounded | VmHWM {} MiB; peak VmRSS first half {} MiB, second half {} MiB | - | - | {} | bound: SQLite page caches (queue 32 MiB + store writer 64 MiB + reader 16 MiB + 2 × 1 MiB for the checkpoint connections) + the collector's in-flight bodies (README, Memory) |",
            peaks
                .get("serve-embedded")
                .map_or_else(|| "-".into(), |k| mib(*k)),
            mib(first),
            mib(last),
            mark(ok)
        )?;
    }
    // The drain's anchor: the same rows upserted into the same server right before the drain
    // (`drain-anchor`); the start-of-run figure when that was not measured.
    let drain_anchor = read_json(d, "drain-anchor");
    let (anchor_rows, anchor_what) =
        match drain_anchor["postgres"]["upsert_platform_schema_rows_per_s_2conn"].as_f64() {
            Some(a) => (
                Some(a),
                "the same rows, 2 connections, right before the drain",
            ),
            None => (up_best, "start of the run"),
        };
    let drain_ratio = match (drain_rows_per_s, anchor_rows) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let ok = drain_ratio.is_some_and(|r| r >= 0.70);
    let backlog = read_json(d, "backlog");
    let pg_drain = pg_ms_per_k_rows(d, "backlog", backlog["rows"].as_f64());
    let pg_anchor = pg_ms_per_k_rows(d, "drain-anchor", drain_anchor["postgres"]["rows"].as_f64());
    let pg_words = match (pg_drain, pg_anchor) {
        (Some(a), Some(b)) => format!(
            "; postgres CPU per 1,000 rows: drain {a:.0} ms, anchor {b:.0} ms (the same statement; \
             the gap is the cores the drain gives to nats-server and the worker)"
        ),
        _ => String::new(),
    };
    writeln!(
        w,
        "| scale-out: backlog drain ≥ 70 % of the raw bulk upsert | {} rows/s | {} rows/s ({anchor_what}; start of the run: {} rows/s) | {} | {} | {}{pg_words} |",
        drain_rows_per_s.map_or_else(|| "-".into(), group),
        anchor_rows.map_or_else(|| "-".into(), group),
        up_best.map_or_else(|| "-".into(), group),
        ratio(drain_rows_per_s, anchor_rows),
        mark(ok),
        cpu_words(
            d,
            "backlog",
            meta,
            backlog["events"].as_f64().unwrap_or(0.0),
            &sqlite,
            false,
        )
    )?;
    rate_row(
        w,
        "scale-out, batch requests: ≥ 25,000 events/s",
        "so-batch",
        25_000.0,
        false,
    )?;
    let half = get("so-half");
    let post = half["latency_ms"]["p99"].as_f64();
    let commit = half["commit_latency_ms"]["p99"].as_f64();
    let ok = post.is_some_and(|v| v <= 5.0) && commit.is_some_and(|v| v <= 200.0);
    writeln!(
        w,
        "| scale-out, at half the single-event rate ({} events/s): POST p99 ≤ 5 ms, POST → committed p99 ≤ WORKER_BATCH_TIMEOUT + 100 ms = 200 ms | POST p99 {} ms, → committed p99 {} ms | - | - | {} | {} |\n",
        num(&meta["half_rate"]),
        ms(&half["latency_ms"]["p99"]),
        ms(&half["commit_latency_ms"]["p99"]),
        mark(ok),
        if ok {
            "-".to_string()
        } else {
            let s = &half["server"];
            format!(
                "{}; server-side split: the wait for JetStream's publish acknowledgement has \
                 p99 {} ms (of the POST's {} ms: nats-server's file store, not nsready's code); \
                 POST → committed = the batch wait (WORKER_BATCH_TIMEOUT, 100 ms) + the DB \
                 write per batch (p99 {} ms) + the publish",
                cpu_words(
                    d,
                    "so-half",
                    meta,
                    half["accepted_events"].as_f64().unwrap_or(0.0),
                    &sqlite,
                    false,
                ),
                ms(&s["publish_ms"]["p99"]),
                ms(&half["latency_ms"]["p99"]),
                ms(&s["db_write_ms"]["p99"]),
            )
        }
    )?;
    Ok(())
}

/// `## MQTT QoS 1 beside HTTP single-event (issue 14)`: `examples/mqtt_load` into the MQTT
/// listener of the same `serve` that the HTTP single-event run used, right after it.
fn mqtt_section(w: &mut String, d: &Path, runs: &[(&str, &str, Value)]) -> Result<()> {
    let pairs = [
        ("scale-out `serve`", "so-single", "so-mqtt"),
        ("embedded `serve`", "emb-single", "emb-mqtt"),
    ];
    if pairs.iter().all(|(_, _, m)| read_json(d, m).is_null()) {
        return Ok(());
    }
    writeln!(
        w,
        "## MQTT QoS 1 beside HTTP single-event (same run, same `serve`)\n"
    )?;
    writeln!(
        w,
        "MQTT: `examples/mqtt_load.rs` (rumqttc), QoS 1 publishes of one event (3 metrics, so 3 rows, as HTTP's) to \
         `nsready/ingest`; a PUBACK is sent only once the queue holds the event durably, so \
         acknowledged events/s is the figure to compare with HTTP's 200s. HTTP: `nsready loadgen`, \
         single-event POSTs. CPU: nsready's own process time \
         (/proc utime + stime) per 1,000 events, the client excluded. Rows check: the serve's \
         `ingest_rows_total` grew by at least 3 rows per acknowledged event once its queue was empty.\n"
    )?;
    writeln!(
        w,
        "| deployment | path | in flight | events/s (acknowledged) | ack / POST latency p50 / p99 (ms) | nsready CPU ms per 1,000 events | rows check |"
    )?;
    writeln!(w, "|---|---|---|---|---|---|---|")?;
    let get = |name: &str| {
        runs.iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, v)| v.clone())
            .unwrap_or(Value::Null)
    };
    let cpu_per_k = |name: &str, events: Option<f64>| -> String {
        let c = read_json(d, &format!("{name}.cpu"));
        match (c["nsready_s"].as_f64(), events) {
            (Some(s), Some(e)) if e > 0.0 => format!("{:.0}", 1000.0 * 1000.0 * s / e),
            _ => "-".into(),
        }
    };
    for (label, http, mqtt) in pairs {
        let h = get(http);
        let m = read_json(d, mqtt);
        writeln!(
            w,
            "| {label} | HTTP single-event | {} | {} | {} / {} | {} | {} |",
            h["concurrency"].as_u64().unwrap_or(0),
            num(&h["accepted_events_per_s"]),
            ms(&h["latency_ms"]["p50"]),
            ms(&h["latency_ms"]["p99"]),
            cpu_per_k(http, h["accepted_events"].as_f64()),
            h["verification"]["status"].as_str().unwrap_or("-"),
        )?;
        let in_flight = m["connections"].as_u64().unwrap_or(0) * m["window"].as_u64().unwrap_or(0);
        writeln!(
            w,
            "| {label} | MQTT QoS 1 | {} connections × {} = {in_flight} | {} | {} / {} | {} | {} ({} rows for {} acknowledged events) |",
            m["connections"].as_u64().unwrap_or(0),
            m["window"].as_u64().unwrap_or(0),
            num(&m["acked_per_s"]),
            ms(&m["ack_p50_ms"]),
            ms(&m["ack_p99_ms"]),
            cpu_per_k(mqtt, m["acked"].as_f64()),
            m["status"].as_str().unwrap_or("-"),
            num(&m["rows"]),
            num(&m["acked"]),
        )?;
    }
    writeln!(w)?;
    Ok(())
}
