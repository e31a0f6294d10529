//! A guest's response body as the client receives it: it ends cleanly only if the guest's
//! work ended cleanly, and it is capped.
//!
//! The head of a response goes out as soon as the guest sets it; the body streams after.
//! If the guest then traps, reaches its deadline or is stopped, wasmtime closes the body as
//! if it were complete, and the client would take a cut body for the whole answer. This body
//! waits, at the end of the guest's stream, for how the guest's task ended; anything but a
//! clean end becomes an error frame, on which hyper closes an HTTP/1.1 connection without the
//! terminating chunk (or short of its `content-length`) and resets an HTTP/2 stream, so the
//! client sees the answer is unfinished. Over `max_response_bytes` ends the same way.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tracing::error;
use wasmtime_wasi_http::Error;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// How the guest's task ended, sent once it has: `Ok` if it returned from its handler.
pub type GuestEnd = Result<(), String>;

/// The guest's body, honest about how it ended.
pub struct HonestBody {
    inner: HyperOutgoingBody,
    /// How the guest's task ended; `None` once read.
    ended: Option<oneshot::Receiver<GuestEnd>>,
    sent: u64,
    max_bytes: u64,
    /// Set once an error frame went out: nothing follows it.
    failed: bool,
    /// The route and request, for the log line of a cut-off response.
    route: Arc<str>,
    request_id: Arc<str>,
}

/// Where a response goes and how long it may be.
pub struct BodyLimits {
    pub max_bytes: u64,
    pub route: Arc<str>,
    pub request_id: Arc<str>,
}

impl HonestBody {
    /// Wraps the guest's body; `ended` reports how the guest's task ended.
    pub fn wrap(
        inner: HyperOutgoingBody,
        ended: oneshot::Receiver<GuestEnd>,
        limits: BodyLimits,
    ) -> HyperOutgoingBody {
        let BodyLimits { max_bytes, route, request_id } = limits;
        HonestBody { inner, ended: Some(ended), sent: 0, max_bytes, failed: false, route, request_id }
            .boxed_unsync()
    }

    fn fail(&mut self, reason: String) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.failed = true;
        error!(route = %self.route, request_id = %self.request_id, body_bytes = self.sent, "response cut off: {reason}");
        Poll::Ready(Some(Err(Error::InternalError(Some(reason)))))
    }
}

impl Body for HonestBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                    if self.sent > self.max_bytes {
                        let max = self.max_bytes;
                        return self.fail(format!("the response is longer than max_response_bytes ({max})"));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                self.failed = true;
                Poll::Ready(Some(Err(error)))
            }
            // The guest's stream closed: complete only if the guest's work ended cleanly.
            None => {
                let Some(ended) = self.ended.as_mut() else { return Poll::Ready(None) };
                let outcome = ready!(Pin::new(ended).poll(cx));
                self.ended = None;
                match outcome {
                    Ok(Ok(())) => Poll::Ready(None),
                    Ok(Err(reason)) => self.fail(format!("the guest did not finish its response: {reason}")),
                    Err(_) => self.fail("the guest did not finish its response".to_string()),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Never claim the end early: the guest's outcome is read after its stream closes.
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
