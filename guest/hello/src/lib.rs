//! `GET /hello`: answers how many requests this instance has served.
//!
//! The count lives in the guest's own linear memory. edge-infer gives every request a fresh
//! instance, so the answer is always `{"served": 1}`: the proof that no state leaks from one
//! request to the next.

use std::sync::atomic::{AtomicU64, Ordering};

use edge_infer_guest::{Error, Handler, Request, Response};
use serde_json::json;

/// Requests served by this instance.
static SERVED: AtomicU64 = AtomicU64::new(0);

struct Hello;

edge_infer_guest::export!(Hello);

impl Handler for Hello {
    fn handle(_request: Request) -> Result<Response, Error> {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        Response::json(&json!({ "served": served }))
    }
}
