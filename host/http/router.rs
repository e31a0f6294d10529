//! Request dispatch: health and metrics, the front door (`GET /`), guest routes by path, the
//! Open Inference Protocol under `/v2`, else 404. Every response carries `x-request-id`, and
//! every request gets one access-log line.
//!
//! For a guest route, `serve_guest` applies the route's limits in order: the body size
//! (413), admission (503 + `Retry-After` when the queue is full, 504 when the deadline passes
//! in it), and then runs the guest on a fresh instance. Malformed deadline or priority
//! headers are a 400. Every failure is a JSON error; none of them affects other requests.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::json;
use tracing::{error, info};

use crate::http::admin;
use crate::http::index;
use crate::http::oip::{self, Endpoint};
use crate::http::repository::Action;
use crate::http::response::{self, Body};
use crate::node::config::{HEALTH_PATH, METRICS_PATH};
use crate::node::{Node, Route, Runtime};
use crate::request::{ID_HEADER, RequestContext};
use crate::sandbox::admission::Rejection;
use crate::sandbox::component::GuestFailure;
use crate::telemetry::metrics::{self, Protocol};

/// Answers one request.
pub async fn dispatch(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    let arrival = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let runtime = node.runtime();
    let runtime = runtime.as_deref();
    let route = runtime.and_then(|runtime| runtime.route_for(&path));
    let timeout = route.map_or(oip::DEFAULT_TIMEOUT, |route| route.timeout);
    let context = RequestContext::from_headers(request.headers(), arrival, timeout);
    let (mut response, metrics) = match (&context, runtime) {
        (Err(error), _) => (response::error(StatusCode::BAD_REQUEST, error.to_string()), None),
        _ if path == HEALTH_PATH || path == "/v2/health/live" => {
            (response::json(StatusCode::OK, &json!({ "live": true })), None)
        }
        _ if path == "/v2/health/ready" => {
            let ready = node.is_ready();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (response::json(status, &json!({ "ready": ready })), None)
        }
        (_, None) => (response::overloaded("the node is still loading its models and components"), None),
        (_, Some(runtime)) if path == METRICS_PATH => {
            runtime.refresh_gauges();
            (response::text(StatusCode::OK, "text/plain; version=0.0.4", metrics::render()), None)
        }
        (_, Some(runtime)) if path == "/" && method == Method::GET => {
            (index::respond(runtime, node.is_ready(), request.headers()), None)
        }
        (Ok(context), Some(runtime)) => match (route, Endpoint::parse(&path)) {
            (Some(route), _) => (serve_guest(route, request, context).await, Some(&route.metrics)),
            (None, Some(endpoint)) => {
                (serve_oip(&node, runtime, endpoint, request, context).await, Some(&runtime.oip_metrics))
            }
            (None, None) => (response::error(StatusCode::NOT_FOUND, format!("no route for {path}")), None),
        },
    };
    let status = response.status().as_u16();
    if let Some(metrics) = metrics {
        metrics.duration.observe(arrival.elapsed().as_secs_f64());
        metrics.request(status);
    }
    let id = context.as_ref().map_or_else(|_| Arc::from("-"), |c| c.id.clone());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(ID_HEADER, value);
    }
    let stats = context.map(|c| c.stats.lock().unwrap().clone()).unwrap_or_default();
    info!(
        request_id = %id,
        %method,
        %path,
        route = route.map_or("-", |route| route.path.as_str()),
        status,
        total_us = arrival.elapsed().as_micros() as u64,
        models = %stats.models.join(","),
        model_queue_us = stats.model_queue.as_micros() as u64,
        model_compute_us = stats.model_compute.as_micros() as u64,
        "request"
    );
    response
}

async fn serve_guest(route: &Route, request: Request<Incoming>, context: &RequestContext) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = match read_body(&parts.headers, body, route.max_body_bytes, context).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request = Request::from_parts(parts, Full::new(body));

    let permit = match route.admission.admit(context).await {
        Ok(permit) => permit,
        Err(Rejection::QueueFull) => {
            return response::overloaded(format!("route {} is at capacity; retry shortly", route.path));
        }
        Err(Rejection::DeadlineExpired) => {
            return deadline_exceeded("the deadline passed while waiting for an instance");
        }
    };

    match route.guest.handle(request, context.clone(), permit).await {
        Ok(response) => response,
        Err(failure) => failure_response(route, failure, &context.id),
    }
}

