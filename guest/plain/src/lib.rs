//! A standard `wasi:http/proxy` component built without the edge-infer SDK: only the
//! `wasip2` bindings and Rust's std (whose `HashMap` seeds itself through
//! `wasi:random/insecure-seed`, and whose `std::fs` and `std::env` import `wasi:filesystem`
//! and `wasi:cli/environment`). A test fixture: it tries what a guest may do only if its
//! route opens it, and answers what happened, as JSON:
//! `{"seeded_map": 3, "env_vars": n, "file": "...", "write": "...", "outbound": "..."}`.
//! It reads the file named by the `x-file` header (default `/etc/hostname`), writes beside
//! it, and sends `GET /hello` to the authority in `x-outbound` (default `example.com`).

use std::collections::HashMap;

use serde_json::json;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme,
};

struct Plain;

wasip2::http::proxy::export!(Plain);

impl wasip2::exports::http::incoming_handler::Guest for Plain {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let header = |name: &str, default: &str| {
            let values = request.headers().get(name);
            values.first().map_or(default.to_string(), |value| String::from_utf8_lossy(value).into_owned())
        };
        let path = header("x-file", "/etc/hostname");
        let map: HashMap<&str, u32> = [("a", 1), ("b", 2), ("c", 3)].into_iter().collect();
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => format!("read {} bytes", text.len()),
            Err(error) => format!("refused: {error}"),
        };
        let written = std::path::Path::new(&path).with_file_name("written.txt");
        let write = match std::fs::write(&written, b"guest was here") {
            Ok(()) => "wrote".to_string(),
            Err(error) => format!("refused: {error}"),
        };
        let answer = json!({
            "seeded_map": map.len(),
            "env_vars": std::env::vars().count(),
            "file": file,
            "write": write,
            "outbound": outbound(&header("x-outbound", "example.com")),
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

/// Tries `GET http://{authority}/hello` and says what happened.
fn outbound(authority: &str) -> String {
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some("/hello"));
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
