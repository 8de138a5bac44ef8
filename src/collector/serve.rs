//! The HTTP server around the router: accept loop, connection cap, header and idle
//! timeouts, and a shutdown that no client can hold.
//!
//! `axum::serve` cannot bound a slow client, so connections are served here with hyper's
//! HTTP/1.1 connection builder (HTTP/1.1 only, as `axum::serve` with axum's default
//! features):
//!
//! - **Connection cap** (`HTTP_MAX_CONNECTIONS`): a semaphore permit is taken *before*
//!   `accept`, so at the cap the server stops accepting and new connections wait in the
//!   kernel's listen backlog; each is accepted as soon as an open one closes (an idle one
//!   within `HTTP_IDLE_TIMEOUT`, a slow sender within `HTTP_HEADER_TIMEOUT`). Waiting in the
//!   backlog costs the service nothing, and a client is never answered with a reset it could
//!   mistake for a network fault.
//! - **Header timeout** (`HTTP_HEADER_TIMEOUT`): counted from the first byte of a request to
//!   the end of its headers; a client that trickles its headers (slowloris) is disconnected.
//! - **Idle timeout** (`HTTP_IDLE_TIMEOUT`): a connection with no request in progress and no
//!   byte received for this long (after accept, or after the previous response) is closed.
//! - The body is bounded by `HTTP_BODY_TIMEOUT` in [`super::body::read_body`] (408), and the
//!   number of ingest requests in progress by the in-flight cap of [`super::router`] (503).
//!
//! - **TLS** (`TLS_CERT_FILE`, [`super::tls`]): the handshake runs in the connection's own
//!   task, after the permit is taken, and must finish within `HTTP_HEADER_TIMEOUT`, so a
//!   client that connects and never handshakes holds its slot no longer than one that
//!   never finishes its headers. A failed handshake (no or an untrusted client certificate
//!   under mTLS, plain HTTP on the TLS port) closes the connection.
//!
//! Each connection has a watchdog fed by the socket's reads and by the requests' start and
//! end (hyper's own header timer starts when a connection goes idle, so it cannot tell a
//! slow request from an idle keep-alive connection).
//!
//! **Shutdown**: once the shutdown handle fires the listener is closed (new connections are
//! refused), every connection is asked to stop gracefully (idle ones close at once, in-flight
//! requests finish and get their answer, with `Connection: close`), and when
//! `SHUTDOWN_TIMEOUT` has passed since the signal, whatever is still open — a client stalled
//! half-way through a body, say — is dropped. [`run`] returns that deadline so the caller
//! gives the workers the same budget.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::tls::TlsAcceptor;
use crate::shutdown::Shutdown;

