//! loadgen: numbers into the human table and the JSON report.

use hdrhistogram::Histogram;

use super::drain::Drained;
use super::drive::Load;
use super::prepare::Prepared;
use super::verify::Verdict;
use super::*;

/// CPU time (user + system) this process used so far, in seconds: the client's own share
/// of the machine, which on a small box is part of every figure.
pub(super) fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return None;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(tv(usage.ru_utime) + tv(usage.ru_stime))
}

/// The client-side latency summary (milliseconds) of a histogram of microseconds.
pub(super) fn latency_json(h: &Histogram<u64>, per: &str) -> Value {
    let ms = |us: u64| json!(round(us as f64 / 1000.0, 3));
    if h.is_empty() {
        return json!({"per": per, "samples": 0, "mean": null, "p50": null, "p95": null,
                      "p99": null, "max": null});
    }
    json!({
        "per": per,
        "samples": h.len(),
        "mean": json!(round(h.mean() / 1000.0, 3)),
        "p50": ms(h.value_at_quantile(0.50)),
        "p95": ms(h.value_at_quantile(0.95)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
    })
}

/// The JSON report of a run (also the source of the human table).
pub(super) fn build(
    run: &Prepared,
    load: &Load,
    drained: Option<&Drained>,
    server: Option<&Scrape>,
    rows_after: Option<u64>,
    verdict: &Verdict,
) -> Value {
    let shared = &run.shared;
    let args = &run.args;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let accepted_events = get(&shared.accepted_events);
    let accepted_rows = get(&shared.accepted_rows);
    let committed_rows = rows_after.map(|a| a.saturating_sub(run.rows_before));
    let total_secs = match drained {
        Some(Drained::After(t)) => Some(*t),
        _ => None,
    };
    let rate_of = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let first_error = shared.first_error.lock().ok().and_then(|e| e.clone());
    let client_cpu = cpu_seconds().map(|c| round(c - run.cpu_at_start.unwrap_or(0.0), 2));
    json!({
        "url": run.base,
        "mode": if args.batch > 0 { "batch" } else { "single" },
        "batch": args.batch,
        "devices": shared.targets.len(),
        "metrics_per_event": shared.targets.iter().map(|t| t.per_event).max().unwrap_or(0),
        "rate_target": args.rate,
        "concurrency": args.concurrency,
        "auth": if args.mint_tokens { "device tokens" } else if run.endpoint.auth.is_some() { "shared token" } else { "none" },
        "duration_s": args.duration.as_secs_f64(),
        "requests": get(&shared.requests),
        "sent_events": get(&shared.sent_events),
        "accepted_events": accepted_events,
        "accepted_rows": accepted_rows,
        "refused_503_events": get(&shared.refused_events),
        "rejected_4xx_events": get(&shared.rejected_events),
        "failed_events": get(&shared.failed_events),
        "first_error": first_error,
        "client_cpu_s": client_cpu,
        "load_s": round(load.secs, 3),
        "drained_s": total_secs.map(|t| round(t, 3)),
        "accepted_events_per_s": round(rate_of(accepted_events, load.secs), 1),
        "committed_rows_per_s": match (committed_rows, total_secs) {
            (Some(r), Some(t)) => json!(round(rate_of(r, t), 1)),
            _ => Value::Null,
        },
        "committed_events_per_s": match total_secs {
            Some(t) => json!(round(rate_of(accepted_events, t), 1)),
            None => Value::Null,
        },
        "latency_ms": latency_json(
            &load.latencies,
            if args.batch > 0 { "request (batch)" } else { "request (event)" },
        ),
        "commit_latency_ms": server.map_or(Value::Null, |sv| {
            let mut v = hist_json(&sv.processing, 1000.0, 2);
            v["source"] = json!(format!(
                "{} (publish → commit, per event, bucket-interpolated)",
                nsready::metrics::names::PROCESSING_SECONDS
            ));
            v
        }),
        "server": server.map_or(Value::Null, |sv| json!({
            "db_write_ms": hist_json(&sv.db_write, 1000.0, 2),
            "batch_size": hist_json(&sv.batch_size, 1.0, 1),
            "publish_ms": hist_json(&sv.publish, 1000.0, 3),
            "rows_counted_by_workers": sv.rows_total,
        })),
        "rows_before": run.rows_before,
        "rows_after": rows_after,
        "verification": {
            "status": verdict.status.as_str(),
            "expected_rows": accepted_rows,
            "actual_rows": committed_rows,
            "note": verdict.note,
        },
    })
}

pub(super) fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

pub(super) fn hist_json(h: &Hist, scale: f64, unit_digits: i32) -> Value {
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
pub(super) fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn fmt_ms(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_string(), |v| format!("{v:.2} ms"))
}

pub(super) fn print_human(r: &Value) {
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
