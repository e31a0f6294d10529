//! `GET /hello`: answers how many requests this instance has served.
//!
//! The count lives in the guest's own linear memory. edge-infer gives every request a fresh
//! instance, so the answer is always `{"served": 1}`: the proof that no state leaks from one
//! request to the next.

use std::sync::atomic::{AtomicU64, Ordering};

use edge_infer_guest::respond_json;
use serde_json::json;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

/// Requests served by this instance.
static SERVED: AtomicU64 = AtomicU64::new(0);

struct Hello;

wasip2::http::proxy::export!(Hello);

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        respond_json(out, 200, &json!({ "served": served }));
    }
}
