//! The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`, as Triton's and
//! KServe's clients call it, on its own listener (`server.grpc_listen`), served through the
//! same front door as HTTP (`http::server`). `front` checks each call before tonic reads it
//! (tenancy, the admin token, message limits and the memory budget, with `wire` walking the
//! messages as they arrive against `schemas`); this module is the service tonic then calls,
//! with `convert` turning messages into tensors and model configurations.
//!
//! Inference goes through the same model schedulers as REST and the guests (so requests of
//! both protocols batch together), with the same deadlines, priorities, cache and metrics.
//! The gRPC deadline (`grpc-timeout`) is the request's deadline (default 10 s, shortened by
//! `x-edge-deadline-ms`); `x-edge-priority` (up to the tenant's) and `x-request-id` work as
//! in REST. A client that cancels drops its request, queued work included.
//!
//! Errors carry the status codes the protocol's clients expect: `INVALID_ARGUMENT` (bad
//! tensors or settings), `NOT_FOUND`, `RESOURCE_EXHAUSTED` (a full queue),
//! `DEADLINE_EXCEEDED`, `UNAVAILABLE` (still loading), `UNAUTHENTICATED` (repository
//! changes without the admin token), `FAILED_PRECONDITION` (a change that contradicts what
//! is deployed), `INTERNAL`: each failure's kind (`http::protocol`) mapped once, in `status`.

// tonic's `Status` is the error every method of the service returns; it is large, and boxing
// it here would only unbox it again at each method.
#![allow(clippy::result_large_err)]

mod convert;
mod front;
mod schemas;
mod status;
mod wire;

pub use self::front::Front;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::info;

use self::convert::{input_tensors, model_config};
use self::front::{CallState, CallTenant};
use self::status::{http_equivalent, status_of};
use crate::http::protocol::models::{self, no_model, tensor_metadata};
use crate::http::protocol::{self, Failure, FailureKind};
use crate::http::repository;
use crate::inference::served::ServedModel;
use crate::node::Node;
use crate::request::RequestContext;
use crate::request::memory::Charge;
use crate::request::tenant::Tenant;
use crate::telemetry::metrics::{self, Protocol, RouteMetrics};

/// The code generated from `proto/inference.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::GrpcInferenceService;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;
use proto::model_repository_parameter::ParameterChoice;
use proto::*;

/// Requests of one stream in flight at once; the stream waits beyond that.
const STREAM_IN_FLIGHT: usize = 64;

/// The service: the node it serves, and the series of its requests.
struct Service {
    node: Arc<Node>,
    metrics: Arc<RouteMetrics>,
}

/// The tenant and the call's state that the front put in a call's extensions.
fn call_of<T>(request: &Request<T>) -> (Arc<Tenant>, Option<Arc<CallState>>) {
    let tenant = request.extensions().get::<CallTenant>().map_or_else(Tenant::anonymous, |t| t.0.clone());
    (tenant, request.extensions().get::<Arc<CallState>>().cloned())
}

type Answer<T> = Result<Response<T>, Status>;

impl Service {
    /// The models of the runtime serving now, or UNAVAILABLE while loading.
    fn runtime(&self) -> Result<Arc<crate::node::Runtime>, Status> {
        let loading = || Failure::new(FailureKind::Unavailable, "the node is still loading its models");
        self.node.runtime().ok_or_else(|| loading().into())
    }

