//! Request dispatch: health and metrics (for anyone), then, for a request's tenant (see
//! `tenancy`), guest routes by path (the longest mount; the root route `/` last), the Open
//! Inference Protocol under `/v2` (which no route takes), and the front door (`GET /`, unless a
//! root route takes it), else 404. Every response carries `x-request-id`, and every request
//! gets one access-log line.
//!
//! For a guest route, `serve_guest` applies the route's limits in order: the body size
//! (413) and the node's memory budget (503 + `Retry-After`), admission (503 + `Retry-After`
//! when the queue is full, 504 when the deadline passes in it), and then runs the guest on a
//! fresh instance. Malformed deadline or priority headers are a 400; a tenant over its own
//! limits gets 429. Every failure is a JSON error; none of them affects other requests.

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use tracing::{error, info};

use crate::http::admin;
use crate::http::body;
use crate::http::client::Client;
use crate::http::credentials;
use crate::http::index;
use crate::http::mount;
use crate::http::oip::{self, Endpoint};
use crate::http::protocol::{self, Failure, FailureKind, models};
use crate::http::repository::Action;
use crate::http::response::{self, Body, hold};
use crate::http::tenancy::{self, Admitted};
use crate::node::config::{HEALTH_PATH, METRICS_PATH};
use crate::node::{Node, Route, Runtime};
use crate::request::{ID_HEADER, RequestContext};
use crate::sandbox::failure::GuestFailure;
use crate::telemetry::metrics::{self, Protocol, RouteMetrics};

/// What a request was, for its access-log line and its route's series.
struct Served<'a> {
    response: Response<Body>,
    metrics: Option<&'a RouteMetrics>,
    context: Option<RequestContext>,
}

impl<'a> Served<'a> {
    fn plain(response: Response<Body>) -> Served<'a> {
        Served { response, metrics: None, context: None }
    }
}

/// Answers one request.
pub async fn dispatch(node: Arc<Node>, request: Request<Incoming>) -> Response<Body> {
    let arrival = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let runtime = node.runtime();
    let runtime = runtime.as_deref();
    let route = runtime.and_then(|runtime| runtime.route_for(&path));
    let served = match runtime {
        _ if path == HEALTH_PATH || path == "/v2/health/live" => {
            Served::plain(response::json(StatusCode::OK, &json!({ "live": true })))
        }
        _ if path == "/v2/health/ready" => {
            let ready = node.is_ready();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            Served::plain(response::json(status, &json!({ "ready": ready })))
        }
        None => Served::plain(response::failure(Failure::new(
            FailureKind::Unavailable,
            "the node is still loading its models and components",
        ))),
        Some(runtime) if path == METRICS_PATH => {
            node.refresh_gauges(runtime);
            Served::plain(response::text(StatusCode::OK, "text/plain; version=0.0.4", metrics::render()))
        }
        Some(runtime) => match (route, Endpoint::parse(&path)) {
            // Repository changes are the control plane's: the admin token authorizes them.
            (None, Some(endpoint @ (Endpoint::RepositoryLoad(_) | Endpoint::RepositoryUnload(_)))) => {
                Served::plain(change_repository(&node, endpoint, request).await)
            }
            (route, endpoint) => for_tenant(&node, runtime, route, endpoint, request, arrival).await,
        },
    };
    let Served { mut response, metrics, context } = served;
    let status = response.status().as_u16();
    if let Some(metrics) = metrics {
        metrics.duration.observe(arrival.elapsed().as_secs_f64());
        metrics.request(status);
    }
    let id = context.as_ref().map_or_else(|| Arc::from("-"), |c| c.id.clone());
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(ID_HEADER, value);
    }
    let stats = context.as_ref().map(|c| c.stats.lock().unwrap().clone()).unwrap_or_default();
    info!(
        request_id = %id,
        %method,
        %path,
        route = route.map_or("-", |route| route.path.as_str()),
        tenant = context.as_ref().map_or("-", |c| c.tenant.name.as_str()),
        status,
        total_us = arrival.elapsed().as_micros() as u64,
        models = %stats.models.join(","),
        model_queue_us = stats.model_queue.as_micros() as u64,
        model_compute_us = stats.model_compute.as_micros() as u64,
        "request"
    );
    response
}

/// A data-plane request: its tenant let in (401, 429 otherwise), then answered.
async fn for_tenant<'a>(
    node: &Node,
    runtime: &'a Runtime,
    route: Option<&'a Route>,
    endpoint: Option<Endpoint<'_>>,
    request: Request<Incoming>,
    arrival: Instant,
) -> Served<'a> {
    let metrics = match (route, &endpoint) {
        (Some(route), _) => Some(&route.metrics),
        (None, Some(_)) => Some(&runtime.oip_metrics),
        (None, None) => None,
    };
    let admitted = match tenancy::admit_naming(node, request.headers(), request.extensions().get::<Client>())
    {
        Ok(admitted) => admitted,
        Err(refusal) => {
            return Served { response: response::failure(refusal.into()), metrics, context: None };
        }
    };
    let timeout = route.map_or(protocol::DEFAULT_TIMEOUT, |route| route.timeout);
    let context =
        match RequestContext::from_headers(request.headers(), arrival, timeout, admitted.tenant.clone()) {
            Ok(context) => context,
            Err(error) => {
                let response = response::failure(Failure::new(FailureKind::BadRequest, error.to_string()));
                return Served { response, metrics, context: None };
            }
        };
    let response = match (route, endpoint) {
        (Some(route), _) => serve_guest(node, route, request, &context, &admitted).await,
        (None, Some(endpoint)) => serve_oip(node, runtime, endpoint, request, &context).await,
        (None, None) if request.uri().path() == "/" && request.method() == Method::GET => {
            index::respond(runtime, node.is_ready(), request.headers())
        }
        (None, None) => response::failure(Failure::new(
            FailureKind::NotFound,
            format!("no route for {}", request.uri().path()),
        )),
    };
    // The tenant's place is held until the answer has been handed to the connection.
    let response = hold(response, admitted.permit);
    Served { response, metrics, context: Some(context) }
}

