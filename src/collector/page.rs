//! The status page for people without Grafana: `GET /` on every role.
//!
//! Three small files embedded in the binary (`assets/`: HTML, script, style; nothing from a
//! CDN, nothing fetched at build or run time) and one JSON document, `GET /v1/status`, that
//! adds to `/v1/health` what the page shows besides it: version and commit, this process's
//! event counters (the page turns two readings into ingest and commit rates) and the
//! newest dead letters' error types and reasons, never their payloads. Reasons come from
//! hostile input: the JSON escapes them, the script only ever sets `textContent`, and the
//! page's Content-Security-Policy (see [`Reply::Page`]) forbids inline script.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Collector;
use super::error::Reply;
use crate::metrics::{EventStatus, GIT_SHA};
use crate::queue::{Queue, QueueStats};
use crate::store::Store;

/// Newest dead letters listed on the page.
pub const NEWEST_LETTERS: usize = 10;
/// Longest reason shown, in characters (the rest is cut, with an ellipsis).
const REASON_MAX_CHARS: usize = 300;

/// The last list of newest dead letters, reused while the DLQ is unchanged.
#[derive(Debug, Default)]
pub struct LettersCache {
    /// (DLQ last sequence, depth) the list was read at.
    key: Option<(u64, u64)>,
    letters: Vec<Value>,
}

/// `GET /`.
pub async fn index() -> Response {
    Reply::Page {
        content_type: "text/html; charset=utf-8",
        body: include_str!("assets/index.html"),
    }
    .into_response()
}

/// `GET /status.js`.
pub async fn script() -> Response {
    Reply::Page {
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("assets/status.js"),
    }
    .into_response()
}

/// `GET /status.css`.
pub async fn style() -> Response {
    Reply::Page {
        content_type: "text/css; charset=utf-8",
        body: include_str!("assets/status.css"),
    }
    .into_response()
}

/// `GET /v1/status`: version, role, this process's event counters, newest dead letters.
pub async fn status<Q: Queue, S: Store>(State(app): State<Arc<Collector<Q, S>>>) -> Response {
    let stats = app.reading().await.stats;
    let letters = match stats {
        Some(s) => Some(app.newest_letters(&s).await),
        None => None,
    };
    let m = &app.metrics;
    Reply::Status(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "git_sha": GIT_SHA,
        "role": app.role,
        "events": {
            "queued": m.event_total(EventStatus::Queued),
            "success": m.event_total(EventStatus::Success),
            "dlq": m.event_total(EventStatus::Dlq),
        },
        "oldest_age_ms": stats.map(|s| s.oldest_age_ms),
        "mqtt": app.mqtt_json(),
        "newest_dead_letters": letters,
    }))
    .into_response()
}

impl<Q: Queue, S: Store> Collector<Q, S> {
    /// The newest dead letters, newest first: the last [`NEWEST_LETTERS`] sequences of the
    /// DLQ (fewer when some were replayed or purged). Read again only when the DLQ's last
    /// sequence or depth changed; on an error the last list stays.
    async fn newest_letters(&self, s: &QueueStats) -> Vec<Value> {
        let mut cache = self.letters_cache.lock().await;
        let key = (s.dlq_last_seq, s.dlq_depth);
        if cache.key == Some(key) {
            return cache.letters.clone();
        }
        if s.dlq_depth == 0 {
            *cache = LettersCache {
                key: Some(key),
                letters: Vec::new(),
            };
            return Vec::new();
        }
        let from = s
            .dlq_last_seq
            .saturating_sub(NEWEST_LETTERS as u64 - 1)
            .max(1);
        match self.queue.dlq_list(from, NEWEST_LETTERS).await {
            Ok(list) => {
                cache.key = Some(key);
                cache.letters = list
                    .iter()
                    .rev()
                    .map(|d| {
                        json!({
                            "seq": d.seq,
                            "error_type": d.error_type,
                            "reason": cut(&d.reason),
                            "time": d.time,
                        })
                    })
                    .collect();
            }
            Err(e) => tracing::debug!(error = %e, "newest dead letters unreadable"),
        }
        cache.letters.clone()
    }
}

/// The reason, at most [`REASON_MAX_CHARS`] characters.
fn cut(reason: &str) -> String {
    match reason.char_indices().nth(REASON_MAX_CHARS) {
        Some((i, _)) => format!("{}…", &reason[..i]),
        None => reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_on_a_char_boundary() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(REASON_MAX_CHARS + 5);
        let c = cut(&long);
        assert_eq!(c.chars().count(), REASON_MAX_CHARS + 1);
        assert!(c.ends_with('…'));
    }

    #[test]
    fn assets_fetch_nothing_from_elsewhere() {
        for asset in [
            include_str!("assets/index.html"),
            include_str!("assets/status.js"),
            include_str!("assets/status.css"),
        ] {
            assert!(!asset.contains("http://") && !asset.contains("https://"));
            assert!(!asset.contains("innerHTML") && !asset.contains("<script>"));
        }
    }
}
