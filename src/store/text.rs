//! Making text storable: what goes into `error_logs` and into dead-letter headers comes
//! partly from the message (its reason quotes keys and values, its trace id comes from a
//! header any producer sets), so it is cleaned before it is written, and a dead letter can
//! never fail because of its content.
//!
//! Rules: NUL and every other control character (C0, DEL, C1; CR and LF included) become
//! U+FFFD; invalid UTF-8 becomes U+FFFD; text is cut at a byte limit on a character
//! boundary, marked with `…`. Reasons are limited to [`MAX_REASON_BYTES`], other fields
//! (trace id, device id) to [`MAX_FIELD_BYTES`].

use serde_json::Value;

/// Longest reason kept in `error_logs.message` and in the DLQ reason header (bytes).
pub const MAX_REASON_BYTES: usize = 1024;
/// Longest other text field kept (trace id, and every string in an `error_logs` context).
pub const MAX_FIELD_BYTES: usize = 256;

/// `s` without control characters, at most `max_bytes` long (cut on a character boundary,
/// `…` appended when cut; the result never exceeds `max_bytes`).
pub fn storable(s: &str, max_bytes: usize) -> String {
    const MARK: char = '…';
    let clean = |c: char| if c.is_control() { '\u{FFFD}' } else { c };
    let full: usize = s.chars().map(|c| clean(c).len_utf8()).sum();
    if full <= max_bytes {
        return s.chars().map(clean).collect();
    }
    let Some(budget) = max_bytes.checked_sub(MARK.len_utf8()) else {
        return String::new();
    };
    let mut out = String::with_capacity(max_bytes);
    for c in s.chars().map(clean) {
        if out.len() + c.len_utf8() > budget {
            break;
        }
        out.push(c);
    }
    out.push(MARK);
    out
}

/// Bytes (a header value, a payload) as storable text: invalid UTF-8 replaced, then
/// [`storable`].
pub fn storable_bytes(b: &[u8], max_bytes: usize) -> String {
    storable(&String::from_utf8_lossy(b), max_bytes)
}

/// A JSON value whose every string (keys included) is [`storable`] with
/// [`MAX_FIELD_BYTES`]: PostgreSQL's jsonb refuses `\u0000`, and a context field must not
/// carry a megabyte of header.
pub fn storable_json(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(storable(s, MAX_FIELD_BYTES)),
        Value::Array(items) => Value::Array(items.iter().map(storable_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (storable(k, MAX_FIELD_BYTES), storable_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_nul_are_replaced() {
        assert_eq!(
            storable("a\0b\r\nc\u{7f}\u{85}", 100),
            "a\u{FFFD}b\u{FFFD}\u{FFFD}c\u{FFFD}\u{FFFD}"
        );
        assert_eq!(storable("plain text", 100), "plain text");
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary_within_the_limit() {
        let s = "é".repeat(1000);
        for max in [0, 1, 2, 3, 4, 5, 10, 1024] {
            let out = storable(&s, max);
            assert!(out.len() <= max, "{max}: {}", out.len());
            if max >= 3 {
                assert!(out.ends_with('…'), "{out}");
            }
        }
        assert_eq!(storable("abc", 3), "abc", "fits exactly: not cut");
        assert_eq!(storable("abcd", 3), "…");
        assert_eq!(storable("abcdefgh", 6), "abc…");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(storable_bytes(b"a\xffb\x00", 10), "a\u{FFFD}b\u{FFFD}");
    }

    #[test]
    fn every_string_of_a_json_context_is_cleaned() {
        let v = serde_json::json!({"trace\u{0}id": "x\u{0}y", "n": 1, "list": ["\r", null],
            "long": "z".repeat(5000)});
        let out = storable_json(&v);
        let text = out.to_string();
        assert!(!text.contains("\\u0000"), "{text}");
        assert!(!text.contains("\\r"), "{text}");
        assert_eq!(out["n"], 1);
        assert!(
            out["long"]
                .as_str()
                .is_some_and(|s| s.len() <= MAX_FIELD_BYTES)
        );
        assert_eq!(out["trace\u{FFFD}id"], "x\u{FFFD}y");
    }
}
