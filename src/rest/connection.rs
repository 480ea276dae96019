//! The connection under the router (plain HTTP and TLS alike): how long a client may take to
//! send a request head or leave a connection idle, what a client reads when hyper refuses a
//! request before the router sees it, and how a connection ends.
//!
//! hyper's own `header_read_timeout` is not used: it starts as soon as a connection waits for a
//! request, so it cannot tell an idle keep-alive connection from a slow request head, and when it
//! fires it closes without an answer. Here a connection is *quiet* while no request is in flight
//! and every response has been flushed; a quiet connection that has received no byte of a next
//! request is closed after the idle timeout, one that has received part of a request head gets a
//! 408 OperationOutcome after the header-read timeout. While a request is in flight no timer runs
//! (the handler's own time is bounded elsewhere, e.g. the database statement timeout).
//!
//! hyper answers some malformed requests by itself (400 for a request line or header it cannot
//! parse, 414 for a request target over [`MAX_REQUEST_TARGET_BYTES`], 431 for a head over
//! [`MAX_REQUEST_HEAD_BYTES`] or more than [`MAX_HEADER_FIELDS`] fields) with an empty body. Such
//! an answer is the only thing hyper writes to a quiet HTTP/1 connection, so it is recognised there
//! and replaced by the same status with an OperationOutcome body and `Connection: close`.
//!
//! A connection is never simply dropped: its end is a *lingering close* (RFC 9112 §9.6) — the
//! server shuts down its sending side and reads and discards what the client still sends (for
//! up to [`LINGER`]), because closing a socket with unread input makes the kernel send a reset,
//! which can destroy the response the client has not read yet (a 413 for an over-long body, say).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum_server::accept::Accept;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::error::{Issue, operation_outcome};

/// Largest request head (request line and header fields) accepted over HTTP/1, in bytes (hyper's
/// read buffer; 431 above it). Set explicitly so the documented number does not move with hyper.
pub const MAX_REQUEST_HEAD_BYTES: usize = 400 * 1024;
/// Most header fields accepted in one HTTP/1 request (431 above it).
pub const MAX_HEADER_FIELDS: usize = 100;
/// Longest request target (path and query) hyper accepts over HTTP/1 (its fixed `MAX_URI_LEN`;
/// 414 above it).
pub const MAX_REQUEST_TARGET_BYTES: usize = u16::MAX as usize - 1;
/// Longest a closing connection keeps reading and discarding what its client still sends.
pub const LINGER: Duration = Duration::from_secs(5);

/// The two connection timeouts (`--header-read-timeout-secs`, `--idle-timeout-secs`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From the first byte of a request head to its end; 408 when exceeded.
    pub header_read: Duration,
    /// How long a connection may stay open with no request (before the first one, between
    /// keep-alive requests); closed without an answer when exceeded.
    pub idle: Duration,
}

/// What the service side tells the connection side: requests in flight, and whether a response
/// ended (its body was dropped by hyper) that the connection has not yet seen flushed.
#[derive(Debug, Default)]
struct Activity {
    active: usize,
    ended: bool,
}

fn lock(activity: &Mutex<Activity>) -> MutexGuard<'_, Activity> {
    activity.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An axum-server acceptor that wraps every accepted connection (after the TLS handshake, when
/// `A` is the rustls acceptor) in [`Guarded`] and its service in [`Tracked`], so both listeners
/// get the same timeouts, answers and lingering close.
#[derive(Debug, Clone)]
pub struct Guard<A> {
    inner: A,
    timeouts: Timeouts,
}

impl<A> Guard<A> {
    /// Wraps an acceptor (`DefaultAcceptor` for HTTP, `RustlsAcceptor` for HTTPS).
    pub fn new(inner: A, timeouts: Timeouts) -> Self {
        Guard { inner, timeouts }
    }
}

impl<A, I, S> Accept<I, S> for Guard<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Guarded<A::Stream>;
    type Service = Tracked<A::Service>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.inner.accept(stream, service);
        let timeouts = self.timeouts;
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            let activity = Arc::new(Mutex::new(Activity::default()));
            Ok((Guarded::new(stream, activity.clone(), timeouts), Tracked { inner: service, activity }))
        })
    }
}

/// The per-connection service: counts the requests in flight until hyper drops their response
/// body (so a long handler or a long download is never taken for an idle connection).
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Mutex<Activity>>,
}

/// One request in flight; dropped with the response body, or with the request's future when
/// the connection goes away first.
struct InFlight(Arc<Mutex<Activity>>);

impl InFlight {
    fn start(activity: Arc<Mutex<Activity>>) -> Self {
        lock(&activity).active += 1;
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut activity = lock(&self.0);
        activity.active = activity.active.saturating_sub(1);
        activity.ended = true;
    }
}

