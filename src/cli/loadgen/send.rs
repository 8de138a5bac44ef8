//! loadgen: the sending side: one task per in-flight slot, posting single events or
//! batches and counting what the service answered.

use super::*;

/// Answer of the batch endpoint (200 or 503), without the per-item results.
#[derive(Deserialize)]
pub(super) struct BatchCounts {
    pub(super) accepted: u64,
}

/// Answer of the batch endpoint with the per-item results.
#[derive(Deserialize)]
pub(super) struct BatchResults {
    pub(super) results: Vec<BatchItem>,
}

#[derive(Deserialize)]
pub(super) struct BatchItem {
    pub(super) index: usize,
    pub(super) trace_id: Option<serde::de::IgnoredAny>,
}

/// Outcome of one request, in events and rows.
pub(super) struct Outcome {
    pub(super) accepted_events: u64,
    pub(super) accepted_rows: u64,
    pub(super) refused_events: u64,
    pub(super) rejected_events: u64,
    pub(super) failed_events: u64,
}

/// Where and how requests go; one per sender task (clones share the connection pool).
#[derive(Clone)]
pub(super) struct Endpoint {
    pub(super) client: reqwest::Client,
    /// `/v1/ingest` or `/v1/ingest/batch`.
    pub(super) url: String,
    /// Bearer token when the service wants one (INGEST_AUTH_TOKEN).
    pub(super) auth: Option<String>,
    pub(super) batch: bool,
}

/// Sends one request for events `first..first + n` and classifies its answer.
pub(super) async fn send_one(
    ep: &Endpoint,
    shared: &Shared,
    first: u64,
    n: u64,
    body: String,
) -> Outcome {
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
    // The device's own token (--mint-tokens; a batch then has one device), else the shared.
    if let Some(token) = shared.target(first).token.as_ref().or(ep.auth.as_ref()) {
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
/// records. Returns its request latencies (microseconds) as a histogram.
pub(super) async fn sender(
    shared: Arc<Shared>,
    ep: Endpoint,
    args: Arc<LoadgenArgs>,
    start: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> hdrhistogram::Histogram<u64> {
    let per_request = args.batch.max(1) as u64;
    let requests_per_sec = if args.rate > 0.0 {
        Some(args.rate / per_request as f64)
    } else {
        None
    };
    let mut latencies = super::drive::latency_histogram();
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
        latencies.saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
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
