//! `/v1/ingest/batch` bodies: a JSON array of events, or NDJSON (one event per line).
//! Problems with the body as a whole reject it; problems with one item are reported for
//! that item only, so the valid ones can still be queued.

use serde_json::Value;

use super::parse::{self, body_rejection, is_blank};
use super::{NormalizedEvent, Rejection};

/// Most events one batch request may carry.
pub const MAX_BATCH_EVENTS: usize = 10_000;

const MSG_NO_EVENTS: &str = "must contain at least one event";

type Items = Vec<Result<NormalizedEvent, Rejection>>;

fn too_many(count: usize) -> Rejection {
    body_rejection(format!(
        "must contain at most {MAX_BATCH_EVENTS} events (got {count}); split the batch"
    ))
}

/// A JSON array of event objects.
pub(super) fn json_array(body: &[u8]) -> Result<Items, Rejection> {
    if is_blank(body) {
        return Err(body_rejection(parse::MSG_EMPTY_BODY));
    }
    let Value::Array(items) = parse::json_value(body, 0).map_err(body_rejection)? else {
        return Err(body_rejection("must be a JSON array of events"));
    };
    if items.is_empty() {
        return Err(body_rejection(MSG_NO_EVENTS));
    }
    if items.len() > MAX_BATCH_EVENTS {
        return Err(too_many(items.len()));
    }
    Ok(items.into_iter().map(parse::event_from_owned).collect())
}

/// One event object per line; blank lines (and a trailing `\r`) are ignored. A line that is
/// not JSON is an error of that item, reported with its line number in the body.
pub(super) fn ndjson(body: &[u8]) -> Result<Items, Rejection> {
    let lines = || {
        body.split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, line)| !is_blank(line))
    };
    let count = lines().count();
    if count == 0 {
        // Only blank lines: the body is blank.
        return Err(body_rejection(parse::MSG_EMPTY_BODY));
    }
    if count > MAX_BATCH_EVENTS {
        return Err(too_many(count));
    }
    let mut out = Vec::with_capacity(count);
    for (index, line) in lines() {
        // serde_json counts lines from 1 within the line it is given.
        let item = parse::json_value(line, index)
            .map_err(body_rejection)
            .and_then(parse::event_from_owned);
        out.push(item);
    }
    Ok(out)
}
