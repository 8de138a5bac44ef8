//! What the store can hold, checked at the door: the documented size limits of an event's
//! strings and objects, text the databases refuse (NUL), nesting the worker can decode, and
//! the time window a reading's timestamp must fall in.
//!
//! Every rule here exists so that an event the collector answers 200 for is also an event the
//! worker decodes and both stores accept (DESIGN.md §3.7): nothing is accepted only to be
//! dead-lettered later for its content. The static rules need nothing but the event; the
//! time window ([`TimeWindow`]) also needs the clock and the operator's settings.

use chrono::{DateTime, Datelike, Duration, Utc};
use serde_json::{Map, Value};

/// Longest `protocol` (after trimming), in characters.
pub const MAX_PROTOCOL_CHARS: usize = 64;
/// Longest `event_id`, in characters.
pub const MAX_EVENT_ID_CHARS: usize = 256;
/// Longest `config_version`, in characters.
pub const MAX_CONFIG_VERSION_CHARS: usize = 64;
/// Largest `attributes` object of one metric, as compact JSON, in bytes.
pub const MAX_ATTRIBUTES_BYTES: usize = 4096;
/// Largest `metadata` object of an event, as compact JSON, in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Deepest nesting inside `attributes` and `metadata` (the object itself is level 1). The
/// whole event then stays far below the JSON parser's recursion limit of 128, also inside
/// the queue envelope, which adds one level.
pub const MAX_NESTING: usize = 16;
/// Earliest and latest year of a timestamp after its offset is applied (UTC): the range
/// both stores and the canonical form (`YYYY-…`) hold.
pub const MIN_YEAR: i32 = 0;
pub const MAX_YEAR: i32 = 9999;

/// Seconds the worker adds to `INGEST_MAX_FUTURE` for clocks that differ between hosts.
pub const WORKER_CLOCK_SLACK_SECS: i64 = 300;

pub(super) const MSG_NUL: &str = "must not contain the NUL character (\\u0000)";

/// How far from the server's clock a reading's `source_timestamp` may be.
///
/// Readings far in the future would pin `v_scada_latest` (the newest row per parameter)
/// until the clock catches up, so they are refused; old readings are accepted unless an
/// operator sets a lower bound, since offline devices and backfills send them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeWindow {
    /// Latest accepted timestamp = now + this (`INGEST_MAX_FUTURE`); `None`: no upper bound.
    pub max_future: Option<Duration>,
    /// Earliest accepted timestamp = now − this (`INGEST_MAX_PAST`); `None`: no lower bound.
    pub max_past: Option<Duration>,
}

impl TimeWindow {
    /// No bounds besides the static year range.
    pub const UNBOUNDED: TimeWindow = TimeWindow {
        max_future: None,
        max_past: None,
    };

    /// The window the worker applies to queued messages: the upper bound widened by
    /// [`WORKER_CLOCK_SLACK`] (the collector's host and the worker's may disagree on the
    /// time), and no lower bound (a message accepted before a long outage must not be
    /// refused for the age it reached while queued).
    pub fn for_worker(self) -> TimeWindow {
        TimeWindow {
            max_future: self
                .max_future
                .map(|d| d + Duration::seconds(WORKER_CLOCK_SLACK_SECS)),
            max_past: None,
        }
    }

    /// The rule `ts` breaks, if any, judged at `now`.
    pub(super) fn violation(&self, ts: DateTime<Utc>, now: DateTime<Utc>) -> Option<String> {
        // Checked: a bound so wide that it leaves chrono's range is no bound.
        if let Some(latest) = self.max_future.and_then(|d| now.checked_add_signed(d))
            && ts > latest
        {
            let ahead = self.max_future.unwrap_or_default();
            return Some(format!(
                "must not be more than {} ahead of the server's clock (INGEST_MAX_FUTURE); \
                 check the device's clock",
                human(ahead)
            ));
        }
        if let Some(earliest) = self.max_past.and_then(|d| now.checked_sub_signed(d))
            && ts < earliest
        {
            let behind = self.max_past.unwrap_or_default();
            return Some(format!(
                "must not be more than {} in the past (INGEST_MAX_PAST)",
                human(behind)
            ));
        }
        None
    }
}

