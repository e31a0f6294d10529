//! Responses the host writes itself, and the body type every response shares; REST's
//! answer to each kind of [`Failure`]; and answers that hold what their request was charged
//! (and its tenant's place) until they have been handed to the connection.
//!
//! Errors are always JSON, `{"error": "..."}`, with the status that fits the failure; an
//! overload answer also carries `Retry-After`.

use std::any::Any;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::http::protocol::{Failure, FailureKind};

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

/// The REST answer to `failure`: `{"error": message}` with the kind's status; 401 asks for
/// a bearer token (`WWW-Authenticate`), 429 says when to retry, and a 503 to retry shortly
/// (`Retry-After`).
pub fn failure(failure: Failure) -> Response<Body> {
    let status = match failure.kind {
        FailureKind::BadRequest => StatusCode::BAD_REQUEST,
        FailureKind::Unauthorized => StatusCode::UNAUTHORIZED,
        FailureKind::Forbidden => StatusCode::FORBIDDEN,
        FailureKind::NotFound => StatusCode::NOT_FOUND,
        FailureKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        FailureKind::Conflict => StatusCode::CONFLICT,
        FailureKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        FailureKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        FailureKind::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
        FailureKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        FailureKind::Upstream => StatusCode::BAD_GATEWAY,
        FailureKind::Overloaded | FailureKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        FailureKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
    };
    let mut response = json(status, &serde_json::json!({ "error": failure.message }));
    let headers = response.headers_mut();
    match failure.kind {
        FailureKind::Unauthorized => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        FailureKind::TooManyRequests { retry_after_seconds } => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
        }
        FailureKind::Overloaded | FailureKind::Unavailable => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        _ => {}
    }
    response
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
