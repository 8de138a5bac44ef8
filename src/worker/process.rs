//! One batch, from deliveries to settled messages.
//!
//! Decode and fully check every message (it may not come from our collector), run the
//! registry checks, then write all good rows in one transaction, deduplicated (last wins)
//! and sorted by key. A batch the database refuses is bisected until the bad message is
//! alone (`write.rs`), so one poison event costs only itself. Every message ends with an
//! [`Outcome`]; `settle.rs` turns it into ack, NAK or dead letter at the end.
//! Invariant: a message is acked only after its rows are committed.

use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Timelike, Utc};

use super::Ctx;
use super::disposition::{Outcome, after_registry_failure};
use super::settle::settle;
use super::write::write_rows;
use crate::event::NormalizedEvent;
use crate::event::envelope::{self, Decoded};
use crate::metrics::ErrorType;
use crate::queue::{Delivery, Queue};
use crate::store::{Row, Store};

/// What a batch did, for the pool's pause logic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchResult {
    /// Every message is settled; `committed` of them landed.
    Settled { committed: usize },
    /// The store failed for infrastructure reasons: messages were NAKed; pause pulling.
    StoreDown,
}

/// One message while the batch is processed.
pub(super) struct Item<H> {
    pub(super) delivery: Option<Delivery<H>>,
    pub(super) decoded: Option<Decoded>,
    pub(super) outcome: Option<Outcome>,
}

/// The typed error type of a label from the event decoder or the registry checks, which
/// speak strings; an unknown label (a bug there) counts as a validation error.
pub(super) fn error_type(label: &str) -> ErrorType {
    ErrorType::from_label(label).unwrap_or(ErrorType::ValidationError)
}

/// Processes one batch and settles every message in it.
pub async fn process_batch<Q: Queue, S: Store>(
    ctx: &Ctx<Q, S>,
    deliveries: Vec<Delivery<Q::Handle>>,
) -> BatchResult {
    let redelivered = deliveries.iter().filter(|d| d.delivered > 1).count() as u64;
    if redelivered > 0 {
        ctx.metrics.redeliveries(redelivered);
    }
    let mut items: Vec<Item<Q::Handle>> = deliveries
        .into_iter()
        .map(|d| {
            let (decoded, outcome) = match envelope::decode_with(&d.payload, ctx.window) {
                Ok(dec) => (Some(dec), None),
                Err(e) => (
                    None,
                    Some(Outcome::Permanent {
                        error_type: error_type(e.error_type),
                        reason: e.reason,
                    }),
                ),
            };
            Item {
                delivery: Some(d),
                decoded,
                outcome,
            }
        })
        .collect();

    let store_down = check_registry(ctx, &mut items).await || write_rows(ctx, &mut items).await;
    if ctx.crash_after_commit && items.iter().any(|i| i.outcome == Some(Outcome::Committed)) {
        tracing::error!("failpoint crash-after-commit: aborting before the acks");
        std::process::abort();
    }
    settle(ctx, items, store_down).await
}

/// Runs the business checks; marks failures. Returns true when the registry could not be
/// read (every undecided message then counts as an infrastructure failure).
async fn check_registry<Q: Queue, S: Store>(
    ctx: &Ctx<Q, S>,
    items: &mut [Item<Q::Handle>],
) -> bool {
    let events: Vec<&NormalizedEvent> = items
        .iter()
        .filter_map(|i| i.decoded.as_ref().map(|d| &d.event))
        .collect();
    if events.is_empty() {
        return false;
    }
    match ctx.registry.check_all(&events).await {
        Ok(results) => {
            let mut results = results.into_iter();
            for item in items.iter_mut().filter(|i| i.decoded.is_some()) {
                if let Some(Err(f)) = results.next() {
                    item.outcome = Some(Outcome::Retryable {
                        error_type: error_type(f.error_type),
                        reason: f.reason,
                    });
                }
            }
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "registry could not be loaded; pausing");
            ctx.metrics.database_error();
            let outcome = after_registry_failure(&e);
            for item in items.iter_mut().filter(|i| i.outcome.is_none()) {
                item.outcome = Some(outcome.clone());
            }
            true
        }
    }
}

pub(super) fn mark_infrastructure<H>(items: &mut [Item<H>]) {
    for item in items.iter_mut().filter(|i| i.outcome.is_none()) {
        item.outcome = Some(Outcome::Infrastructure);
    }
}

