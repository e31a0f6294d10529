//! A guest's stderr, as lines in the host's log, tagged with the route and the request id.
//!
//! Guests are untrusted, so their output is bounded three ways: a line is cut at
//! `MAX_LINE_BYTES`, one request logs at most `MAX_LINES_PER_REQUEST` lines, and each
//! route shares a token bucket of `LINES_PER_SECOND` (bursts up to `BURST_LINES`). What
//! goes over is dropped and counted in `edge_infer_guest_log_lines_dropped_total`. Writes
//! always succeed, so a chatty guest is never failed for it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::IntCounter;
use tokio::io::AsyncWrite;
use tracing::info;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line logged; the rest of a longer line is dropped.
const MAX_LINE_BYTES: usize = 1024;
/// Most lines one request may log.
const MAX_LINES_PER_REQUEST: usize = 64;
/// Lines per second one route may log, on average.
const LINES_PER_SECOND: f64 = 50.0;
/// Lines one route may log at once after a quiet spell.
const BURST_LINES: f64 = 200.0;

/// One route's log budget, shared by all its instances.
pub struct LogBudget {
    route: Arc<str>,
    bucket: Mutex<(f64, Instant)>,
    dropped: IntCounter,
}

impl LogBudget {
    pub fn new(route: &str, dropped: IntCounter) -> LogBudget {
        LogBudget { route: route.into(), bucket: Mutex::new((BURST_LINES, Instant::now())), dropped }
    }

    /// Takes one line's worth from the bucket, if there is one.
    fn take(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap();
        let (tokens, refilled) = &mut *bucket;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*refilled).as_secs_f64() * LINES_PER_SECOND).min(BURST_LINES);
        *refilled = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The stderr of one instance. Its lines carry the id of the request the instance serves,
/// once it serves one: an instance made ahead of its request logs `-` until then.
#[derive(Clone)]
pub struct GuestStderr {
    budget: Arc<LogBudget>,
    request_id: Arc<OnceLock<Arc<str>>>,
}

impl GuestStderr {
    pub fn new(budget: Arc<LogBudget>) -> GuestStderr {
        GuestStderr { budget, request_id: Default::default() }
    }

    /// Tags the lines logged from now on with `request_id`; an instance serves one request,
    /// so only the first tag counts.
    pub fn tag(&self, request_id: Arc<str>) {
        let _ = self.request_id.set(request_id);
    }
}

impl IsTerminal for GuestStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStderr {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter { stderr: self.clone(), line: Vec::new(), lines: 0 })
    }
}

/// Collects bytes into lines and logs each complete line.
struct LineWriter {
    stderr: GuestStderr,
    line: Vec<u8>,
    lines: usize,
}

impl LineWriter {
    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        let budget = &self.stderr.budget;
        self.lines += 1;
        if self.lines > MAX_LINES_PER_REQUEST || !budget.take() {
            budget.dropped.inc();
            return;
        }
        let request_id = self.stderr.request_id.get().map_or("-", |id| id);
        info!(target: "guest", route = %budget.route, %request_id, "{line}");
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        for &byte in buf {
            if byte == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LINE_BYTES {
                self.line.push(byte);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.line.is_empty() {
            self.emit();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}
