//! A connection's IO watched for progress: which requests are in flight, whether the client
//! takes the bytes written to it, and whether each response waits for the client; the
//! connection is closed when it is idle past the header read timeout or stalled past the
//! send timeout. Responses hand the connection at most [`MAX_FRAME_BYTES`] at a time.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use super::policy::ListenerPolicy;
use crate::http::response::Body;
use crate::telemetry::metrics::ConnectionClosed;

/// A connection's requests: how many are in flight, when one last started or ended, and how
/// each response in flight is getting on.
pub(super) struct Activity {
    /// What the timestamps count from.
    epoch: Instant,
    /// Requests started on it.
    started: AtomicU64,
    in_flight: AtomicU64,
    /// When a request last started or ended, in ms since `epoch`.
    changed_ms: AtomicU64,
    /// When the connection last wrote more than a control frame's worth to the client.
    wrote_ms: AtomicU64,
    /// Since when a write to the client has waited for room (the client is not reading), or
    /// [`NOT_WAITING`].
    write_blocked_since_ms: AtomicU64,
    /// One entry per response that has been in flight at once; an entry is reused once its
    /// response is done, so an HTTP/1.1 connection keeps one.
    responses: Mutex<Vec<Arc<Progress>>>,
}

/// How one response in flight is getting on: since when it has waited for the client to take
/// its next bytes.
struct Progress {
    /// Whether a response holds this entry now.
    taken: std::sync::atomic::AtomicBool,
    /// ms since the connection's epoch, or [`NOT_WAITING`] while the response waits for its
    /// own source (a guest still writing) or is done.
    waiting_since_ms: AtomicU64,
}

/// `Progress::waiting_since_ms` of a response not waiting for the client.
const NOT_WAITING: u64 = u64::MAX;

