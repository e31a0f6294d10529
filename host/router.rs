//! Request dispatch: health and metrics, then guest routes by path, else 404.
//!
//! For a guest route, [`serve_guest`] applies the route's limits in order: the deadline and
//! priority headers (400 if malformed), the body size (413), admission (503 + `Retry-After`
//! when the queue is full, 504 when the deadline passes in it), and then runs the guest on a
//! fresh instance. Every failure is a JSON error; none of them affects other requests.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::json;
use tracing::{error, info};

use crate::admission::Rejection;
use crate::component::GuestFailure;
use crate::metrics;
use crate::request::RequestContext;
use crate::response::{self, Body};
use crate::runtime::{Route, Runtime};

/// Answers one request.
pub async fn dispatch(runtime: Arc<Runtime>, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = if path == "/healthz" {
        response::json(StatusCode::OK, &json!({ "status": "ok" }))
    } else if path == "/metrics" {
        runtime.refresh_gauges();
        response::text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics::render(),
        )
    } else if let Some(route) = runtime.route_for(&path) {
        let response = serve_guest(route, request, started).await;
        route
            .metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        route.metrics.request(response.status().as_u16());
        response
    } else {
        response::error(StatusCode::NOT_FOUND, format!("no route for {path}"))
    };
    info!(
        %method,
        %path,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

async fn serve_guest(
    route: &Route,
    request: Request<Incoming>,
    arrival: Instant,
) -> Response<Body> {
    let context = match RequestContext::from_headers(request.headers(), arrival, route.timeout) {
        Ok(context) => context,
        Err(message) => return response::error(StatusCode::BAD_REQUEST, message),
    };
    let deadline = tokio::time::Instant::from_std(context.deadline);
    let too_large = || {
        response::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {} bytes", route.max_body_bytes),
        )
    };
    let declared_length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > route.max_body_bytes as u64) {
        return too_large();
    }

    let (parts, body) = request.into_parts();
    let body =
        match tokio::time::timeout_at(deadline, Limited::new(body, route.max_body_bytes).collect())
            .await
        {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
            Ok(Err(e)) => {
                return response::error(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                );
            }
            Err(_) => return deadline_exceeded("the request body did not arrive in time"),
        };
    let request = Request::from_parts(parts, Full::new(body));

    let permit = match route.admission.admit(&context).await {
        Ok(permit) => permit,
        Err(Rejection::QueueFull) => {
            return response::overloaded(format!(
                "route {} is at capacity; retry shortly",
                route.path
            ));
        }
        Err(Rejection::DeadlineExpired) => {
            return deadline_exceeded("the deadline passed while waiting for an instance");
        }
    };

    match route.guest.handle(request, context, permit).await {
        Ok(response) => response,
        Err(failure) => failure_response(route, failure),
    }
}

fn failure_response(route: &Route, failure: GuestFailure) -> Response<Body> {
    let message = failure.to_string();
    match failure {
        GuestFailure::DeadlineExceeded => deadline_exceeded(message),
        GuestFailure::NoInstance(_) | GuestFailure::ModelOverloaded(_) => {
            response::overloaded(message)
        }
        GuestFailure::BadRequest(_) => response::error(StatusCode::BAD_REQUEST, message),
        GuestFailure::Trapped(_) | GuestFailure::NoResponse(_) => {
            if matches!(failure, GuestFailure::Trapped(_)) {
                route.metrics.traps.inc();
            }
            error!(route = %route.path, "{message}");
            response::error(StatusCode::INTERNAL_SERVER_ERROR, first_line(&message))
        }
    }
}

fn deadline_exceeded(message: impl Into<String>) -> Response<Body> {
    response::error(StatusCode::GATEWAY_TIMEOUT, message)
}

/// The first line of a possibly long trap report (backtraces go to the log only).
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).to_string()
}
