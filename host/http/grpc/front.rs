//! The gRPC listener's side of the front door: every call is checked before tonic reads its
//! body, then tonic's generated service answers it.
//!
//! - Repository calls (load, unload) are authorized with the admin token from their headers
//!   first; without it, their bodies are never read.
//! - Health calls (`ServerLive`, `ServerReady`) are answered for anyone, as `/healthz` is.
//! - Other calls are their tenant's: named by credentials, held to the tenant's limits
//!   (`RESOURCE_EXHAUSTED` with `retry-after`), refused without credentials where they are
//!   required (`UNAUTHENTICATED`).
//! - Each message is walked as it arrives ([`wire`]): its declared length is checked against
//!   the method's limit before any of it is read (a `ModelInfer` is further held to what its
//!   model's inputs can be, once the model is named), repeated fields are capped, and the
//!   message and what decoding it will allocate are charged to the node's memory budget. The
//!   charges are held until the call's answer has been handed to the connection (a stream's
//!   messages' by the handler, as it answers each; its answers' until tonic takes them).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tonic::codegen::Service as _;
use tonic::{Code, Status};

use super::schemas;
use super::status::{code_of, http_equivalent, refused, status_of};
use super::wire::{Observer, Walker};
use super::{Service, proto};
use crate::http::credentials;
use crate::http::protocol::Failure;
use crate::http::protocol::models::no_model;
use crate::http::response::{Body, hold};
use crate::http::tenancy;
use crate::inference::served::ServedModel;
use crate::node::Node;
use crate::request::memory::{Charge, MemoryExhausted};
use crate::request::tenant::Tenant;
use crate::telemetry::metrics::{self, Protocol, RouteMetrics};

/// The service's path prefix.
const SERVICE_PATH: &str = "/inference.GRPCInferenceService/";
/// Largest message of a call that carries no tensors (metadata, readiness, …).
const SMALL_MESSAGE_BYTES: usize = 64 << 10;
/// Items a `ModelInfer` may carry for a model whose inputs are fixed but for the batch axis.
const MAX_ITEMS_PER_CALL: usize = 1024;
/// Room beside the tensors for the rest of a `ModelInfer` message.
const MESSAGE_OVERHEAD_BYTES: usize = 64 << 10;

/// What kind of call a request is, by its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Infer,
    StreamInfer,
    Repository,
    /// `ServerLive`, `ServerReady`: health, answered for anyone (probes carry no credentials).
    Health,
    Other,
}

impl Call {
    fn of(path: &str) -> Call {
        match path.strip_prefix(SERVICE_PATH) {
            Some("ModelInfer") => Call::Infer,
            Some("ModelStreamInfer") => Call::StreamInfer,
            Some("RepositoryModelLoad" | "RepositoryModelUnload") => Call::Repository,
            Some("ServerLive" | "ServerReady") => Call::Health,
            _ => Call::Other,
        }
    }
}

/// The tenant of a call, in its extensions (the anonymous tenant for repository calls).
#[derive(Clone, Debug)]
pub struct CallTenant(pub Arc<Tenant>);

/// What a call holds against the memory budget, and whether its handler has counted it.
#[derive(Default)]
pub struct CallState {
    /// One charge per message received, oldest first: a handler of a stream takes each as
    /// it takes the message; the rest are held until the answer has been handed to the
    /// connection.
    charges: Mutex<VecDeque<Charge>>,
    /// Set by the handler once it has counted and logged the call.
    counted: AtomicBool,
}

impl CallState {
    /// The charge of the oldest message not yet taken.
    pub fn take_message_charge(&self) -> Option<Charge> {
        self.charges.lock().unwrap_or_else(PoisonError::into_inner).pop_front()
    }

    /// Holds `charge` until the call's answer has been handed to the connection.
    pub fn hold(&self, charge: Charge) {
        self.charges.lock().unwrap_or_else(PoisonError::into_inner).push_back(charge);
    }

    /// The handler has counted the call.
    pub fn note_counted(&self) {
        self.counted.store(true, Ordering::Relaxed);
    }
}

/// The front of the gRPC service: checks, then tonic.
#[derive(Clone)]
pub struct Front {
    node: Arc<Node>,
    service: proto::grpc_inference_service_server::GrpcInferenceServiceServer<Service>,
    metrics: Arc<RouteMetrics>,
}

impl Front {
    pub fn new(node: Arc<Node>) -> Front {
        let metrics = Arc::new(RouteMetrics::new("grpc"));
        let service = Service { node: node.clone(), metrics: metrics.clone() };
        // Message sizes are checked as messages arrive (see `Limits`); tonic's own check is the
        // largest any call may send.
        let artifacts = usize::try_from(node.control().max_artifact_bytes()).unwrap_or(usize::MAX);
        let largest = node.limits().max_infer_request_bytes.max(SMALL_MESSAGE_BYTES).max(artifacts);
        let service = proto::grpc_inference_service_server::GrpcInferenceServiceServer::new(service)
            .max_decoding_message_size(largest)
            .max_encoding_message_size(node.limits().max_infer_request_bytes);
        Front { node, service, metrics }
    }

