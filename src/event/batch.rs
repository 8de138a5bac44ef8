//! `/v1/ingest/batch` bodies: a JSON array of events, or NDJSON (one event per line).
//! Problems with the body as a whole reject it; problems with one item are reported for
//! that item only, so the valid ones can still be queued.
//!
//! Memory is bounded by the limits, not by the body's shape: the array is walked item by
//! item (each item is first taken as raw text, so its size is known before anything is
//! built, then parsed on its own), items are counted while parsing, and each parsed item is
//! handed to the caller at once instead of collecting a tree of the whole body.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::parse::{self, Clock, body_rejection, is_blank};
use super::{NormalizedEvent, Rejection};

/// Most events one batch request may carry.
pub const MAX_BATCH_EVENTS: usize = 10_000;

const MSG_NO_EVENTS: &str = "must contain at least one event";
const MSG_NOT_ARRAY: &str = "must be a JSON array of events";

/// One batch item, as the parser hands it to the caller.
pub type Item = Result<NormalizedEvent, Rejection>;

fn too_many(count: usize) -> Rejection {
    body_rejection(format!(
        "must contain at most {MAX_BATCH_EVENTS} events (got {count}); split the batch"
    ))
}

/// The item's own rejection when its text is larger than one event may be.
fn too_large(size: usize, max_item: usize) -> Rejection {
    body_rejection(format!(
        "this event is {size} bytes; one event may be at most {max_item} bytes \
         (INGEST_MAX_BODY_BYTES), also inside a batch"
    ))
}

/// Parses one item's text, unless it is too large.
fn item(text: &[u8], line_offset: usize, clock: &Clock, max_item: usize) -> Item {
    if text.len() > max_item {
        return Err(too_large(text.len(), max_item));
    }
    parse::event_from_bytes(text, line_offset, clock)
}

/// A JSON array of event objects; `each(index, item)` is called for every item in order.
/// Returns the number of items.
pub(super) fn json_array(
    body: &[u8],
    clock: &Clock,
    max_item: usize,
    each: &mut dyn FnMut(usize, Item),
) -> Result<usize, Rejection> {
    if is_blank(body) {
        return Err(body_rejection(parse::MSG_EMPTY_BODY));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut walker = ArrayWalker {
        clock,
        max_item,
        each,
        count: 0,
        over_limit: None,
    };
    let walked = (&mut walker).deserialize(&mut de).and_then(|()| de.end());
    match walked {
        Ok(()) => {}
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return Err(body_rejection(MSG_NOT_ARRAY));
        }
        Err(e) => return Err(body_rejection(parse::malformed_json_message(&e, 0))),
    }
    if let Some(total) = walker.over_limit {
        return Err(too_many(total));
    }
    if walker.count == 0 {
        return Err(body_rejection(MSG_NO_EVENTS));
    }
    Ok(walker.count)
}

/// Walks the top-level array: each element as raw text, parsed on its own.
struct ArrayWalker<'a, 'f> {
    clock: &'a Clock,
    max_item: usize,
    each: &'f mut dyn FnMut(usize, Item),
    count: usize,
    /// Set (to the total count) when the array has more than [`MAX_BATCH_EVENTS`] items.
    over_limit: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for &mut ArrayWalker<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for &mut ArrayWalker<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MSG_NOT_ARRAY)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if self.count == MAX_BATCH_EVENTS {
                // Count the rest without building anything, for an exact message.
                let mut total = self.count + 1;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    total += 1;
                }
                self.over_limit = Some(total);
                return Ok(());
            }
            let parsed = item(raw.get().as_bytes(), 0, self.clock, self.max_item);
            (self.each)(self.count, parsed);
            self.count += 1;
        }
        Ok(())
    }
}

/// One event object per line; blank lines (and a trailing `\r`) are ignored. A line that is
/// not JSON is an error of that item, reported with its line number in the body.
/// `each(index, item)` is called for every item in order; returns the number of items.
pub(super) fn ndjson(
    body: &[u8],
    clock: &Clock,
    max_item: usize,
    each: &mut dyn FnMut(usize, Item),
) -> Result<usize, Rejection> {
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
    for (index, (line_no, line)) in lines().enumerate() {
        // serde_json counts lines from 1 within the line it is given.
        each(index, item(line, line_no, clock, max_item));
    }
    Ok(count)
}