impl Activity {
    pub(super) fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            started: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            changed_ms: AtomicU64::new(0),
            wrote_ms: AtomicU64::new(0),
            write_blocked_since_ms: AtomicU64::new(NOT_WAITING),
            responses: Mutex::new(Vec::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A request starts.
    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.changed_ms.store(self.now_ms(), Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// An entry for a response that is `waiting` from now (see [`Progress`]).
    fn progress(&self, waiting: u64) -> Arc<Progress> {
        let mut responses = self.responses.lock().unwrap_or_else(PoisonError::into_inner);
        let free = responses.iter().find(|entry| !entry.taken.load(Ordering::Acquire));
        let entry = match free {
            Some(entry) => entry.clone(),
            None => {
                let entry = Arc::new(Progress {
                    taken: std::sync::atomic::AtomicBool::new(false),
                    waiting_since_ms: AtomicU64::new(NOT_WAITING),
                });
                responses.push(entry.clone());
                entry
            }
        };
        entry.waiting_since_ms.store(waiting, Ordering::Relaxed);
        entry.taken.store(true, Ordering::Release);
        entry
    }

    /// Why the connection must be closed now, if it must.
    pub(super) fn overdue(&self, policy: &ListenerPolicy) -> Option<ConnectionClosed> {
        let now = self.now_ms();
        let since = |ms: u64| Duration::from_millis(now.saturating_sub(ms));
        let wrote = self.wrote_ms.load(Ordering::Relaxed);
        // Bytes the client does not take: whatever answer they belong to, finished or not.
        let blocked = self.write_blocked_since_ms.load(Ordering::Relaxed);
        if blocked != NOT_WAITING && since(blocked) >= policy.send_timeout {
            return Some(ConnectionClosed::SendTimeout);
        }
        // Nothing in flight, nothing being written, nothing asked: idle.
        let changed = self.changed_ms.load(Ordering::Relaxed).max(wrote);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && blocked == NOT_WAITING
            && since(changed) >= policy.header_read_timeout
        {
            // One that never started a request is a client that never sent one.
            let never_asked = self.started.load(Ordering::Relaxed) == 0;
            return Some(if never_asked { ConnectionClosed::HeaderTimeout } else { ConnectionClosed::Idle });
        }
        // A response waiting for the client (an HTTP/2 window held shut) while the
        // connection writes nothing.
        let responses = self.responses.lock().unwrap_or_else(PoisonError::into_inner);
        let stalled = responses.iter().any(|entry| {
            let waiting = entry.waiting_since_ms.load(Ordering::Relaxed);
            entry.taken.load(Ordering::Acquire)
                && waiting != NOT_WAITING
                && since(waiting.max(wrote)) >= policy.send_timeout
        });
        stalled.then_some(ConnectionClosed::SendTimeout)
    }

    /// Notes how a write (or flush) to the client went: `None` if it waits for room, else the
    /// bytes it wrote.
    fn note_write(&self, written: Option<usize>) {
        match written {
            None => {
                let now = self.now_ms();
                let _ = self.write_blocked_since_ms.compare_exchange(
                    NOT_WAITING,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            Some(bytes) => {
                self.write_blocked_since_ms.store(NOT_WAITING, Ordering::Relaxed);
                if bytes > CONTROL_FRAME_BYTES {
                    self.wrote_ms.store(self.now_ms(), Ordering::Relaxed);
                }
            }
        }
    }
}

/// Writes this small are not progress: HTTP/2 pings, window updates and settings (a client
/// that answers pings but takes no data is still stalled).
const CONTROL_FRAME_BYTES: usize = 32;

/// A connection's IO, noting in its [`Activity`] when writes to the client go through and
/// when they wait for room.
pub(super) struct Watched<I> {
    pub(super) io: I,
    pub(super) activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

/// What a write's outcome says to [`Activity::note_write`].
fn written(poll: &Poll<std::io::Result<usize>>) -> Option<usize> {
    match poll {
        Poll::Pending => None,
        Poll::Ready(result) => Some(*result.as_ref().unwrap_or(&0)),
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.activity.note_write(written(&poll));
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.activity.note_write(written(&poll));
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.activity.note_write(if poll.is_pending() { None } else { Some(0) });
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One request in flight on a connection, until dropped.
pub(super) struct InFlight(Arc<Activity>);

impl InFlight {
    /// Watches `body`'s progress for as long as the request is in flight. Only an HTTP/2
    /// response (`multiplexed`) can wait for the client without a write waiting too: its
    /// frames wait for the stream's window. An HTTP/1.1 connection writes what hyper takes at
    /// once, so a client that does not read shows as a blocked write; and once the last frame
    /// is written, what the kernel still holds for a slow reader is no stall of the response.
    pub(super) fn track(self, body: Body, multiplexed: bool) -> Tracked {
        // Until hyper takes its first frame, an HTTP/2 response waits for the client (a
        // window at zero is never opened); one with nothing to send waits for nobody.
        let waiting = match multiplexed && !http_body::Body::is_end_stream(&body) {
            true => self.0.now_ms(),
            false => NOT_WAITING,
        };
        let progress = self.0.progress(waiting);
        Tracked { body, rest: None, progress, multiplexed, request: self }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.changed_ms.store(self.0.now_ms(), Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight while it is sent, and notes
/// whether it is waiting for the client (hyper holds a frame it gave and has not come back for
/// the next) or for its own source.
pub(super) struct Tracked {
    body: Body,
    /// What is left of a data frame larger than [`MAX_FRAME_BYTES`], handed out in pieces.
    rest: Option<bytes::Bytes>,
    progress: Arc<Progress>,
    /// An HTTP/2 stream's (see [`InFlight::track`]).
    multiplexed: bool,
    request: InFlight,
}

/// The most a response hands the connection at once: what is still being sent when the
/// answer's body (and what it holds: memory charges, the tenant's place) is let go.
pub const MAX_FRAME_BYTES: usize = 64 << 10;

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = match this.rest.take() {
            Some(rest) => Poll::Ready(Some(Ok(http_body::Frame::data(rest)))),
            None => Pin::new(&mut this.body).poll_frame(cx),
        };
        // Large frames go out in pieces, so the body is held until the last is handed over.
        let polled = polled.map(|frame| {
            frame.map(|frame| {
                frame.map(|frame| match frame.into_data() {
                    Ok(mut data) if data.len() > MAX_FRAME_BYTES => {
                        this.rest = Some(data.split_off(MAX_FRAME_BYTES));
                        http_body::Frame::data(data)
                    }
                    Ok(data) => http_body::Frame::data(data),
                    Err(other) => other,
                })
            })
        });
        let waiting = match &polled {
            // hyper has a frame to send: until it asks for the next, the client is taking it.
            Poll::Ready(Some(Ok(_))) if this.multiplexed => this.request.0.now_ms(),
            Poll::Ready(_) | Poll::Pending => NOT_WAITING,
        };
        this.progress.waiting_since_ms.store(waiting, Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest = self.rest.as_ref().map_or(0, |rest| rest.len() as u64);
        let inner = self.body.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Its entry is free for the connection's next response.
        self.progress.waiting_since_ms.store(NOT_WAITING, Ordering::Relaxed);
        self.progress.taken.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_the_client_does_not_take_is_overdue_after_the_send_timeout() {
        let policy = ListenerPolicy {
            max_connections: 1,
            max_connections_per_ip: 1,
            header_read_timeout: Duration::from_secs(3600),
            send_timeout: Duration::ZERO,
            max_header_bytes: 8192,
            http2_max_concurrent_streams: 1,
            http2_keepalive: None,
            grace: Duration::ZERO,
        };
        let activity = Arc::new(Activity::new());
        let empty = crate::http::response::text(http::StatusCode::OK, "text/plain", "").into_body();
        let done = activity.begin().track(empty, true);
        assert_eq!(activity.overdue(&policy), None, "an empty body waits for nobody");
        let text = || crate::http::response::text(http::StatusCode::OK, "text/plain", "x").into_body();
        let written = activity.begin().track(text(), false);
        assert_eq!(activity.overdue(&policy), None, "HTTP/1.1: only a blocked write is a stall");
        let stalled = activity.begin().track(text(), true);
        assert_eq!(
            activity.overdue(&policy),
            Some(ConnectionClosed::SendTimeout),
            "an HTTP/2 window held shut"
        );
        drop((done, written, stalled));
        assert_eq!(activity.in_flight.load(Ordering::Relaxed), 0);
        let patient = ListenerPolicy { send_timeout: Duration::from_secs(1), ..policy };
        assert_eq!(activity.overdue(&patient), None);
        // The last bytes of an answer whose body is gone, waiting for room: still the client's.
        activity.note_write(None);
        assert_eq!(activity.overdue(&policy), Some(ConnectionClosed::SendTimeout));
        activity.note_write(Some(4096));
        assert_eq!(activity.overdue(&policy), None, "the client took them");
    }

    #[tokio::test]
    async fn large_frames_are_handed_over_in_pieces() {
        let activity = Arc::new(Activity::new());
        let big = vec![7u8; 3 * MAX_FRAME_BYTES + 1];
        let big = crate::http::response::text(http::StatusCode::OK, "text/plain", big);
        let mut tracked = activity.begin().track(big.into_body(), true);
        let mut sizes = Vec::new();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut tracked).await {
            sizes.push(frame.unwrap().into_data().unwrap().len());
        }
        assert_eq!(sizes, [MAX_FRAME_BYTES, MAX_FRAME_BYTES, MAX_FRAME_BYTES, 1]);
    }
}
