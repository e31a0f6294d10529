//! Responses the host writes itself, and the body type every response shares.
//!
//! Errors are always JSON, `{"error": "..."}`, with the status that fits the failure; an
//! overload answer also carries `Retry-After`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// The body of every response: a guest's streamed body or one the host wrote whole.
pub type Body = HyperOutgoingBody;

/// Seconds a client is told to wait before retrying an overloaded route.
const RETRY_AFTER_SECONDS: &str = "1";

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    text(status, "application/json", value.to_string())
}

/// A response with a whole body of the given content type.
pub fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let bytes: Bytes = body.into();
    let mut response = Response::new(Full::new(bytes).map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// An error response: `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// A 503 with `Retry-After`: the route is overloaded, try again shortly.
pub fn overloaded(message: impl Into<String>) -> Response<Body> {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    response
}