    fn model(&self, name: &str) -> Result<ServedModel, Status> {
        self.runtime()?.models().get(name).cloned().ok_or_else(|| no_model(name).into())
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Answer<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Answer<ServerReadyResponse> {
        Ok(Response::new(ServerReadyResponse { ready: self.node.is_ready() }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Answer<ModelReadyResponse> {
        let ready = self.node.runtime().is_some_and(|r| r.models().get(&request.get_ref().name).is_some());
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, _: Request<ServerMetadataRequest>) -> Answer<ServerMetadataResponse> {
        Ok(Response::new(ServerMetadataResponse {
            name: "edge-infer".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["model_repository".into(), "model_configuration".into()],
        }))
    }

    async fn model_metadata(&self, request: Request<ModelMetadataRequest>) -> Answer<ModelMetadataResponse> {
        let model = self.model(&request.get_ref().name)?;
        let signature = model.signature();
        let describe = |specs: &[crate::inference::tensor::TensorSpec]| -> Vec<TensorMetadata> {
            tensor_metadata(specs)
                .into_iter()
                .map(|tensor| TensorMetadata {
                    name: tensor.name,
                    datatype: tensor.element_type.to_string(),
                    shape: tensor.dims,
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: model.name().to_string(),
            versions: vec!["1".into()],
            platform: "onnx".into(),
            inputs: describe(&signature.inputs),
            outputs: describe(&signature.outputs),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Answer<ModelInferResponse> {
        let arrival = Instant::now();
        let model_name = request.get_ref().model_name.clone();
        let (tenant, state) = call_of(&request);
        if let Some(state) = &state {
            state.note_counted();
        }
        let context = match context(request.metadata(), arrival, tenant) {
            Ok(context) => context,
            Err(status) => {
                self.count(arrival, Some(&status));
                return Err(status);
            }
        };
        // Counted even if the call is dropped (the client cancelled, or the deadline went off
        // first).
        let mut observation =
            Observation { service: self, model: &model_name, context: &context, arrival, done: false };
        let answer = match self.model(&model_name) {
            Ok(model) => infer(&self.node, &model, request.into_inner(), &context).await,
            Err(status) => Err(status),
        };
        observation.finish(answer.as_ref().err());
        // What the answer holds stays charged until it has been handed to the connection.
        answer.map(|(response, charge)| {
            if let Some(state) = state {
                state.hold(charge);
            }
            Response::new(response)
        })
    }

    type ModelStreamInferStream = AnswerStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<ModelInferRequest>>,
    ) -> Answer<Self::ModelStreamInferStream> {
        let metadata = request.metadata().clone();
        let (tenant, state) = call_of(&request);
        // The stream's headers are checked once; each request gets its own deadline.
        context(&metadata, Instant::now(), tenant.clone())?;
        let mut incoming = request.into_inner();
        let (sender, receiver) = mpsc::channel(STREAM_IN_FLIGHT);
        let service = Service { node: self.node.clone(), metrics: self.metrics.clone() };
        let service = Arc::new(service);
        tokio::spawn(async move {
            let mut in_flight = JoinSet::new();
            loop {
                tokio::select! {
                    next = incoming.message(), if in_flight.len() < STREAM_IN_FLIGHT => match next {
                        Ok(Some(request)) => {
                            let (service, sender, metadata) = (service.clone(), sender.clone(), metadata.clone());
                            let tenant = tenant.clone();
                            // The message's charge, held until its answer is handed over.
                            let received = state.as_ref().and_then(|state| state.take_message_charge());
                            in_flight.spawn(async move {
                                let (answer, answered) = service.infer_one(&metadata, tenant, request).await;
                                // The answer's charge travels with it, until tonic takes it.
                                let _ = sender.send((Ok(answer), answered)).await;
                                drop(received);
                            });
                        }
                        // The client finished sending: answer what is in flight.
                        Ok(None) => break,
                        // A message that could not be read: answer what is in flight, then end
                        // the stream with the reason.
                        Err(status) => {
                            while in_flight.join_next().await.is_some() {}
                            let _ = sender.send((Err(status), None)).await;
                            return;
                        }
                    },
                    Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                    // The client stopped listening: what is in flight is dropped.
                    () = sender.closed() => return,
                }
            }
            tokio::select! {
                () = async { while in_flight.join_next().await.is_some() {} } => {}
                () = sender.closed() => {}
            }
        });
        Ok(Response::new(AnswerStream(receiver)))
    }

    async fn model_config(&self, request: Request<ModelConfigRequest>) -> Answer<ModelConfigResponse> {
        let model = self.model(&request.get_ref().name)?;
        Ok(Response::new(ModelConfigResponse { config: Some(model_config(&model)) }))
    }

    async fn repository_index(&self, _: Request<RepositoryIndexRequest>) -> Answer<RepositoryIndexResponse> {
        let runtime = self.runtime()?;
        let models = models::repository_index(&self.node, runtime.models())
            .into_iter()
            .map(|entry| repository_index_response::ModelIndex {
                name: entry.name,
                version: "1".into(),
                state: entry.state.into(),
                reason: entry.reason.into(),
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    // Repository calls reach here only with the admin token: the front checked it before it
    // read their bodies.
    async fn repository_model_load(
        &self,
        request: Request<RepositoryModelLoadRequest>,
    ) -> Answer<RepositoryModelLoadResponse> {
        let request = request.into_inner();
        let mut config = None;
        let mut files = Vec::new();
        for (key, parameter) in request.parameters {
            match (key.as_str(), parameter.parameter_choice) {
                ("config", Some(ParameterChoice::StringParam(text))) => config = Some(text),
                (file, Some(ParameterChoice::BytesParam(bytes))) if file.starts_with("file:") => {
                    files.push(bytes.to_vec())
                }
                (other, _) => {
                    return Err(Status::invalid_argument(format!("unexpected parameter {other:?}")));
                }
            }
        }
        let node = &self.node;
        let spec =
            repository::model_spec(node, &request.model_name, config.as_deref(), files).map_err(status_of)?;
        node.load_model(&request.model_name, spec).await.map_err(status_of)?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<RepositoryModelUnloadRequest>,
    ) -> Answer<RepositoryModelUnloadResponse> {
        self.node.unload_from_repository(&request.get_ref().model_name).await.map_err(status_of)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}

impl Service {
    /// One request of a stream: its answer, or the error message in its place; and what the
    /// answer holds against the memory budget.
    async fn infer_one(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        tenant: Arc<Tenant>,
        request: ModelInferRequest,
    ) -> (ModelStreamInferResponse, Option<Charge>) {
        let arrival = Instant::now();
        let (model_name, id) = (request.model_name.clone(), request.id.clone());
        let answer = match context(metadata, arrival, tenant) {
            Ok(context) => {
                let answer = match self.model(&model_name) {
                    Ok(model) => infer(&self.node, &model, request, &context).await,
                    Err(status) => Err(status),
                };
                self.observe(&model_name, &context, arrival, answer.as_ref().err());
                answer
            }
            Err(status) => {
                self.count(arrival, Some(&status));
                Err(status)
            }
        };
        match answer {
            Ok((response, charge)) => (
                ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) },
                Some(charge),
            ),
            // Answers come as requests finish: the id says which one failed.
            Err(status) => (
                ModelStreamInferResponse {
                    error_message: status.message().to_string(),
                    infer_response: Some(ModelInferResponse {
                        model_name,
                        model_version: "1".into(),
                        id,
                        ..Default::default()
                    }),
                },
                None,
            ),
        }
    }
}

/// A stream's answers as they finish, each with what it holds against the memory budget:
/// given back as tonic takes the answer to encode it.
pub struct AnswerStream(mpsc::Receiver<(Result<ModelStreamInferResponse, Status>, Option<Charge>)>);

impl tokio_stream::Stream for AnswerStream {
    type Item = Result<ModelStreamInferResponse, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|next| next.map(|(answer, _charge)| answer))
    }
}

impl Service {
    /// Counts one infer request; returns the HTTP status it counts as.
    fn count(&self, arrival: Instant, failure: Option<&Status>) -> u16 {
        let status = failure.map_or(200, |status| http_equivalent(status.code()));
        self.metrics.duration.observe(arrival.elapsed().as_secs_f64());
        self.metrics.request(status);
        metrics::inference_request(Protocol::Grpc, status);
        status
    }

    /// Counts and logs one infer request.
    fn observe(&self, model: &str, context: &RequestContext, arrival: Instant, failure: Option<&Status>) {
        let status = self.count(arrival, failure);
        info!(
            request_id = %context.id,
            protocol = "grpc",
            %model,
            status,
            total_us = arrival.elapsed().as_micros() as u64,
            "request"
        );
    }
}

/// One infer call being answered: counted and logged when finished, or when dropped unfinished
/// (as a deadline passed if it was past its deadline, else as cancelled by the client).
struct Observation<'a> {
    service: &'a Service,
    model: &'a str,
    context: &'a RequestContext,
    arrival: Instant,
    done: bool,
}

impl Observation<'_> {
    fn finish(&mut self, failure: Option<&Status>) {
        self.done = true;
        self.service.observe(self.model, self.context, self.arrival, failure);
    }
}

impl Drop for Observation<'_> {
    fn drop(&mut self) {
        if !self.done {
            let code = if Instant::now() >= self.context.deadline {
                Code::DeadlineExceeded
            } else {
                Code::Cancelled
            };
            self.service.observe(self.model, self.context, self.arrival, Some(&Status::new(code, "dropped")));
        }
    }
}

/// How much earlier than the client's `grpc-timeout` the request's own deadline falls: tonic
/// times the call from its arrival, before the message is decoded, and ends it at the
/// deadline; the request's deadline comes first, so it answers DEADLINE_EXCEEDED itself.
const DEADLINE_MARGIN: Duration = Duration::from_millis(2);

/// The request's context from its metadata: id, priority (at most `tenant`'s), and a
/// deadline from `grpc-timeout` (default 10 s, less [`DEADLINE_MARGIN`]) shortened by
/// `x-edge-deadline-ms`.
fn context(
    metadata: &tonic::metadata::MetadataMap,
    arrival: Instant,
    tenant: Arc<Tenant>,
) -> Result<RequestContext, Status> {
    let headers = metadata.clone().into_headers();
    let timeout = match headers.get("grpc-timeout") {
        None => protocol::DEFAULT_TIMEOUT,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(grpc_timeout)
            .ok_or_else(|| Status::invalid_argument("grpc-timeout is malformed"))?
            .saturating_sub(DEADLINE_MARGIN),
    };
    RequestContext::from_headers(&headers, arrival, timeout, tenant)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Runs one infer request on `model`; the answer, and its outputs charged to the node's
/// memory budget (twice: tonic encodes them into a buffer of their own).
async fn infer(
    node: &Node,
    model: &ServedModel,
    request: ModelInferRequest,
    context: &RequestContext,
) -> Result<(ModelInferResponse, Charge), Status> {
    let requested: Vec<String> = request.outputs.iter().map(|output| output.name.clone()).collect();
    let inputs = input_tensors(request.inputs, request.raw_input_contents)?;
    let outputs = protocol::compute(model, inputs, context).await?;
    let output_bytes: usize = outputs.iter().map(|(_, tensor)| tensor.data.len()).sum();
    let charge = node.memory().charge(2 * output_bytes).map_err(|exhausted| {
        metrics::memory_refused("grpc");
        status_of(exhausted)
    })?;
    let mut response = ModelInferResponse {
        model_name: model.name().to_string(),
        model_version: "1".into(),
        id: request.id,
        ..Default::default()
    };
    for (name, tensor) in outputs {
        if !requested.is_empty() && !requested.contains(&name) {
            continue;
        }
        response.outputs.push(InferOutputTensor {
            name,
            datatype: tensor.element_type.to_string(),
            shape: tensor.shape.iter().map(|&d| d as i64).collect(),
            ..Default::default()
        });
        response.raw_output_contents.push(tensor.data);
    }
    if let Some(missing) = requested.iter().find(|name| !response.outputs.iter().any(|o| &o.name == *name)) {
        return Err(Status::invalid_argument(format!("the model has no output {missing:?}")));
    }
    Ok((response, charge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_every_unit_and_nothing_else() {
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "S", "12", "1x", "123456789S", "-1S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }
}
