//! Request bodies at the HTTP edge: what a body that cannot be read means (413 only when it is
//! too large, 400 when its framing is broken), and what happens to the part of a body a handler
//! did not read (a GET or DELETE carrying content, a request refused before its body mattered).
//!
//! An unread body used to stay in the socket: hyper then closed the connection with input
//! pending, the kernel answered with a reset, and the client lost part of the response. Now the
//! rest is read and discarded after the handler (up to `--max-body-bytes` in all), so the answer
//! is whole and the connection stays usable; a body over the limit or with broken framing gets
//! `Connection: close`, and the connection's lingering close (`rest::connection`) keeps the
//! client from being reset while it reads the answer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::{BodyExt, LengthLimitError};

use super::error_response;
use super::format::Format;
use crate::error::FhirError;

/// The FHIR error for a request body that could not be read: 413 when the limit was reached,
/// 400 for anything else (a chunk size that is not hexadecimal, a body that ends before its
/// declared length or last chunk — the message is malformed, not too large).
pub(crate) fn body_error(error: &(dyn std::error::Error + 'static), limit: usize) -> FhirError {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<LengthLimitError>() {
            return FhirError::PayloadTooLarge(format!("the request body exceeds the limit of {limit} bytes"));
        }
        cause = e.source();
    }
    FhirError::BadRequest(
        "the request body cannot be read: its transfer coding is malformed or it ended before its declared length".into(),
    )
}

/// The request body as the handler sees it, with what it took counted, so that the middleware
/// can read the rest after it.
struct Tap {
    /// `None` once the body ended or failed (or after the middleware took the rest).
    body: Option<Body>,
    seen: usize,
    failed: bool,
}

fn lock(tap: &Mutex<Tap>) -> MutexGuard<'_, Tap> {
    tap.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tapped(tap: Arc<Mutex<Tap>>) -> Body {
    Body::from_stream(futures::stream::poll_fn(move |cx| {
        let mut guard = lock(&tap);
        loop {
            let Some(body) = guard.body.as_mut() else { return Poll::Ready(None) };
            match std::pin::Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    guard.body = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    guard.body = None;
                    guard.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers carry no content; the handlers read data only.
                    if let Ok(data) = frame.into_data() {
                        guard.seen += data.len();
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
            }
        }
    }))
}

/// How reading the rest of a body ended.
enum Rest {
    Read,
    OverLimit,
    Broken(axum::Error),
}

async fn discard(mut body: Body, mut allowance: usize) -> Rest {
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                let len = frame.data_ref().map_or(0, |d| d.len());
                if len > allowance {
                    return Rest::OverLimit;
                }
                allowance -= len;
            }
            Err(e) => return Rest::Broken(e),
        }
    }
    Rest::Read
}

fn close(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Middleware (outside the router): after the handler, reads and discards the part of the
/// request body it left unread, within `--max-body-bytes` for the whole body. A body over the
/// limit turns a successful answer into 413, a body with broken framing into 400 (both
/// OperationOutcomes); an error answer keeps its status. Either way the connection is closed
/// after the answer, since the rest of the message cannot be found.
pub async fn drain_unread_body(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let tap = Arc::new(Mutex::new(Tap { body: Some(body), seen: 0, failed: false }));
    let response = next.run(Request::from_parts(parts, tapped(tap.clone()))).await;
    let (rest, seen, failed) = {
        let mut guard = lock(&tap);
        (guard.body.take(), guard.seen, guard.failed)
    };
    if failed {
        return close(response);
    }
    let Some(rest) = rest.filter(|b| !b.is_end_stream()) else { return response };
    let refusal = match discard(rest, limit.saturating_sub(seen)).await {
        Rest::Read => return response,
        Rest::OverLimit => FhirError::PayloadTooLarge(format!("the request body exceeds the limit of {limit} bytes")),
        Rest::Broken(e) => body_error(&e, limit),
    };
    if response.status().is_client_error() || response.status().is_server_error() {
        return close(response);
    }
    close(error_response(&refusal, Format::Json, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_over_the_limit_is_413_and_a_broken_one_400() {
        let over = axum::body::to_bytes(Body::from(vec![b'x'; 100]), 10).await.err();
        let over = over.map(|e| body_error(&e, 10));
        assert!(matches!(over, Some(FhirError::PayloadTooLarge(_))), "{over:?}");
        let broken = Body::from_stream(futures::stream::iter([
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"ab")),
            Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "invalid chunk size")),
        ]));
        let broken = axum::body::to_bytes(broken, 1000).await.err().map(|e| body_error(&e, 1000));
        assert!(matches!(broken, Some(FhirError::BadRequest(_))), "{broken:?}");
    }
}
