//! A standard `wasi:http/proxy` component built without the edge-infer SDK: only the
//! `wasip2` bindings and Rust's std (whose `HashMap` seeds itself through
//! `wasi:random/insecure-seed`, and whose `std::fs` and `std::env` import `wasi:filesystem`
//! and `wasi:cli/environment`). A test fixture: it tries what a guest must not be able to
//! do and answers what happened, as JSON:
//! `{"seeded_map": 3, "env_vars": n, "file": "...", "outbound": "..."}`.

use std::collections::HashMap;

use serde_json::json;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};

struct Plain;

wasip2::http::proxy::export!(Plain);

impl wasip2::exports::http::incoming_handler::Guest for Plain {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let map: HashMap<&str, u32> = [("a", 1), ("b", 2), ("c", 3)].into_iter().collect();
        let file = match std::fs::read_to_string("/etc/hostname") {
            Ok(text) => format!("read {} bytes", text.len()),
            Err(error) => format!("refused: {error}"),
        };
        let answer = json!({
            "seeded_map": map.len(),
            "env_vars": std::env::vars().count(),
            "file": file,
            "outbound": outbound(),
        });
        let headers = Fields::from_list(&[("content-type".to_string(), b"application/json".to_vec())])
            .expect("a valid header");
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("a new response has a body");
        ResponseOutparam::set(out, Ok(response));
        let stream = body.write().expect("a new body has a stream");
        stream.blocking_write_and_flush(answer.to_string().as_bytes()).expect("the client is there");
        drop(stream);
        OutgoingBody::finish(body, None).expect("the body is complete");
    }
}

/// Tries `GET http://example.com/` and says what happened.
fn outbound() -> String {
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some("example.com"));
    let _ = request.set_path_with_query(Some("/"));
    match outgoing_handler::handle(request, None) {
        Err(code) => format!("refused: {code:?}"),
        Ok(pending) => {
            pending.subscribe().block();
            match pending.get() {
                Some(Ok(Ok(response))) => format!("reached: {}", response.status()),
                Some(Ok(Err(code))) => format!("refused: {code:?}"),
                other => format!("refused: {other:?}"),
            }
        }
    }
}
