//! A `wasi:http` 0.3 guest for the tests: what a 0.3 instance keeps between requests, and a
//! body that fails part way. Not an example to copy.
//!
//! - `GET /served`: `{"served": n}`, requests this instance has served (always 1 when each
//!   request gets a fresh instance);
//! - `GET /lines?count=N&trap_after=K`: N lines `line i`, each sent on its own; with
//!   `trap_after`, the guest panics (a trap) once K lines are out;
//! - `GET /spin`: loops for ever, to be stopped at its deadline.

use std::sync::atomic::{AtomicU64, Ordering};

use edge_infer_guest::p3::{BodyWriter, Handler, Reply, Request};
use edge_infer_guest::{Error, Response};
use serde_json::json;

/// Requests served by this instance.
static SERVED: AtomicU64 = AtomicU64::new(0);

struct Testing;

edge_infer_guest::export_p3!(Testing);

impl Handler for Testing {
    async fn handle(request: Request) -> Result<Reply, Error> {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let (path, query) = request.path().split_once('?').unwrap_or((request.path(), ""));
        match path.rsplit('/').next() {
            Some("served") => Ok(Response::json(&json!({ "served": served }))?.into()),
            Some("lines") => {
                let count = parameter(query, "count")?.unwrap_or(3);
                let trap_after = parameter(query, "trap_after")?;
                Ok(Reply::stream(200, "text/plain", move |body| lines(count, trap_after, body)))
            }
            Some("spin") => spin(),
            _ => Err(Error::new(404, "try /served, /lines or /spin")),
        }
    }
}

async fn lines(count: u64, trap_after: Option<u64>, mut body: BodyWriter) -> Result<(), Error> {
    for line in 0..count {
        if trap_after == Some(line) {
            panic!("trapping after {line} lines, as asked");
        }
        body.write(format!("line {line}\n")).await?;
    }
    Ok(())
}

fn parameter(query: &str, name: &str) -> Result<Option<u64>, Error> {
    let Some(value) = query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')) else {
        return Ok(None);
    };
    value.parse().map(Some).map_err(|_| Error::bad_request(format!("{name} must be a whole number")))
}

fn spin() -> ! {
    let mut turns = 0u64;
    loop {
        turns = std::hint::black_box(turns.wrapping_add(1));
    }
}
