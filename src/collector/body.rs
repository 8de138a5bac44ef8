//! Request bodies of the ingest routes: media type, bounded reading, gzip.
//!
//! [`read_body`] is the only way a handler reads a body. It bounds three things: the bytes
//! (`limit`, the compressed and the inflated size alike), the time (`timeout` for the whole
//! body, counted from the handler's start, so a client that trickles bytes cannot hold a
//! request open), and the work (gzip is inflated through a `take(limit + 1)` reader).
//! A body that cannot be read (the client reset the connection, closed it half-way, sent a
//! malformed chunked encoding) is the client's error (400), not a size problem (413 is only
//! for the length limit, recognised by `http_body_util::LengthLimitError` in the error's
//! sources); running out of time is 408.
//!
//! Gzip bodies may hold several members (`cat a.gz b.gz`, or a client that flushes members):
//! every member is inflated ([`flate2::read::MultiGzDecoder`]), so the events of all of them
//! are read, still within `limit`. Bytes after the last member that are not a gzip member are
//! refused (400 naming `body`) rather than ignored.
//!
//! A request without `Content-Type` is read as JSON ([`media_type`] gives `None`, the handlers
//! treat `None` as `application/json`): devices and scripts often omit the header, and the
//! body is checked as JSON anyway, so nothing unchecked gets in.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};

use super::error::ApiError;
use crate::event::{FieldError, Loc, Rejection};

/// Granularity of the body budget: one permit per KiB.
const BUDGET_UNIT: usize = 1024;

/// The bytes of request bodies all ingest requests together may hold at once
/// (`INGEST_MAX_INFLIGHT_BYTES`): without it, `HTTP_MAX_INFLIGHT` batches of
/// `INGEST_MAX_BATCH_BYTES` each (4 GiB with the defaults) could be read at the same time.
///
/// A request reserves, before its body is read, what it may come to hold: its declared
/// `Content-Length` (at most the route's limit), or the limit when it declares none, plus
/// the limit again for the inflated copy of a gzip body. Whatever cannot be reserved at
/// once is answered 503 with `Retry-After` (nothing was read, nothing queued); the
/// reservation is held until the answer, since the parsed events and the queue messages
/// live that long.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total: u32,
}

impl BodyBudget {
    /// A budget of `bytes` (rounded down to whole KiB, at least one).
    pub fn new(bytes: usize) -> BodyBudget {
        let units = (bytes / BUDGET_UNIT).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        BodyBudget {
            permits: Arc::new(Semaphore::new(units)),
            total: u32::try_from(units).unwrap_or(u32::MAX),
        }
    }

    /// Reserves what a request with these headers may hold under `limit`.
    ///
    /// # Errors
    /// `OverBudget` when the budget does not have it right now.
    pub fn reserve(
        &self,
        headers: &HeaderMap,
        limit: usize,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map_or(limit, |n| n.min(limit));
        let inflated = if is_gzip(headers) { limit } else { 0 };
        let units = (declared.saturating_add(inflated))
            .div_ceil(BUDGET_UNIT)
            .max(1);
        let units = u32::try_from(units).unwrap_or(u32::MAX).min(self.total);
        Arc::clone(&self.permits)
            .try_acquire_many_owned(units)
            .map_err(|_| ApiError::OverBudget)
    }
}

/// True when the body says it is gzip.
fn is_gzip(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "gzip" | "x-gzip"))
}

/// The media type of the request, lower-case, without parameters; `None` when the header
/// is missing or empty (the handlers treat that as JSON, see the module comment).
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty())
}

/// Reads the body up to `limit` bytes within `timeout`, inflating gzip (also bounded by
/// `limit`).
///
/// # Errors
/// `TooLarge` past `limit` (raw or inflated), `BodyTimeout` when the whole body did not
/// arrive within `timeout`, `BodyRead` when the connection broke or the framing is invalid,
/// `Invalid` naming `body` for data that is not gzip (or has trailing bytes after the last
/// member), `UnsupportedEncoding` for an encoding other than gzip or identity.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let gzip = match encoding.as_deref() {
        None | Some("" | "identity") => false,
        Some("gzip" | "x-gzip") => true,
        // Refused before reading: no point receiving what cannot be decoded.
        Some(other) => return Err(ApiError::UnsupportedEncoding(other.to_string())),
    };
    let raw = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_elapsed) => return Err(ApiError::BodyTimeout { timeout }),
        Ok(Err(e)) if is_length_limit(&e) => return Err(ApiError::TooLarge { limit }),
        Ok(Err(e)) => return Err(ApiError::BodyRead(e)),
        Ok(Ok(raw)) => raw,
    };
    if !gzip {
        return Ok(raw);
    }
    gunzip(&raw, limit)
}

