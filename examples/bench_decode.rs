//! The per-event JSON work of the pipeline alone, for `scripts/bench` (issue 13; not a test):
//! the collector's parse of a loadgen-shaped event (3 metrics, ~600 bytes), its envelope and
//! dedupe id, and the worker's decode of that envelope, each timed over `--events` events
//! (all prepared before the clock starts). Prints one JSON object with nanoseconds per event.
//!
//! `cargo run --release --example bench_decode -- --events 200000`

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use nsready::event::envelope;
use nsready::event::{NormalizedEvent, TimeWindow};

#[derive(Parser, Debug)]
struct Args {
    /// Events per measured pass.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Passes; the fastest is reported (the others absorb the shared machine's noise).
    #[arg(long, default_value_t = 3)]
    passes: usize,
}

const PROJECT: &str = "60000000-0000-4000-8000-000000000001";

fn event(i: usize) -> String {
    let ts = chrono::DateTime::from_timestamp_micros(1_764_590_400_000_000 + i as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut metrics = Vec::new();
    for (key, unit) in [("voltage", "V"), ("current", "A"), ("power", "kW")] {
        metrics.push(format!(
            r#"{{"parameter_key":"project:{PROJECT}:{key}","value":{}.{},"quality":192,"attributes":{{"unit":"{unit}"}}}}"#,
            200 + i % 40,
            i % 100
        ));
    }
    format!(
        r#"{{"project_id":"{PROJECT}","site_id":"70000000-0000-4000-8000-000000000001","device_id":"80000000-0000-4000-8000-{:012}","protocol":"GPRS","source_timestamp":"{ts}","config_version":"v1.0","metrics":[{}]}}"#,
        i % 100 + 1,
        metrics.join(",")
    )
}

/// Fastest of `passes` runs of `f` over `n` items, in ns per item.
fn time(passes: usize, n: usize, mut f: impl FnMut()) -> f64 {
    (0..passes.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args = Args::parse();
    let bodies: Vec<String> = (0..args.events).map(event).collect();
    let events: Vec<NormalizedEvent> = bodies
        .iter()
        .map(|b| NormalizedEvent::parse(b.as_bytes()).expect("the bench event is valid"))
        .collect();
    let envelopes: Vec<Vec<u8>> = events
        .iter()
        .map(|e| envelope::encode_with_id("0123456789abcdef0123456789abcdef", e).0)
        .collect();
    let window = TimeWindow::UNBOUNDED;
    let parse = time(args.passes, bodies.len(), || {
        for b in &bodies {
            black_box(NormalizedEvent::parse_with(b.as_bytes(), window).is_ok());
        }
    });
    let encode = time(args.passes, events.len(), || {
        for e in &events {
            black_box(envelope::encode_with_id(
                "0123456789abcdef0123456789abcdef",
                e,
            ));
        }
    });
    let decode = time(args.passes, envelopes.len(), || {
        for m in &envelopes {
            black_box(envelope::decode_with(m, window).is_ok());
        }
    });
    println!(
        r#"{{"events":{},"bytes_per_event":{},"parse_ns":{parse:.0},"encode_ns":{encode:.0},"decode_ns":{decode:.0},"total_ns":{:.0}}}"#,
        bodies.len(),
        bodies.iter().map(String::len).sum::<usize>() / bodies.len().max(1),
        parse + encode + decode
    );
}
