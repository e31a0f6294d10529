//! Request bodies read whole against the node's memory budget, and answers that hold what
//! their request was charged (and its tenant's place) until they have been handed to the connection.
//!
//! A body's declared length is checked against its limit and charged before any of it is
//! read; a body of no declared length is charged as it grows. A body larger than the whole
//! budget is a 413, one that does not fit now a 503 with `Retry-After`; either way the
//! connection goes on serving others.

use std::any::Any;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::http::response::{self, Body};
use crate::request::memory::{Charge, MemoryBudget, MemoryExhausted};
use crate::telemetry::metrics;

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyRefusal {
    #[error("request body over {0} bytes")]
    TooLarge(usize),
    #[error(transparent)]
    Memory(#[from] MemoryExhausted),
    #[error("the request body did not arrive in time")]
    Late,
    #[error("reading the request body: {0}")]
    Broken(String),
}

impl BodyRefusal {
    /// The answer: 413, 503 + `Retry-After` (413 for a body the budget can never hold), 504
    /// or 400.
    pub fn response(self) -> Response<Body> {
        let message = self.to_string();
        match self {
            BodyRefusal::TooLarge(_) => response::error(StatusCode::PAYLOAD_TOO_LARGE, message),
            BodyRefusal::Memory(exhausted) => memory_response(&exhausted),
            BodyRefusal::Late => response::error(StatusCode::GATEWAY_TIMEOUT, message),
            BodyRefusal::Broken(_) => response::error(StatusCode::BAD_REQUEST, message),
        }
    }
}

/// The answer to a request the memory budget cannot take: 413 if it never could, else 503 +
/// `Retry-After`.
pub fn memory_response(exhausted: &MemoryExhausted) -> Response<Body> {
    if exhausted.never_fits() {
        response::error(StatusCode::PAYLOAD_TOO_LARGE, format!("{exhausted}: the request can never fit"))
    } else {
        response::overloaded(exhausted.to_string())
    }
}

/// Reads a whole body of at most `limit` bytes (before `deadline`, if given), charging it to
/// `memory`; counts a refusal for want of memory under `place` (`rest`, `guest`, `admin`).
pub async fn read_charged(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    deadline: Option<Instant>,
    memory: &Arc<MemoryBudget>,
    place: &'static str,
) -> Result<(Bytes, Charge), BodyRefusal> {
    let reading = read_within(headers, body, limit, memory);
    let read = match deadline {
        Some(deadline) => {
            tokio::time::timeout_at(deadline.into(), reading).await.unwrap_or(Err(BodyRefusal::Late))
        }
        None => reading.await,
    };
    if matches!(read, Err(BodyRefusal::Memory(_))) {
        metrics::memory_refused(place);
    }
    read
}

async fn read_within(
    headers: &HeaderMap,
    mut body: Incoming,
    limit: usize,
    memory: &Arc<MemoryBudget>,
) -> Result<(Bytes, Charge), BodyRefusal> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(BodyRefusal::TooLarge(limit));
    }
    let declared = declared.map_or(0, |length| length as usize);
    let mut charge = memory.charge(declared)?;
    let mut bytes = BytesMut::with_capacity(declared);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyRefusal::Broken(e.to_string()))?;
        let Ok(data) = frame.into_data() else { continue };
        let needed = bytes.len() + data.len();
        if needed > limit {
            return Err(BodyRefusal::TooLarge(limit));
        }
        if needed > bytes.capacity() {
            // Grown by doubling, within the limit, charged before it is allocated.
            let grown = needed.max(2 * bytes.capacity()).min(limit);
            charge.resize(grown.max(charge.bytes()))?;
            bytes.reserve(grown - bytes.len());
            if bytes.capacity() > charge.bytes() {
                charge.resize(bytes.capacity())?;
            }
        }
        bytes.extend_from_slice(&data);
    }
    Ok((bytes.freeze(), charge))
}

/// `response`, its body holding `held` (charges, a tenant's place) until it has been handed
/// to the connection (its last 64 KiB piece) or dropped.
pub fn hold(response: Response<Body>, held: impl Any + Send) -> Response<Body> {
    response.map(|body| Holding { body, _held: Box::new(held) }.boxed_unsync())
}

/// A body and what it holds.
struct Holding {
    body: Body,
    _held: Box<dyn Any + Send>,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