/// Most bytes hyper buffers per connection while reading a request head (headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Bounds of the server, from `HttpArgs` (validated: every value positive).
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// First byte of a request to the end of its headers.
    pub header_timeout: Duration,
    /// Longest quiet time of a connection with no request in progress.
    pub idle_timeout: Duration,
    /// Most open client connections.
    pub max_connections: usize,
    /// From the shutdown signal to dropping the connections still open.
    pub shutdown_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` fires, then drains (see the module
/// comment). Returns the instant at which `SHUTDOWN_TIMEOUT` ends. With `tls`, every
/// connection is HTTPS.
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    tls: Option<TlsAcceptor>,
    shutdown: &Shutdown,
) -> Instant {
    let max = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max));
    let stop = shutdown.token();
    let hard_stop = CancellationToken::new();
    loop {
        // At the cap, stop accepting: new connections wait in the backlog.
        let permit = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the open connections,
                // try again shortly. A connection that failed during its handshake is
                // the client's problem only.
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        shutdown.spawn(handshake_then_serve(
            tcp,
            tls.clone(),
            router.clone(),
            limits,
            stop.clone(),
            hard_stop.clone(),
            permit,
        ));
    }
    // Closing the listener refuses new connections at once.
    drop(listener);
    let deadline = Instant::now()
        .checked_add(limits.shutdown_timeout)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
    let open = max - slots.available_permits();
    tracing::info!(
        open,
        "HTTP: stopped accepting; finishing in-flight requests"
    );
    let all_closed = slots.clone().acquire_many_owned(max as u32);
    match tokio::time::timeout_at(deadline, all_closed).await {
        Ok(_) => tracing::info!("HTTP: every connection closed"),
        Err(_) => {
            let open = max - slots.available_permits();
            tracing::warn!(
                open,
                "SHUTDOWN_TIMEOUT passed with connections still open; dropping them"
            );
            hard_stop.cancel();
            // Dropping a connection is immediate; the bound only guards against a bug.
            let all_closed = slots.clone().acquire_many_owned(max as u32);
            let _ = tokio::time::timeout(Duration::from_secs(1), all_closed).await;
        }
    }
    deadline
}

/// Runs the TLS handshake (when configured) within `HTTP_HEADER_TIMEOUT`, then serves.
async fn handshake_then_serve(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: ServerLimits,
    graceful: CancellationToken,
    hard_stop: CancellationToken,
    slot: OwnedSemaphorePermit,
) {
    let Some(acceptor) = tls else {
        return connection(tcp, router, limits, graceful, hard_stop, slot).await;
    };
    let handshake = tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp));
    let stream = tokio::select! {
        r = handshake => match r {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed; connection closed");
                return;
            }
            Err(_) => {
                tracing::debug!(timeout = "HTTP_HEADER_TIMEOUT", "TLS handshake not finished in time; connection closed");
                return;
            }
        },
        // No request has started on a connection still in its handshake: nothing to finish.
        () = graceful.cancelled() => return,
        () = hard_stop.cancelled() => return,
    };
    connection(stream, router, limits, graceful, hard_stop, slot).await
}

/// Serves one connection until it ends, times out, or the hard stop comes.
async fn connection<IO>(
    tcp: IO,
    router: Router,
    limits: ServerLimits,
    graceful: CancellationToken,
    hard_stop: CancellationToken,
    _slot: OwnedSemaphorePermit,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let watch = Arc::new(Watch::new());
    let io = TokioIo::new(Watched {
        inner: tcp,
        watch: watch.clone(),
    });
    let requests = watch.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let in_progress = requests.begin();
        let answer = router.clone().oneshot(req);
        async move {
            let r = answer.await;
            drop(in_progress);
            r
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // Bounds what one connection may buffer for a request head (hyper's default is
        // ~400 KiB): 1,024 connections × 64 KiB, not 1,024 × 400 KiB. A longer head is
        // answered 431 by hyper.
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = graceful.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = hard_stop.cancelled() => return,
            why = watch.expired(limits) => {
                tracing::debug!(timeout = why, "HTTP connection closed");
                return;
            }
        }
    }
}

/// What the watchdog of one connection knows: requests in progress, when the connection
/// went quiet, when the bytes of the next request began.
struct Watch {
    start: Instant,
    /// Requests whose answer is not produced yet.
    in_progress: AtomicUsize,
    /// Milliseconds from `start` to the accept or the end of the last answer.
    idle_since: AtomicU64,
    /// Milliseconds from `start` to the first byte of the next request, plus one; 0: none.
    head_at: AtomicU64,
    changed: Notify,
}

/// Marks one request in progress until dropped (also when the request's future is dropped).
struct InProgress(Arc<Watch>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let w = &self.0;
        if w.in_progress.fetch_sub(1, Ordering::AcqRel) == 1 {
            w.head_at.store(0, Ordering::Release);
            w.idle_since.store(w.now_ms(), Ordering::Release);
        }
        w.changed.notify_one();
    }
}

impl Watch {
    fn new() -> Self {
        Watch {
            start: Instant::now(),
            in_progress: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_at: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The headers of a request are in: its body and handler have their own bounds.
    fn begin(self: &Arc<Self>) -> InProgress {
        self.in_progress.fetch_add(1, Ordering::AcqRel);
        self.head_at.store(0, Ordering::Release);
        self.changed.notify_one();
        InProgress(self.clone())
    }

    /// Bytes arrived: between requests, that starts the header clock.
    fn on_read(&self) {
        if self.in_progress.load(Ordering::Acquire) == 0
            && self.head_at.load(Ordering::Acquire) == 0
        {
            self.head_at
                .store(self.now_ms().saturating_add(1), Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// Completes with the name of the timeout once the connection has overstayed one.
    async fn expired(&self, limits: ServerLimits) -> &'static str {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        loop {
            let due = if self.in_progress.load(Ordering::Acquire) > 0 {
                None
            } else {
                match self.head_at.load(Ordering::Acquire) {
                    0 => Some((
                        self.idle_since
                            .load(Ordering::Acquire)
                            .saturating_add(ms(limits.idle_timeout)),
                        "HTTP_IDLE_TIMEOUT",
                    )),
                    at => Some((
                        (at - 1).saturating_add(ms(limits.header_timeout)),
                        "HTTP_HEADER_TIMEOUT",
                    )),
                }
            };
            match due {
                None => self.changed.notified().await,
                Some((at, why)) => {
                    if self.now_ms() >= at {
                        return why;
                    }
                    let when = self
                        .start
                        .checked_add(Duration::from_millis(at))
                        .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
                    tokio::select! {
                        () = tokio::time::sleep_until(when) => {}
                        () = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// The client socket (or its TLS stream: decrypted bytes), reporting its reads to the
/// watchdog.
struct Watched<IO> {
    inner: IO,
    watch: Arc<Watch>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.watch.on_read();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