impl<S, B> tower::Service<Request<B>> for Tracked<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let in_flight = InFlight::start(self.activity.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // The body keeps the request in flight until hyper has taken its last frame
            // (map_frame keeps the body's size hint, so Content-Length is unchanged).
            Ok(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _in_flight = &in_flight;
                    frame
                }))
            }))
        })
    }
}

/// Which protocol the client speaks, from its first bytes (the HTTP/2 preface starts `PRI`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Unknown,
    Http1,
    Http2,
}

/// A response of ours being written in place of hyper's (or on a timeout); hyper's own writes
/// are discarded from then on.
struct Takeover {
    bytes: Vec<u8>,
    written: usize,
    flushed: bool,
    /// The header-read timeout: reads fail once the 408 is out, which ends the connection.
    fail_reads: bool,
}

/// A connection's IO with the timeouts, the replaced answers and the lingering close (see the
/// module documentation).
pub struct Guarded<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// `None` only while being dropped (moved into the lingering close).
    io: Option<T>,
    activity: Arc<Mutex<Activity>>,
    timeouts: Timeouts,
    protocol: Protocol,
    first_bytes: Vec<u8>,
    /// When the connection last became quiet (accepted, or its last response flushed).
    quiet_since: Instant,
    /// When the first byte of the next request head arrived on a quiet connection.
    head_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    takeover: Option<Takeover>,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Guarded<T> {
    fn new(io: T, activity: Arc<Mutex<Activity>>, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        Guarded {
            io: Some(io),
            activity,
            timeouts,
            protocol: Protocol::Unknown,
            first_bytes: Vec::with_capacity(3),
            quiet_since: now,
            head_since: None,
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.idle)),
            armed: None,
            takeover: None,
        }
    }

    /// No request in flight and every response flushed.
    fn quiet(&self) -> bool {
        let activity = lock(&self.activity);
        activity.active == 0 && !activity.ended
    }

    fn saw_bytes(&mut self, bytes: &[u8]) {
        if self.protocol == Protocol::Unknown {
            let wanted = 3 - self.first_bytes.len();
            self.first_bytes.extend(bytes.iter().take(wanted));
            if self.first_bytes.len() == 3 {
                self.protocol = if self.first_bytes == b"PRI" { Protocol::Http2 } else { Protocol::Http1 };
            }
        }
        // HTTP/2 sends control frames on a quiet connection; only HTTP/1 bytes start a head.
        if self.protocol != Protocol::Http2 && self.head_since.is_none() && self.quiet() {
            self.head_since = Some(Instant::now());
        }
    }

    /// hyper flushed everything it had written: a response that ended is now on the wire.
    fn flushed(&mut self) {
        let mut activity = lock(&self.activity);
        if activity.ended {
            activity.ended = false;
            if activity.active == 0 {
                self.quiet_since = Instant::now();
                self.head_since = None;
            }
        }
    }

    /// A read found nothing to read: on a quiet connection, the idle or header-read deadline.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.quiet() {
            return Poll::Pending;
        }
        let (deadline, partial_head) = match self.head_since {
            Some(since) if self.protocol != Protocol::Http2 => (since + self.timeouts.header_read, true),
            _ => (self.quiet_since + self.timeouts.idle, false),
        };
        if self.armed != Some(deadline) {
            self.timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if partial_head {
            let diagnostics = format!("the request head was not complete within {} s", self.timeouts.header_read.as_secs());
            self.takeover = Some(Takeover {
                bytes: outcome_response(StatusCode::REQUEST_TIMEOUT, "timeout", &diagnostics),
                written: 0,
                flushed: false,
                fail_reads: true,
            });
            return self.poll_failed_read(cx);
        }
        // Idle: end of input, which hyper takes as the client closing (no answer is due).
        Poll::Ready(Ok(()))
    }

    /// Writes and flushes our response, if one is pending.
    fn poll_takeover(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (Some(takeover), Some(io)) = (self.takeover.as_mut(), self.io.as_mut()) else {
            return Poll::Ready(Ok(()));
        };
        while takeover.written < takeover.bytes.len() {
            match ready!(Pin::new(&mut *io).poll_write(cx, &takeover.bytes[takeover.written..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => takeover.written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if !takeover.flushed {
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
            takeover.flushed = true;
        }
        Poll::Ready(Ok(()))
    }

    /// After the 408: reads fail, which ends hyper's connection.
    fn poll_failed_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_takeover(cx))?;
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head not received in time")))
    }

    /// hyper writing to a quiet HTTP/1 connection is an answer it made by itself to a request
    /// it could not parse: take it over with the same status and an OperationOutcome.
    fn intercept(&mut self, first: &[u8]) -> bool {
        if self.takeover.is_some() || self.protocol == Protocol::Http2 || !self.quiet() {
            return false;
        }
        let Some(status) = automatic_status(first) else { return false };
        let (code, diagnostics) = match status {
            StatusCode::URI_TOO_LONG => ("too-long", format!("the request target is longer than {MAX_REQUEST_TARGET_BYTES} bytes")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
                "too-long",
                format!("the request head is longer than {MAX_REQUEST_HEAD_BYTES} bytes or has more than {MAX_HEADER_FIELDS} header fields"),
            ),
            StatusCode::BAD_REQUEST => ("structure", "the request line or a header field cannot be parsed (RFC 9112)".to_owned()),
            _ => ("invalid", "the request cannot be read".to_owned()),
        };
        self.takeover = Some(Takeover { bytes: outcome_response(status, code, &diagnostics), written: 0, flushed: false, fail_reads: false });
        true
    }
}

/// The status of an HTTP/1 response hyper starts to write (`HTTP/1.1 414 …`), if it is an error.
fn automatic_status(bytes: &[u8]) -> Option<StatusCode> {
    let rest = bytes.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') {
        return None;
    }
    StatusCode::from_bytes(code).ok().filter(|s| s.is_client_error() || s.is_server_error())
}

