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
/// `INGEST_MAX_BATCH_BYTES` each (4 GiB with the defaults) could be held at the same time.
///
/// A request's [`Reservation`] grows with what it actually holds: the body bytes as they
/// arrive, then (gzip) room for the inflated copy. A client that stalls half-way holds only
/// what it sent, so a few slow clients cannot lock everyone else out. When the budget does
/// not have the next piece, the request is answered 503 with `Retry-After` and nothing is
/// queued; the reservation is held until the answer, since the parsed events and the queue
/// messages live that long.
#[derive(Clone, Debug)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
}

impl BodyBudget {
    /// A budget of `bytes` (rounded down to whole KiB, at least one).
    pub fn new(bytes: usize) -> BodyBudget {
        let units = (bytes / BUDGET_UNIT).clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        BodyBudget {
            permits: Arc::new(Semaphore::new(units)),
        }
    }

    /// An empty reservation on this budget, for one request.
    pub fn reservation(&self) -> Reservation {
        Reservation {
            permits: Arc::clone(&self.permits),
            held: None,
            units: 0,
        }
    }
}

/// What one request holds of the [`BodyBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    permits: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    units: usize,
}

impl Reservation {
    /// Grows the reservation to cover `bytes` in all.
    ///
    /// # Errors
    /// `OverBudget` when the budget does not have the difference right now.
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), ApiError> {
        let want = bytes.div_ceil(BUDGET_UNIT);
        if want <= self.units {
            return Ok(());
        }
        let more = u32::try_from(want - self.units).map_err(|_| ApiError::OverBudget)?;
        let permit = Arc::clone(&self.permits)
            .try_acquire_many_owned(more)
            .map_err(|_| ApiError::OverBudget)?;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        self.units = want;
        Ok(())
    }
}

/// Largest expansion of deflate data (its format's theoretical limit is about 1032:1).
const MAX_INFLATE_RATIO: usize = 1032;

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
    held: &mut Reservation,
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
    let raw = match tokio::time::timeout(timeout, read_limited(body, limit, held)).await {
        Err(_elapsed) => return Err(ApiError::BodyTimeout { timeout }),
        Ok(result) => result?,
    };
    if !gzip {
        return Ok(raw);
    }
    // Room for the inflated copy, before inflating: at most the limit, and no more than
    // deflate can expand this many bytes to.
    held.grow_to(raw.len() + limit.min(raw.len().saturating_mul(MAX_INFLATE_RATIO)))?;
    gunzip(&raw, limit)
}

/// Reads the body frame by frame, at most `limit` bytes, growing `held` as bytes arrive.
async fn read_limited(body: Body, limit: usize, held: &mut Reservation) -> Result<Bytes, ApiError> {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if is_length_limit(&e) {
                ApiError::TooLarge { limit }
            } else {
                ApiError::BodyRead(e)
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry no body bytes
        };
        let total = buf.len() + data.len();
        if total > limit {
            return Err(ApiError::TooLarge { limit });
        }
        held.grow_to(total)?;
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
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

    #[test]
    fn a_reservation_grows_with_what_it_holds_and_gives_it_back() {
        let budget = BodyBudget::new(64 * 1024);
        let mut a = budget.reservation();
        assert!(a.grow_to(600).is_ok());
        assert!(a.grow_to(32 * 1024).is_ok());
        assert!(a.grow_to(100).is_ok(), "shrinking keeps what is held");
        let mut b = budget.reservation();
        assert!(b.grow_to(32 * 1024).is_ok());
        let mut c = budget.reservation();
        assert!(matches!(c.grow_to(1), Err(ApiError::OverBudget)));
        assert!(matches!(a.grow_to(33 * 1024), Err(ApiError::OverBudget)));
        drop(b);
        assert!(c.grow_to(32 * 1024).is_ok());
        assert!(matches!(c.grow_to(usize::MAX), Err(ApiError::OverBudget)));
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
        let budget = BodyBudget::new(1 << 30);
        let mut held = budget.reservation();
        read_body(
            headers,
            Body::from(raw),
            limit,
            Duration::from_secs(5),
            &mut held,
        )
        .await
    }

    #[tokio::test]
    async fn a_body_past_the_budget_is_refused_and_the_budget_given_back() {
        let budget = BodyBudget::new(4 * 1024);
        let mut held = budget.reservation();
        let out = read_body(
            &HeaderMap::new(),
            Body::from(vec![b'x'; 5000]),
            10_000,
            Duration::from_secs(5),
            &mut held,
        )
        .await;
        assert!(matches!(out, Err(ApiError::OverBudget)), "{out:?}");
        drop(held);
        let mut held = budget.reservation();
        let out = read_body(
            &HeaderMap::new(),
            Body::from(vec![b'x'; 4000]),
            10_000,
            Duration::from_secs(5),
            &mut held,
        )
        .await;
        assert_eq!(out.map(|b| b.len()).ok(), Some(4000));
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
        let budget = BodyBudget::new(1 << 20);
        let out = read_body(
            &HeaderMap::new(),
            Body::from_stream(stream),
            1000,
            Duration::from_secs(5),
            &mut budget.reservation(),
        )
        .await;
        assert!(matches!(out, Err(ApiError::BodyRead(_))), "{out:?}");
    }

    #[tokio::test]
    async fn a_body_that_never_ends_times_out() {
        let stream = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from("[")) })
            .chain(futures::stream::pending());
        let budget = BodyBudget::new(1 << 20);
        let out = read_body(
            &HeaderMap::new(),
            Body::from_stream(stream),
            1000,
            Duration::from_millis(50),
            &mut budget.reservation(),
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