/// Inflates every gzip member of `raw`, at most `limit` bytes in all.
fn gunzip(raw: &[u8], limit: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
    // Bounded read: a small compressed body cannot expand past the limit.
    let mut dec = flate2::read::MultiGzDecoder::new(raw).take(limit as u64 + 1);
    dec.read_to_end(&mut out).map_err(|e| {
        tracing::debug!(error = %e, "gzip body refused");
        ApiError::Invalid(Rejection::new(vec![FieldError {
            loc: vec![Loc::Key("body".into())],
            msg: "is not valid gzip data (every byte must belong to a gzip member)".into(),
        }]))
    })?;
    if out.len() > limit {
        return Err(ApiError::TooLarge { limit });
    }
    Ok(Bytes::from(out))
}

/// True when the body error is the length limit (and not the connection or the framing).
fn is_length_limit(e: &axum::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use futures::StreamExt as _;

    use super::*;

    fn with_length(n: usize, gzip: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, n.into());
        if gzip {
            h.insert(
                header::CONTENT_ENCODING,
                axum::http::HeaderValue::from_static("gzip"),
            );
        }
        h
    }

    #[test]
    fn the_body_budget_reserves_the_declared_length_or_the_limit() {
        let budget = BodyBudget::new(64 * 1024);
        // No Content-Length: the limit (32 KiB) is reserved; two fill the budget.
        let a = budget.reserve(&HeaderMap::new(), 32 * 1024);
        let b = budget.reserve(&HeaderMap::new(), 32 * 1024);
        assert!(a.is_ok() && b.is_ok());
        assert!(matches!(
            budget.reserve(&with_length(10, false), 32 * 1024),
            Err(ApiError::OverBudget)
        ));
        drop(a);
        // A declared small body takes one KiB; a declared length past the limit only the
        // limit; gzip the limit again for the inflated copy.
        let small: Vec<_> = (0..32)
            .map(|_| budget.reserve(&with_length(600, false), 32 * 1024))
            .collect();
        assert!(small.iter().all(Result::is_ok));
        assert!(budget.reserve(&with_length(1, true), 32 * 1024).is_err());
        drop(small);
        drop(b);
        let huge = budget.reserve(&with_length(usize::MAX, false), 32 * 1024);
        assert!(huge.is_ok());
        // 32 KiB left: a gzip body needs 1 KiB + 32 KiB.
        assert!(budget.reserve(&with_length(1, true), 32 * 1024).is_err());
        drop(huge);
        assert!(budget.reserve(&with_length(1, true), 32 * 1024).is_ok());
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap_or_default();
        e.finish().unwrap_or_default()
    }

    fn gzip_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_ENCODING,
            axum::http::HeaderValue::from_static("gzip"),
        );
        h
    }

    async fn read(headers: &HeaderMap, raw: Vec<u8>, limit: usize) -> Result<Bytes, ApiError> {
        read_body(headers, Body::from(raw), limit, Duration::from_secs(5)).await
    }

    #[tokio::test]
    async fn every_gzip_member_is_inflated() {
        let mut raw = gz(b"[1,");
        raw.extend(gz(b"2]"));
        let out = read(&gzip_headers(), raw, 1000).await;
        assert_eq!(out.ok().as_deref(), Some(&b"[1,2]"[..]));
    }

    #[tokio::test]
    async fn bytes_after_the_last_member_are_refused_naming_body() {
        for garbage in [&b"x"[..], b"garbage after the member", b"\n", &[0u8; 32]] {
            let mut raw = gz(b"[1]");
            raw.extend_from_slice(garbage);
            match read(&gzip_headers(), raw, 1000).await {
                Err(ApiError::Invalid(r)) => assert!(r.detail().contains("body"), "{r:?}"),
                other => panic!("{garbage:?}: expected 400, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn inflated_size_is_bounded_across_members() {
        let mut raw = gz(&[b' '; 600]);
        raw.extend(gz(&[b' '; 600]));
        assert!(matches!(
            read(&gzip_headers(), raw, 1000).await,
            Err(ApiError::TooLarge { limit: 1000 })
        ));
    }

    #[tokio::test]
    async fn the_length_limit_is_413_and_nothing_else() {
        let out = read(&HeaderMap::new(), vec![b'x'; 11], 10).await;
        assert!(
            matches!(out, Err(ApiError::TooLarge { limit: 10 })),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn a_broken_body_is_a_read_error_not_413() {
        let stream = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"[1,")),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            )),
        ]);
        let out = read_body(
            &HeaderMap::new(),
            Body::from_stream(stream),
            1000,
            Duration::from_secs(5),
        )
        .await;
        assert!(matches!(out, Err(ApiError::BodyRead(_))), "{out:?}");
    }

    #[tokio::test]
    async fn a_body_that_never_ends_times_out() {
        let stream = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("[")) })
            .chain(futures::stream::pending());
        let out = read_body(
            &HeaderMap::new(),
            Body::from_stream(stream),
            1000,
            Duration::from_millis(50),
        )
        .await;
        assert!(matches!(out, Err(ApiError::BodyTimeout { .. })), "{out:?}");
    }

    #[test]
    fn a_missing_content_type_is_none() {
        assert_eq!(media_type(&HeaderMap::new()), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert_eq!(media_type(&h).as_deref(), Some("application/json"));
    }
}