async fn serve_guest(
    node: &Node,
    route: &Route,
    request: Request<Incoming>,
    context: &RequestContext,
    admitted: &Admitted,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    tenancy::present_to_guest(&mut parts.headers, admitted);
    if let Err(refusal) = mount::present_to_guest(&mut parts, &route.path, route.spec.settings.strip_mount) {
        return response::failure(refusal);
    }
    let read = body::read_charged(
        &parts.headers,
        body,
        route.max_body_bytes,
        Some(context.deadline),
        node.memory(),
        "guest",
    );
    let (body, charge) = match read.await {
        Ok(read) => read,
        Err(refusal) => return response::failure(refusal.into()),
    };
    let request = Request::from_parts(parts, Full::new(body));

    let permit = match route.admission.admit(context).await {
        Ok(permit) => permit,
        Err(rejection) => return response::failure(Failure::admission(rejection, &route.path)),
    };

    match route.guest.handle(request, context.clone(), permit).await {
        // The body stays charged until the answer has been handed to the connection.
        Ok(response) => hold(response, charge),
        Err(failure) => {
            note_guest_failure(route, &failure, &context.id);
            response::failure(failure.into())
        }
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
        Endpoint::RepositoryIndex => oip::repository_index(node, models, request.method()),
        Endpoint::Metadata(model) => oip::model_metadata(models, model),
        Endpoint::Ready(model) => oip::model_ready(models, model),
        Endpoint::Config(model) => oip::model_config(models, model),
        Endpoint::RepositoryLoad(_) | Endpoint::RepositoryUnload(_) => {
            unreachable!("answered before tenancy")
        }
        Endpoint::Infer(model) => {
            let response = infer(node, models.get(model), model, request, context).await;
            metrics::inference_request(Protocol::Rest, response.status().as_u16());
            response
        }
    }
}

/// An infer request: the model must exist before its body is read, and the body fit the
/// protocol's limit and the memory budget.
async fn infer(
    node: &Node,
    model: Option<&crate::inference::served::ServedModel>,
    name: &str,
    request: Request<Incoming>,
    context: &RequestContext,
) -> Response<Body> {
    if request.method() != Method::POST {
        return response::failure(Failure::new(FailureKind::MethodNotAllowed, "infer takes POST"));
    }
    let Some(model) = model else { return response::failure(models::no_model(name)) };
    let (parts, body) = request.into_parts();
    let limit = node.limits().max_infer_request_bytes;
    match body::read_charged(&parts.headers, body, limit, Some(context.deadline), node.memory(), "rest").await
    {
        Ok((body, charge)) => {
            let header_length = parts.headers.get(oip::HEADER_LENGTH).cloned();
            oip::infer(model, header_length, body, context, charge).await
        }
        Err(refusal) => response::failure(refusal.into()),
    }
}

/// A model repository change on the main listener, where it is taken at all.
async fn change_repository(
    node: &Node,
    endpoint: Endpoint<'_>,
    request: Request<Incoming>,
) -> Response<Body> {
    let taken_here = node.control().repository_changes_on_main_listener();
    if let Err(refusal) = credentials::allow_repository_changes(taken_here) {
        return response::failure(refusal);
    }
    match endpoint {
        Endpoint::RepositoryLoad(model) => admin::change_repository(node, Action::Load, model, request).await,
        Endpoint::RepositoryUnload(model) => {
            admin::change_repository(node, Action::Unload, model, request).await
        }
        _ => unreachable!("only repository changes come here"),
    }
}

/// Counts and logs a guest's failure: a refusal for want of memory, a trap, and every failure
/// the node is to blame for (the log has the whole chain and the wasm backtrace; the answer
/// names the reason).
fn note_guest_failure(route: &Route, failure: &GuestFailure, request_id: &str) {
    match failure {
        GuestFailure::MemoryExhausted(_) => metrics::memory_refused("guest"),
        GuestFailure::Trapped(_)
        | GuestFailure::TaskFailed(_)
        | GuestFailure::NoResponse
        | GuestFailure::AnsweredWithError(_) => {
            if matches!(failure, GuestFailure::Trapped(_) | GuestFailure::TaskFailed(_)) {
                route.metrics.traps.inc();
            }
            let details = match failure {
                GuestFailure::Trapped(trap) => format!("{trap:?}"),
                other => other.to_string(),
            };
            error!(route = %route.path, %request_id, %details, "{failure}");
        }
        GuestFailure::DeadlineExceeded
        | GuestFailure::NoInstance(_)
        | GuestFailure::ModelOverloaded(_)
        | GuestFailure::BadRequest(_) => {}
    }
}