    /// Answers one call.
    pub async fn dispatch(&self, request: hyper::Request<Incoming>) -> hyper::Response<Body> {
        let call = Call::of(request.uri().path());
        let (mut parts, body) = request.into_parts();
        let tenant = match call {
            Call::Repository => match authorize(&self.node, &parts.headers) {
                Ok(()) => None,
                Err(failure) => return refused(failure),
            },
            Call::Health => None,
            _ => match tenancy::admit(&self.node, &parts.headers, parts.extensions.get()) {
                Ok(admitted) => Some(admitted),
                Err(refusal) => {
                    let failure = Failure::from(refusal);
                    if matches!(call, Call::Infer | Call::StreamInfer) {
                        self.count(code_of(failure.kind));
                    }
                    return refused(failure);
                }
            },
        };
        let (tenant, permit) = match tenant {
            Some((tenant, permit)) => (tenant, Some(permit)),
            None => (crate::request::tenant::Tenant::anonymous(), None),
        };
        parts.extensions.insert(CallTenant(tenant));
        let state = Arc::new(CallState::default());
        parts.extensions.insert(state.clone());
        let observer = CallObserver {
            node: self.node.clone(),
            call,
            limit: self.limit(call),
            length: 0,
            charge: None,
            state: state.clone(),
        };
        let schema = match call {
            Call::Infer | Call::StreamInfer => &schemas::MODEL_INFER_REQUEST,
            Call::Repository => &schemas::REPOSITORY_REQUEST,
            Call::Health | Call::Other => &schemas::OTHER_REQUEST,
        };
        let body = Guarded { body, walker: Walker::new(schema), observer, failed: false };
        let mut service = self.service.clone();
        let response = match service.call(hyper::Request::from_parts(parts, body)).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        if call == Call::Infer && !state.counted.load(Ordering::Relaxed) {
            // Refused before the handler ran (a message over its limits): counted here.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|value| value.to_str().ok()?.parse::<i32>().ok())
                .map_or(Code::Unknown, Code::from_i32);
            self.count(code);
        }
        let response = response.map(|body| {
            body.map_err(|status| {
                wasmtime_wasi_http::Error::InternalError(Some(status.message().to_string()))
            })
            .boxed_unsync()
        });
        hold(response, (state, permit))
    }

    /// The largest message a call may send before its model is known.
    fn limit(&self, call: Call) -> usize {
        let limits = self.node.limits();
        match call {
            Call::Infer | Call::StreamInfer => limits.max_infer_request_bytes,
            Call::Repository => {
                usize::try_from(self.node.control().max_artifact_bytes()).unwrap_or(usize::MAX)
            }
            Call::Health | Call::Other => SMALL_MESSAGE_BYTES,
        }
    }

    /// Counts an infer call refused before its handler ran with `code`.
    fn count(&self, code: Code) {
        let status = http_equivalent(code);
        self.metrics.request(status);
        metrics::inference_request(Protocol::Grpc, status);
    }
}

/// Lets a repository change through with the admin token in `headers`, where this listener
/// takes them.
fn authorize(node: &Node, headers: &HeaderMap) -> Result<(), Failure> {
    credentials::allow_repository_changes(node.control().repository_changes_on_grpc_listener())?;
    credentials::require_admin_token(node, headers)
}

/// The most bytes a `ModelInfer` for `model` may be: what its inputs can hold with
/// [`MAX_ITEMS_PER_CALL`] items, where its shapes bound that.
fn model_limit(model: &ServedModel) -> Option<usize> {
    model.signature().max_request_bytes(MAX_ITEMS_PER_CALL)?.checked_add(MESSAGE_OVERHEAD_BYTES)
}

/// Holds a call's messages to its limits as they arrive, charging them to the memory budget.
struct CallObserver {
    node: Arc<Node>,
    call: Call,
    /// The largest message allowed now.
    limit: usize,
    /// The length of the message being read.
    length: usize,
    /// What the message being read holds against the budget.
    charge: Option<Charge>,
    state: Arc<CallState>,
}

impl CallObserver {
    fn memory_refused(&self, exhausted: MemoryExhausted) -> Status {
        metrics::memory_refused("grpc");
        status_of(exhausted)
    }
}

impl Observer for CallObserver {
    fn message(&mut self, length: usize) -> Result<(), Status> {
        if length > self.limit {
            return Err(Status::resource_exhausted(format!(
                "a message of {length} bytes is over this call's limit of {} bytes",
                self.limit
            )));
        }
        self.length = length;
        let charge = self.node.memory().charge(length).map_err(|e| self.memory_refused(e))?;
        self.charge = Some(charge);
        Ok(())
    }

    fn model(&mut self, name: &str) -> Result<(), Status> {
        // A unary call is for one model: unknown, it is answered before the rest arrives;
        // known, the message is held to what that model's inputs can be.
        if self.call != Call::Infer {
            return Ok(());
        }
        let Some(runtime) = self.node.runtime() else { return Ok(()) };
        let Some(model) = runtime.models().get(name) else {
            return Err(status_of(no_model(name)));
        };
        if let Some(limit) = model_limit(model)
            && self.length > limit
        {
            return Err(Status::invalid_argument(format!(
                "a message of {} bytes is larger than model {name:?}'s inputs can be ({limit} bytes with {MAX_ITEMS_PER_CALL} items)",
                self.length
            )));
        }
        Ok(())
    }

    fn decoded(&mut self, bytes: usize) -> Result<(), Status> {
        let grown = match &mut self.charge {
            Some(charge) => charge.grow(bytes),
            None => Ok(()),
        };
        grown.map_err(|e| self.memory_refused(e))
    }

    fn finished(&mut self) -> Result<(), Status> {
        if let Some(charge) = self.charge.take() {
            self.state.hold(charge);
        }
        Ok(())
    }
}

/// A call's body, walked as it is read; the first refusal ends it with its status.
struct Guarded {
    body: Incoming,
    walker: Walker,
    observer: CallObserver,
    failed: bool,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(Status::from_error(Box::new(error))))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(status) = this.walker.feed(data, &mut this.observer)
                {
                    this.failed = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.body.is_end_stream()
    }
}