/// Rows of the given events, deduplicated by key (the later message wins) and sorted by
/// key, so concurrent writers take row locks in the same order.
pub fn build_rows<'a>(events: impl Iterator<Item = &'a Decoded>) -> Vec<Row> {
    // (arrival order, row); sorting and deduplicating beats hashing every key.
    let mut rows: Vec<(usize, Row)> = Vec::new();
    for d in events {
        let e = &d.event;
        let ts = e.source_timestamp();
        let time = stored_time(ts);
        // One copy of the event's protocol for all its rows, however many metrics it has.
        let source: Arc<str> = Arc::from(e.protocol());
        let device_ts = match e.event_id() {
            Some(_) => String::new(),
            None => format!(
                "{}:{}:",
                e.device_id(),
                ts.to_rfc3339_opts(SecondsFormat::AutoSi, false)
            ),
        };
        for m in e.metrics() {
            let event_id = match e.event_id() {
                Some(id) => format!("{id}:{}", m.parameter_key()),
                None => format!("{device_ts}{}", m.parameter_key()),
            };
            let row = Row {
                time,
                device_id: e.device_id(),
                parameter_key: m.parameter_key().to_string(),
                value: m.value(),
                quality: i16::from(m.quality()),
                source: Arc::clone(&source),
                event_id,
                attributes: serde_json::Value::Object(m.attributes().clone()),
            };
            rows.push((rows.len(), row));
        }
    }
    // By key, and within a key the latest arrival first; then keep the first of each key.
    rows.sort_unstable_by(|a, b| a.1.key().cmp(&b.1.key()).then(b.0.cmp(&a.0)));
    rows.dedup_by(|later_in_vec, kept| later_in_vec.1.key() == kept.1.key());
    rows.into_iter().map(|(_, r)| r).collect()
}

/// The timestamp exactly as both stores key it, so the in-batch dedupe key is the
/// database's: truncated to microseconds (their resolution), and a leap second
/// (`23:59:60.x`, which chrono keeps as a distinct value) folded onto `23:59:59.x`, as the
/// PostgreSQL driver does when it binds it; the SQLite store gets the same folded value.
/// Events parsed by `event::parse` never reach either branch (the parser already truncates
/// and moves a leap second to the next second, as PostgreSQL's text input does); this is
/// the guard for an event built any other way.
fn stored_time(ts: DateTime<Utc>) -> DateTime<Utc> {
    let ns = ts.nanosecond();
    let ns = if ns >= 1_000_000_000 {
        ns - 1_000_000_000
    } else {
        ns
    };
    let micros = ns - ns % 1_000;
    ts.with_nanosecond(micros).unwrap_or(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(secs: u32, key: &str, value: f64) -> Decoded {
        let body = format!(
            r#"{{"project_id":"8212caa2-b928-4213-b64e-9f5b86f4cad1","site_id":"89a66770-bdcc-4c95-ac97-e1829cb7a960","device_id":"bc2c5e47-f17e-46f0-b5e7-76b214f4f6ad","protocol":"GPRS","source_timestamp":"2025-11-14T12:00:{secs:02}Z","metrics":[{{"parameter_key":"{key}","value":{value}}}]}}"#
        );
        envelope::decode(body.as_bytes()).expect("valid test event")
    }

    #[test]
    fn rows_are_deduplicated_last_wins_and_sorted_by_key() {
        let batch = [
            decoded(5, "b", 1.0),
            decoded(1, "a", 2.0),
            decoded(5, "b", 3.0),
            decoded(1, "a", 4.0),
            decoded(1, "c", 5.0),
        ];
        let rows = build_rows(batch.iter());
        let got: Vec<(u32, &str, Option<f64>)> = rows
            .iter()
            .map(|r| {
                (
                    chrono::Timelike::second(&r.time),
                    r.parameter_key.as_str(),
                    r.value,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, "a", Some(4.0)),
                (1, "c", Some(5.0)),
                (5, "b", Some(3.0))
            ]
        );
        assert!(
            rows[0]
                .event_id
                .starts_with("bc2c5e47-f17e-46f0-b5e7-76b214f4f6ad:2025-11-14T12:00:01+00:00:a")
        );
    }

    #[test]
    fn rows_of_one_event_share_its_protocol() {
        let body = r#"{"project_id":"8212caa2-b928-4213-b64e-9f5b86f4cad1","site_id":"89a66770-bdcc-4c95-ac97-e1829cb7a960","device_id":"bc2c5e47-f17e-46f0-b5e7-76b214f4f6ad","protocol":"GPRS","source_timestamp":"2025-11-14T12:00:00Z","metrics":[{"parameter_key":"a","value":1},{"parameter_key":"b","value":2},{"parameter_key":"c","value":3}]}"#;
        let d = envelope::decode(body.as_bytes()).expect("valid test event");
        let rows = build_rows(std::iter::once(&d));
        assert_eq!(rows.len(), 3);
        assert!(
            rows.windows(2)
                .all(|w| Arc::ptr_eq(&w[0].source, &w[1].source))
        );
        assert_eq!(&*rows[0].source, "GPRS");
    }

    #[test]
    fn the_dedupe_key_is_the_stored_time() {
        let base = DateTime::parse_from_rfc3339("2016-12-31T23:59:59.5Z")
            .expect("time")
            .to_utc();
        let leap = base.with_nanosecond(1_500_000_000).expect("leap second");
        assert_ne!(base, leap, "chrono keeps them apart");
        assert_eq!(stored_time(leap), base, "the database does not");
        assert_eq!(stored_time(base), base);
        let sub_micro = base.with_nanosecond(500_000_789).expect("ns");
        assert_eq!(
            stored_time(sub_micro),
            base.with_nanosecond(500_000_000).expect("us")
        );
    }
}