/// `24h`, `90m`, `45s`: the largest whole unit.
fn human(d: Duration) -> String {
    let secs = d.num_seconds();
    if secs >= 2 * 86_400 && secs % 86_400 == 0 {
        format!("{}d", secs / 86_400)
    } else if secs > 0 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs > 0 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// True when the UTC year is one the stores and the canonical form hold.
pub(super) fn year_in_range(ts: DateTime<Utc>) -> bool {
    (MIN_YEAR..=MAX_YEAR).contains(&ts.year())
}

/// The rule a string field breaks (NUL, or longer than `max_chars`), if any.
pub(super) fn text_violation(s: &str, max_chars: usize) -> Option<String> {
    if s.contains('\0') {
        return Some(MSG_NUL.to_owned());
    }
    // Bytes bound characters from above: count only when the bytes exceed the limit.
    if s.len() > max_chars && s.chars().count() > max_chars {
        return Some(format!("must be at most {max_chars} characters"));
    }
    None
}

/// The rule a JSON object field (`attributes`, `metadata`) breaks, if any: a NUL in any key
/// or string inside, nesting deeper than [`MAX_NESTING`], or more than `max_bytes` of
/// compact JSON.
pub(super) fn object_violation(map: &Map<String, Value>, max_bytes: usize) -> Option<String> {
    let mut size = 2usize; // {}
    for (i, (k, v)) in map.iter().enumerate() {
        if k.contains('\0') {
            return Some(format!("keys {MSG_NUL}"));
        }
        size += usize::from(i > 0) + json_string_len(k) + 1;
        match walk(v, 2, &mut size) {
            Ok(()) => {}
            Err(Walk::Nul) => return Some(format!("strings inside {MSG_NUL}")),
            Err(Walk::TooDeep) => {
                return Some(format!("must not be nested more than {MAX_NESTING} levels"));
            }
        }
        if size > max_bytes {
            break;
        }
    }
    if size > max_bytes {
        return Some(format!("must be at most {max_bytes} bytes as JSON"));
    }
    None
}

enum Walk {
    Nul,
    TooDeep,
}

/// Adds the compact JSON size of `v` (at nesting `level`) to `size`; fails on NUL or depth.
/// Stops adding once the size is past any sensible limit is not needed: the caller's body
/// limit already bounds the walk.
fn walk(v: &Value, level: usize, size: &mut usize) -> Result<(), Walk> {
    match v {
        Value::Null => *size += 4,
        Value::Bool(b) => *size += if *b { 4 } else { 5 },
        Value::Number(n) => *size += number_len(n),
        Value::String(s) => {
            if s.contains('\0') {
                return Err(Walk::Nul);
            }
            *size += json_string_len(s);
        }
        Value::Array(items) => {
            if level > MAX_NESTING {
                return Err(Walk::TooDeep);
            }
            *size += 2 + items.len().saturating_sub(1);
            for item in items {
                walk(item, level + 1, size)?;
            }
        }
        Value::Object(map) => {
            if level > MAX_NESTING {
                return Err(Walk::TooDeep);
            }
            *size += 2 + map.len().saturating_sub(1);
            for (k, item) in map {
                if k.contains('\0') {
                    return Err(Walk::Nul);
                }
                *size += json_string_len(k) + 1;
                walk(item, level + 1, size)?;
            }
        }
    }
    Ok(())
}

/// Length of a number as serde_json writes it.
fn number_len(n: &serde_json::Number) -> usize {
    if let Some(u) = n.as_u64() {
        decimal_digits(u)
    } else if let Some(i) = n.as_i64() {
        1 + decimal_digits(i.unsigned_abs())
    } else {
        // A float: serde_json writes the shortest round-trip form (ryu), at most 24 bytes.
        n.to_string().len()
    }
}

fn decimal_digits(mut u: u64) -> usize {
    let mut digits = 1;
    while u >= 10 {
        u /= 10;
        digits += 1;
    }
    digits
}

/// Length of a string as compact JSON (quotes and escapes included).
fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn the_size_estimate_is_the_compact_json_length() {
        for v in [
            json!({}),
            json!({"unit": "V", "n": 12, "neg": -7, "f": 2.5e-7, "t": true, "z": null}),
            json!({"nested": {"a": [1, 2, {"b": "x\"y\\z\n\u{1}"}], "e": []}, "ü": "ß"}),
            json!({"big": u64::MAX, "small": i64::MIN, "pi": std::f64::consts::PI}),
        ] {
            let text = serde_json::to_string(&v).unwrap_or_default();
            let map = obj(v);
            assert_eq!(object_violation(&map, text.len()), None, "{text}");
            assert!(object_violation(&map, text.len() - 1).is_some(), "{text}");
        }
    }

    #[test]
    fn nul_anywhere_inside_is_found() {
        for v in [
            json!({"a\u{0}": 1}),
            json!({"a": "x\u{0}"}),
            json!({"a": [{"b\u{0}": 1}]}),
            json!({"a": {"b": ["\u{0}"]}}),
        ] {
            let why = object_violation(&obj(v), 1 << 20).unwrap_or_default();
            assert!(why.contains("NUL"), "{why}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut v = json!(1);
        for _ in 0..MAX_NESTING - 1 {
            v = json!([v]);
        }
        assert_eq!(
            object_violation(&obj(json!({ "a": v.clone() })), 1 << 20),
            None
        );
        let deeper = json!({ "a": [v] });
        let why = object_violation(&obj(deeper), 1 << 20).unwrap_or_default();
        assert!(why.contains("nested"), "{why}");
    }

    #[test]
    fn the_window_refuses_the_far_future_and_optionally_the_far_past() {
        let now = DateTime::from_timestamp(1_763_121_600, 0).unwrap_or_default();
        let w = TimeWindow {
            max_future: Some(Duration::hours(24)),
            max_past: None,
        };
        assert_eq!(w.violation(now + Duration::hours(24), now), None);
        let why = w
            .violation(now + Duration::hours(25), now)
            .unwrap_or_default();
        assert!(why.contains("24h ahead"), "{why}");
        assert_eq!(w.violation(now - Duration::days(3650), now), None);
        let w = TimeWindow {
            max_future: None,
            max_past: Some(Duration::days(30)),
        };
        let why = w
            .violation(now - Duration::days(31), now)
            .unwrap_or_default();
        assert!(why.contains("30d in the past"), "{why}");
        assert_eq!(TimeWindow::UNBOUNDED.violation(now, now), None);
        let worker = w.for_worker();
        assert_eq!(worker.max_past, None);
        assert_eq!(worker.violation(now - Duration::days(3650), now), None);
    }

    #[test]
    fn text_rules() {
        assert_eq!(text_violation("GPRS", 64), None);
        assert!(text_violation("a\0b", 64).is_some());
        assert!(text_violation(&"é".repeat(64), 64).is_none());
        assert!(text_violation(&"é".repeat(65), 64).is_some());
    }
}
