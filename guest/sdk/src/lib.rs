//! Helpers shared by edge-infer guests.
//!
//! A guest is a `wasi:http/proxy` component that may call models through `wasi:nn`. This
//! crate holds the few pieces every guest needs and nothing else:
//! - [`nn`]: `wasi:nn@0.2.0-rc-2024-10-28` bindings, generated from the repo's `wit/`;
//! - [`read_body`]: the whole request body as bytes;
//! - [`respond_json`] / [`respond_error`]: a JSON response with a status code, errors shaped
//!   as `{"error": "..."}` like every other edge-infer error;
//! - [`nn_error_status`] / [`nn_error_name`]: the HTTP status and the WIT name of a
//!   `wasi:nn` error.

use std::io::{Read, Write};

use serde::Serialize;
use wasip2::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

/// `wasi:nn` bindings: `nn::graph`, `nn::tensor`, `nn::inference`, `nn::errors`.
pub mod nn {
    wit_bindgen::generate!({
        path: "../../wit/deps/nn.wit",
        world: "ml",
    });
    pub use self::wasi::nn::*;
}

/// Reads the whole request body.
pub fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, String> {
    let body = request.consume().map_err(|()| "request body already consumed".to_string())?;
    let mut bytes = Vec::new();
    {
        let mut stream = body.stream().map_err(|()| "request body stream unavailable".to_string())?;
        stream.read_to_end(&mut bytes).map_err(|e| format!("reading the request body: {e}"))?;
    }
    Ok(bytes)
}

/// Answers with `status` and `value` serialised as JSON.
pub fn respond_json(out: ResponseOutparam, status: u16, value: &impl Serialize) {
    let body = serde_json::to_vec(value)
        .unwrap_or_else(|e| format!(r#"{{"error":"serialising the response: {e}"}}"#).into_bytes());
    respond(out, status, "application/json", &body);
}

/// Answers with `status` and the body `{"error": message}`.
pub fn respond_error(out: ResponseOutparam, status: u16, message: &str) {
    respond_json(out, status, &serde_json::json!({ "error": message }));
}

/// Answers with `status`, a content type and a body.
pub fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers = Fields::new();
    // Both header values are valid by construction, so `append` cannot fail here.
    let _ = headers.append("content-type", content_type.as_bytes());
    let _ = headers.append("content-length", body.len().to_string().as_bytes());
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let outgoing = response.body().expect("a new response has a body");
    ResponseOutparam::set(out, Ok(response));
    {
        let mut stream = outgoing.write().expect("a new body has a stream");
        // A failed write means the client went away: nothing is left to tell it.
        let _ = stream.write_all(body).and_then(|()| Write::flush(&mut stream));
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// The HTTP status that fits a `wasi:nn` error returned by the host.
pub fn nn_error_status(code: nn::errors::ErrorCode) -> u16 {
    use nn::errors::ErrorCode;
    match code {
        ErrorCode::InvalidArgument | ErrorCode::InvalidEncoding => 422,
        ErrorCode::NotFound => 404,
        ErrorCode::TooLarge => 413,
        ErrorCode::Timeout => 504,
        ErrorCode::Security => 403,
        ErrorCode::RuntimeError | ErrorCode::UnsupportedOperation | ErrorCode::Unknown => 500,
    }
}

/// The WIT name of a `wasi:nn` error code, e.g. `invalid-argument`.
pub fn nn_error_name(code: nn::errors::ErrorCode) -> &'static str {
    use nn::errors::ErrorCode;
    match code {
        ErrorCode::InvalidArgument => "invalid-argument",
        ErrorCode::InvalidEncoding => "invalid-encoding",
        ErrorCode::Timeout => "timeout",
        ErrorCode::RuntimeError => "runtime-error",
        ErrorCode::UnsupportedOperation => "unsupported-operation",
        ErrorCode::TooLarge => "too-large",
        ErrorCode::NotFound => "not-found",
        ErrorCode::Security => "security",
        ErrorCode::Unknown => "unknown",
    }
}

/// Answers with the status and message of a `wasi:nn` error.
pub fn respond_nn_error(out: ResponseOutparam, context: &str, error: &nn::errors::Error) {
    let status = nn_error_status(error.code());
    respond_error(out, status, &format!("{context}: {}", error.data()));
}
