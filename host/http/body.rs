//! Request bodies read whole against the node's memory budget: every reader of a whole body
//! (guest routes, REST inference, the admin and repository APIs) goes through
//! [`read_charged`].
//!
//! A body's declared length is checked against its limit and charged before any of it is
//! read; a body of no declared length is charged as it grows. A body larger than the whole
//! budget is a 413, one that does not fit now a 503 with `Retry-After`; either way the
//! connection goes on serving others.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::request::memory::{Charge, MemoryBudget, MemoryExhausted};
use crate::telemetry::metrics;

/// Why a body was not read (REST answers 413, 503 + `Retry-After` or 413 for a body the
/// budget can never hold, 504, 400: see `protocol::failure`).
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