/// A complete HTTP/1.1 response: the status, an OperationOutcome with one error issue,
/// `Connection: close`.
fn outcome_response(status: StatusCode, code: &'static str, diagnostics: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&operation_outcome(&[Issue::error(code, diagnostics)])).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/fhir+json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\ndate: {}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT"),
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Guarded<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.takeover.as_ref().is_some_and(|t| t.fail_reads) {
            return this.poll_failed_read(cx);
        }
        let Some(io) = this.io.as_mut() else { return Poll::Ready(Ok(())) };
        let before = buf.filled().len();
        match Pin::new(io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.saw_bytes(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Guarded<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.takeover.is_some() || this.intercept(buf) {
            // hyper's bytes are replaced by ours: taken as written. A pending write of ours is
            // finished by the flush hyper makes next (or by the lingering close).
            let _ = this.poll_takeover(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let Some(io) = this.io.as_mut() else { return Poll::Ready(Err(io::ErrorKind::NotConnected.into())) };
        Pin::new(io).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let first = bufs.iter().find(|b| !b.is_empty()).map(|b| &b[..]).unwrap_or(&[]);
        if this.takeover.is_some() || this.intercept(first) {
            let _ = this.poll_takeover(cx)?;
            return Poll::Ready(Ok(total));
        }
        let Some(io) = this.io.as_mut() else { return Poll::Ready(Err(io::ErrorKind::NotConnected.into())) };
        Pin::new(io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.takeover.is_some() {
            return this.poll_takeover(cx);
        }
        let Some(io) = this.io.as_mut() else { return Poll::Ready(Ok(())) };
        let flushed = ready!(Pin::new(io).poll_flush(cx));
        if flushed.is_ok() {
            this.flushed();
        }
        Poll::Ready(flushed)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_takeover(cx))?;
        let Some(io) = this.io.as_mut() else { return Poll::Ready(Ok(())) };
        Pin::new(io).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Guarded<T> {
    fn drop(&mut self) {
        let Some(io) = self.io.take() else { return };
        let unsent = self.takeover.take().map(|t| t.bytes[t.written..].to_vec()).unwrap_or_default();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(io, unsent));
        }
    }
}

/// The lingering close: finish our pending answer, shut down the sending side (the client reads
/// the whole response, then end of stream), and read and discard whatever the client still
/// sends, until it closes or [`LINGER`] has passed.
async fn linger<T: AsyncRead + AsyncWrite + Unpin>(mut io: T, unsent: Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + LINGER;
    let _ = tokio::time::timeout_at(deadline, async {
        if !unsent.is_empty() {
            io.write_all(&unsent).await?;
            io.flush().await?;
        }
        io.shutdown().await
    })
    .await;
    let mut sink = vec![0u8; 16 * 1024];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, io.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_status_reads_hypers_status_line() {
        assert_eq!(automatic_status(b"HTTP/1.1 414 URI Too Long\r\n"), Some(StatusCode::URI_TOO_LONG));
        assert_eq!(automatic_status(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
        assert_eq!(automatic_status(b"HTTP/1.0 400 Bad Request\r\n"), Some(StatusCode::BAD_REQUEST));
        assert_eq!(automatic_status(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(automatic_status(b"HTTP/1.1 4"), None);
        assert_eq!(automatic_status(b"{\"resourceType\""), None);
    }

    #[test]
    fn outcome_response_is_a_complete_fhir_answer() {
        let bytes = outcome_response(StatusCode::URI_TOO_LONG, "too-long", "too long");
        let text = String::from_utf8(bytes).unwrap_or_default();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
        assert!(head.contains("content-type: application/fhir+json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
        let outcome: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        assert_eq!(outcome["issue"][0]["code"], "too-long");
    }
}