async fn serve_oip(
    node: &Node,
    runtime: &Runtime,
    endpoint: Endpoint<'_>,
    request: Request<Incoming>,
    context: &RequestContext,
) -> Response<Body> {
    let models = runtime.models();
    match endpoint {
        Endpoint::Server => oip::server_metadata(),
        Endpoint::RepositoryIndex => oip::repository_index(models, request.method()),
        Endpoint::Metadata(model) => oip::model_metadata(models, model),
        Endpoint::Ready(model) => oip::model_ready(models, model),
        Endpoint::Config(model) => oip::model_config(models, model),
        Endpoint::RepositoryLoad(_) | Endpoint::RepositoryUnload(_)
            if !node.control().repository_changes_on_main_listener() =>
        {
            response::error(
                StatusCode::FORBIDDEN,
                "model repository changes on this listener need server.admin_token_file; use the admin listener",
            )
        }
        Endpoint::RepositoryLoad(model) => admin::change_repository(node, Action::Load, model, request).await,
        Endpoint::RepositoryUnload(model) => {
            admin::change_repository(node, Action::Unload, model, request).await
        }
        Endpoint::Infer(model) => {
            let (parts, body) = request.into_parts();
            let response = match read_body(&parts.headers, body, oip::MAX_BODY_BYTES, context).await {
                Ok(body) => {
                    let header_length = parts.headers.get(oip::HEADER_LENGTH);
                    oip::infer(models, model, &parts.method, header_length, body, context).await
                }
                Err(response) => response,
            };
            metrics::inference_request(Protocol::Rest, response.status().as_u16());
            response
        }
    }
}

/// Reads a whole request body of at most `limit` bytes before the request's deadline.
async fn read_body(
    headers: &http::HeaderMap,
    body: Incoming,
    limit: usize,
    context: &RequestContext,
) -> Result<Bytes, Response<Body>> {
    let declared_length =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > limit as u64) {
        return Err(too_large(limit));
    }
    let deadline = tokio::time::Instant::from_std(context.deadline);
    match tokio::time::timeout_at(deadline, read_whole(body, limit)).await {
        Ok(read) => read,
        Err(_) => Err(deadline_exceeded("the request body did not arrive in time")),
    }
}

/// Reads a whole request body of at most `limit` bytes (413 beyond it).
pub async fn read_whole(body: Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(limit)),
        Err(e) => Err(response::error(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"))),
    }
}

fn too_large(limit: usize) -> Response<Body> {
    response::error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body over {limit} bytes"))
}

fn failure_response(route: &Route, failure: GuestFailure, request_id: &str) -> Response<Body> {
    let message = failure.to_string();
    match failure {
        GuestFailure::DeadlineExceeded => deadline_exceeded(message),
        GuestFailure::NoInstance(_) | GuestFailure::ModelOverloaded(_) => response::overloaded(message),
        GuestFailure::BadRequest(_) => response::error(StatusCode::BAD_REQUEST, message),
        GuestFailure::Trapped(_)
        | GuestFailure::TaskFailed(_)
        | GuestFailure::NoResponse
        | GuestFailure::AnsweredWithError(_) => {
            if matches!(failure, GuestFailure::Trapped(_) | GuestFailure::TaskFailed(_)) {
                route.metrics.traps.inc();
            }
            // The answer names the reason; the log has the whole chain and the wasm backtrace.
            let details = match &failure {
                GuestFailure::Trapped(trap) => format!("{trap:?}"),
                other => other.to_string(),
            };
            error!(route = %route.path, %request_id, %details, "{message}");
            response::error(StatusCode::INTERNAL_SERVER_ERROR, message)
        }
    }
}

fn deadline_exceeded(message: impl Into<String>) -> Response<Body> {
    response::error(StatusCode::GATEWAY_TIMEOUT, message)
}
