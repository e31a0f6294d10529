//! The Open Inference Protocol (KServe v2, REST) for the node's models: what Triton, KServe
//! and MLServer clients speak.
//!
//! - `GET /v2`: server metadata;
//! - `GET /v2/models/{model}[/versions/{v}]`: model metadata, from the model's signature
//!   (`-1` for a dimension of any size);
//! - `GET /v2/models/{model}[/versions/{v}]/ready`;
//! - `GET /v2/models/{model}[/versions/{v}]/config`: the model's configuration as Triton
//!   publishes it (`max_batch_size`, inputs and outputs with `TYPE_*` data types and dims,
//!   dynamic batching, instance groups), for Triton's clients and tools;
//! - `POST /v2/repository/index`: the models loaded, each `READY` (Triton's model repository
//!   index, tritonclient's `get_model_repository_index`);
//! - `POST /v2/models/{model}[/versions/{v}]/infer`: JSON tensors, or the binary tensor data
//!   extension (`Inference-Header-Content-Length`), through the model's scheduler like a
//!   guest's call: batching, queue limits, priorities, deadlines, cache and metrics apply.
//!
//! Health endpoints live in the router, since they answer for the whole node.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::http::response::{self, Body};
use crate::inference::scheduler::ComputeError;
use crate::inference::served::ServedModel;
use crate::inference::tensor::{ElementType, NamedTensor, Tensor, TensorError};
use crate::node::config::OIP_PREFIX;
use crate::node::models::Models;
use crate::request::RequestContext;

/// Header giving the length of the JSON part of a binary-extension body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// Largest infer request body accepted.
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// Deadline of an infer request with no `x-edge-deadline-ms` header.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An OIP request, parsed from the path.
pub enum Endpoint<'a> {
    Server,
    RepositoryIndex,
    Metadata(&'a str),
    Ready(&'a str),
    Config(&'a str),
    Infer(&'a str),
    /// `POST /v2/repository/models/{m}/load` (needs the admin token).
    RepositoryLoad(&'a str),
    /// `POST /v2/repository/models/{m}/unload` (needs the admin token).
    RepositoryUnload(&'a str),
}

impl<'a> Endpoint<'a> {
    /// The endpoint `path` names, if any.
    pub fn parse(path: &'a str) -> Option<Endpoint<'a>> {
        let rest = path.strip_prefix(OIP_PREFIX)?;
        if rest.is_empty() || rest == "/" {
            return Some(Endpoint::Server);
        }
        if rest == "/repository/index" {
            return Some(Endpoint::RepositoryIndex);
        }
        if let Some(call) = rest.strip_prefix("/repository/models/") {
            return match call.split('/').collect::<Vec<_>>().as_slice() {
                [model, "load"] if !model.is_empty() => Some(Endpoint::RepositoryLoad(model)),
                [model, "unload"] if !model.is_empty() => Some(Endpoint::RepositoryUnload(model)),
                _ => None,
            };
        }
        let parts: Vec<&str> = rest.strip_prefix("/models/")?.split('/').collect();
        // Versions are accepted and ignored: each model has one.
        let (model, action) = match parts.as_slice() {
            [model, "versions", _, action @ ..] | [model, action @ ..] => (*model, action),
            [] => return None,
        };
        match action {
            [] => Some(Endpoint::Metadata(model)),
            ["ready"] => Some(Endpoint::Ready(model)),
            ["config"] => Some(Endpoint::Config(model)),
            ["infer"] => Some(Endpoint::Infer(model)),
            _ => None,
        }
    }
}

/// Server metadata.
pub fn server_metadata() -> Response<Body> {
    response::json(
        StatusCode::OK,
        &json!({
            "name": "edge-infer",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": ["binary_tensor_data"],
        }),
    )
}

/// The model repository index: every loaded model, version 1, ready.
pub fn repository_index(models: &Models, method: &Method) -> Response<Body> {
    if method != Method::POST {
        return response::error(StatusCode::METHOD_NOT_ALLOWED, "the repository index takes POST");
    }
    let index: Vec<Value> = models
        .all()
        .iter()
        .map(|model| json!({ "name": model.name(), "version": "1", "state": "READY", "reason": "" }))
        .collect();
    response::json(StatusCode::OK, &Value::Array(index))
}

/// Model metadata, or 404.
pub fn model_metadata(models: &Models, name: &str) -> Response<Body> {
    match models.get(name) {
        Some(model) => response::json(StatusCode::OK, &describe_model(model)),
        None => no_model(name),
    }
}

/// A model's metadata as the protocol gives it: name, versions, platform, inputs, outputs.
pub fn describe_model(model: &ServedModel) -> Value {
    let describe = |specs: &[crate::inference::tensor::TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|spec| {
                json!({
                    "name": spec.name,
                    "datatype": spec.element_type.to_string(),
                    "shape": spec.shape_for_display(),
                })
            })
            .collect()
    };
    let signature = model.signature();
    json!({
        "name": model.name(),
        "versions": ["1"],
        "platform": if model.ensemble().is_some() { "ensemble" } else { "onnx" },
        "inputs": describe(&signature.inputs),
        "outputs": describe(&signature.outputs),
    })
}

/// A model's configuration, as Triton publishes it (over REST and gRPC).
pub struct PublishedConfig {
    /// `onnxruntime_onnx` for a model (split or not), `ensemble` for an ensemble (as Triton
    /// names them).
    pub platform: &'static str,
    /// Which backends run it (for a pipeline, each step's, joined by `+`).
    pub backend: String,
    /// Above 0 when the model batches along its first axis; `dims` then leave that axis out.
    pub max_batch_size: usize,
    pub inputs: Vec<PublishedTensor>,
    pub outputs: Vec<PublishedTensor>,
    pub executors: usize,
    pub on_gpu: bool,
    pub max_queue_delay_us: u64,
    pub max_padding_ratio: f64,
}

/// One input or output in a [`PublishedConfig`].
pub struct PublishedTensor {
    pub name: String,
    pub element_type: ElementType,
    pub dims: Vec<i64>,
}

impl PublishedConfig {
    /// What `model` publishes. A pipeline (an ensemble, or a split model) publishes no batching
    /// of its own (each step batches in its own model's scheduler) and its steps' executors
    /// together.
    pub fn of(served: &ServedModel) -> PublishedConfig {
        let signature = served.signature();
        let schedulers = served.schedulers();
        let single = match served {
            ServedModel::Single(model) => Some(model),
            ServedModel::Pipeline(_) => None,
        };
        let batches_on_first_axis = single.is_some_and(|model| model.max_batch_items() > 1)
            && signature.inputs.iter().chain(&signature.outputs).all(|spec| spec.batch_axis == Some(0));
        let max_batch_size = match single {
            Some(model) if batches_on_first_axis => model.max_batch_items(),
            _ => 0,
        };
        let describe = |specs: &[crate::inference::tensor::TensorSpec]| -> Vec<PublishedTensor> {
            specs
                .iter()
                .map(|spec| {
                    let dims = spec.shape_for_display();
                    let dims = if batches_on_first_axis { &dims[1..] } else { &dims[..] };
                    PublishedTensor {
                        name: spec.name.clone(),
                        element_type: spec.element_type,
                        dims: dims.to_vec(),
                    }
                })
                .collect()
        };
        PublishedConfig {
            platform: if served.ensemble().is_some() { "ensemble" } else { "onnxruntime_onnx" },
            backend: served.backend(),
            max_batch_size,
            inputs: describe(&signature.inputs),
            outputs: describe(&signature.outputs),
            executors: schedulers.iter().map(|model| model.executors()).sum(),
            on_gpu: schedulers.iter().any(|model| model.on_gpu()),
            max_queue_delay_us: single.map_or(0, |model| model.max_queue_delay().as_micros() as u64),
            max_padding_ratio: single.map_or(0.0, |model| model.max_padding_ratio()),
        }
    }
}

/// A model's configuration as Triton publishes it, or 404.
pub fn model_config(models: &Models, name: &str) -> Response<Body> {
    let Some(model) = models.get(name) else { return no_model(name) };
    let published = PublishedConfig::of(model);
    let describe = |tensors: &[PublishedTensor]| -> Vec<Value> {
        tensors
            .iter()
            .map(|t| json!({ "name": t.name, "data_type": format!("TYPE_{}", t.element_type), "dims": t.dims }))
            .collect()
    };
    let mut config = json!({
        "name": model.name(),
        "platform": published.platform,
        "backend": published.backend,
        "max_batch_size": published.max_batch_size,
        "input": describe(&published.inputs),
        "output": describe(&published.outputs),
        "parameters": {
            "max_padding_ratio": { "string_value": published.max_padding_ratio.to_string() },
        },
    });
    if published.max_batch_size > 0 {
        config["dynamic_batching"] = json!({ "max_queue_delay_microseconds": published.max_queue_delay_us });
    }
    if let Some(pipeline) = model.ensemble() {
        // Triton's ensemble scheduling: each step's model and how tensors map to it (an
        // ensemble has no instances of its own).
        let steps: Vec<Value> = pipeline
            .steps()
            .iter()
            .map(|step| {
                let map = |pairs: &[(String, String)]| -> Map<String, Value> {
                    pairs.iter().map(|(own, tensor)| (own.clone(), json!(tensor))).collect()
                };
                json!({
                    "model_name": step.model.name(),
                    "model_version": -1,
                    "input_map": map(&step.inputs),
                    "output_map": map(&step.outputs),
                })
            })
            .collect();
        config["ensemble_scheduling"] = json!({ "step": steps });
    } else {
        config["instance_group"] = json!([{
            "name": model.name(),
            "count": published.executors,
            "kind": if published.on_gpu { "KIND_GPU" } else { "KIND_CPU" },
        }]);
    }
    response::json(StatusCode::OK, &config)
}

/// Model readiness: loaded models are ready.
pub fn model_ready(models: &Models, name: &str) -> Response<Body> {
    match models.get(name) {
        Some(_) => response::json(StatusCode::OK, &json!({ "name": name, "ready": true })),
        None => no_model(name),
    }
}

fn no_model(name: &str) -> Response<Body> {
    response::error(StatusCode::NOT_FOUND, format!("no model named {name:?}"))
}

/// The JSON part of an infer request.
#[derive(Deserialize)]
struct InferRequest {
    id: Option<String>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<usize>,
    datatype: String,
    data: Option<Value>,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// Runs an infer request: `body` is the whole request body.
pub async fn infer(
    models: &Models,
    name: &str,
    method: &Method,
    header_length: Option<&HeaderValue>,
    body: Bytes,
    context: &RequestContext,
) -> Response<Body> {
    if method != Method::POST {
        return response::error(StatusCode::METHOD_NOT_ALLOWED, "infer takes POST");
    }
    let Some(model) = models.get(name) else { return no_model(name) };
    let parsed = parse_request(header_length, body)
        .and_then(|(request, binary)| Ok((input_tensors(&request.inputs, binary)?, request)));
    let (inputs, request) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return response::error(StatusCode::BAD_REQUEST, error.to_string()),
    };
    let deadline = tokio::time::Instant::from_std(context.deadline);
    let outputs = match tokio::time::timeout_at(deadline, model.compute(inputs, context)).await {
        Ok(Ok(outputs)) => outputs,
        Ok(Err(error)) => return compute_error(error),
        Err(_) => return response::error(StatusCode::GATEWAY_TIMEOUT, "the request's deadline passed"),
    };
    infer_response(model, &request, outputs)
}

fn compute_error(error: ComputeError) -> Response<Body> {
    let message = error.to_string();
    match error {
        ComputeError::InvalidInput(_) => response::error(StatusCode::UNPROCESSABLE_ENTITY, message),
        ComputeError::Overloaded { .. } => response::overloaded(message),
        ComputeError::DeadlineExpired { .. } => response::error(StatusCode::GATEWAY_TIMEOUT, message),
        ComputeError::Failed { .. } => response::error(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
}

/// What is wrong with an infer request; answered 400.
#[derive(Debug, thiserror::Error)]
enum BadRequest {
    #[error("{HEADER_LENGTH} must be a length within the body")]
    HeaderLength,
    #[error("malformed infer request: {0}")]
    Json(#[from] serde_json::Error),
    #[error("datatype {0} is not supported")]
    Datatype(String),
    #[error("input {0:?} has no data")]
    NoData(String),
    #[error("input {input:?}: binary data is shorter than {size} bytes")]
    ShortBinary { input: String, size: usize },
    #[error("input {input:?}: {reason}")]
    Data { input: String, reason: DataError },
    #[error("input {input:?}: {reason}")]
    Tensor { input: String, reason: TensorError },
}

/// Why an input's JSON data cannot be its tensor's bytes.
#[derive(Debug, thiserror::Error)]
enum DataError {
    #[error("{0} is not a number")]
    NotANumber(Value),
    #[error("{0} is not an integer in range")]
    OutOfRange(Value),
    #[error("send {0} data with the binary tensor data extension")]
    BinaryOnly(ElementType),
}

/// Splits the body into its JSON request and binary tensor data.
fn parse_request(
    header_length: Option<&HeaderValue>,
    body: Bytes,
) -> Result<(InferRequest, Bytes), BadRequest> {
    let json_length = match header_length {
        None => body.len(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or(BadRequest::HeaderLength)?,
    };
    let request: InferRequest = serde_json::from_slice(&body[..json_length])?;
    Ok((request, body.slice(json_length..)))
}

fn element_type(datatype: &str) -> Result<ElementType, BadRequest> {
    ElementType::from_name(datatype).ok_or_else(|| BadRequest::Datatype(datatype.to_string()))
}

/// The request's input tensors, from JSON data or the binary part, in request order.
fn input_tensors(inputs: &[InputTensor], mut binary: Bytes) -> Result<Vec<NamedTensor>, BadRequest> {
    inputs
        .iter()
        .map(|input| {
            let element_type = element_type(&input.datatype)?;
            let data = match input.parameters.get("binary_data_size").and_then(Value::as_u64) {
                Some(size) => {
                    let size = size as usize;
                    if size > binary.len() {
                        return Err(BadRequest::ShortBinary { input: input.name.clone(), size });
                    }
                    binary.split_to(size)
                }
                None => {
                    let data = input.data.as_ref().ok_or_else(|| BadRequest::NoData(input.name.clone()))?;
                    let encoded = encode(data, element_type);
                    encoded.map_err(|reason| BadRequest::Data { input: input.name.clone(), reason })?.into()
                }
            };
            let tensor = Tensor::new(element_type, input.shape.clone(), data)
                .map_err(|reason| BadRequest::Tensor { input: input.name.clone(), reason })?;
            Ok((input.name.clone(), tensor))
        })
        .collect()
}

/// Little-endian bytes of a (possibly nested) JSON array of numbers.
fn encode(data: &Value, element_type: ElementType) -> Result<Vec<u8>, DataError> {
    let mut bytes = Vec::new();
    let mut pending = vec![data];
    let mut flat = Vec::new();
    while let Some(value) = pending.pop() {
        match value {
            Value::Array(items) => pending.extend(items.iter().rev()),
            Value::Number(_) => flat.push(value),
            other => return Err(DataError::NotANumber(other.clone())),
        }
    }
    for value in flat {
        let number = value.as_f64().expect("numbers convert to f64");
        match element_type {
            ElementType::F32 => bytes.extend((number as f32).to_le_bytes()),
            ElementType::F64 => bytes.extend(number.to_le_bytes()),
            ElementType::U8 => bytes.push(integer(value, 0, u8::MAX as i64)? as u8),
            ElementType::I32 => {
                bytes.extend((integer(value, i32::MIN as i64, i32::MAX as i64)? as i32).to_le_bytes())
            }
            ElementType::I64 => bytes.extend(integer(value, i64::MIN, i64::MAX)?.to_le_bytes()),
            ElementType::F16 | ElementType::Bf16 => {
                return Err(DataError::BinaryOnly(element_type));
            }
        }
    }
    Ok(bytes)
}

fn integer(value: &Value, min: i64, max: i64) -> Result<i64, DataError> {
    value.as_i64().filter(|v| (min..=max).contains(v)).ok_or_else(|| DataError::OutOfRange(value.clone()))
}

/// JSON numbers of a tensor's data.
fn decode(tensor: &Tensor) -> Option<Vec<Value>> {
    let data = &tensor.data;
    Some(match tensor.element_type {
        ElementType::F32 => {
            data.chunks_exact(4).map(|b| json!(f32::from_le_bytes(b.try_into().unwrap()))).collect()
        }
        ElementType::F64 => {
            data.chunks_exact(8).map(|b| json!(f64::from_le_bytes(b.try_into().unwrap()))).collect()
        }
        ElementType::U8 => data.iter().map(|b| json!(b)).collect(),
        ElementType::I32 => {
            data.chunks_exact(4).map(|b| json!(i32::from_le_bytes(b.try_into().unwrap()))).collect()
        }
        ElementType::I64 => {
            data.chunks_exact(8).map(|b| json!(i64::from_le_bytes(b.try_into().unwrap()))).collect()
        }
        ElementType::F16 | ElementType::Bf16 => return None,
    })
}

/// The infer response: the requested outputs (all, if none were named), each as JSON data
/// or, where asked for, as binary data after the JSON part.
fn infer_response(model: &ServedModel, request: &InferRequest, outputs: Vec<NamedTensor>) -> Response<Body> {
    let all_binary = request.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let mut described = Vec::new();
    let mut binary = BytesMut::new();
    for (name, tensor) in outputs {
        let requested = request.outputs.iter().find(|o| o.name == name);
        if !request.outputs.is_empty() && requested.is_none() {
            continue;
        }
        let as_binary = requested
            .and_then(|o| o.parameters.get("binary_data").and_then(Value::as_bool))
            .unwrap_or(all_binary);
        let mut output = json!({
            "name": name,
            "datatype": tensor.element_type.to_string(),
            "shape": tensor.shape,
        });
        match (as_binary, decode(&tensor)) {
            (false, Some(data)) => output["data"] = Value::Array(data),
            _ => {
                output["parameters"] = json!({ "binary_data_size": tensor.data.len() });
                binary.extend_from_slice(&tensor.data);
            }
        }
        described.push(output);
    }
    let mut header = json!({ "model_name": model.name(), "model_version": "1", "outputs": described });
    if let Some(id) = &request.id {
        header["id"] = json!(id);
    }
    if binary.is_empty() {
        return response::json(StatusCode::OK, &header);
    }
    let header = header.to_string();
    let header_length = header.len();
    let mut body = BytesMut::from(header.as_bytes());
    body.extend_from_slice(&binary);
    let mut response = response::text(StatusCode::OK, "application/octet-stream", body.freeze());
    response.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(header_length));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_endpoints() {
        assert!(matches!(Endpoint::parse("/v2"), Some(Endpoint::Server)));
        assert!(matches!(Endpoint::parse("/v2/models/digits"), Some(Endpoint::Metadata("digits"))));
        assert!(matches!(Endpoint::parse("/v2/models/digits/ready"), Some(Endpoint::Ready("digits"))));
        assert!(matches!(
            Endpoint::parse("/v2/models/digits/versions/1/config"),
            Some(Endpoint::Config("digits"))
        ));
        assert!(matches!(
            Endpoint::parse("/v2/models/digits/versions/1/infer"),
            Some(Endpoint::Infer("digits"))
        ));
        assert!(Endpoint::parse("/v2/models/digits/explode").is_none());
        assert!(Endpoint::parse("/v2/repository").is_none());
        assert!(matches!(Endpoint::parse("/v2/repository/index"), Some(Endpoint::RepositoryIndex)));
        assert!(matches!(
            Endpoint::parse("/v2/repository/models/digits/load"),
            Some(Endpoint::RepositoryLoad("digits"))
        ));
        assert!(matches!(
            Endpoint::parse("/v2/repository/models/digits/unload"),
            Some(Endpoint::RepositoryUnload("digits"))
        ));
        assert!(Endpoint::parse("/v2/repository/models//load").is_none());
    }

    #[test]
    fn nested_json_data_is_flattened_in_row_major_order() {
        let bytes = encode(&json!([[1, 2], [3, 4]]), ElementType::I32).unwrap();
        let values: Vec<i32> =
            bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(values, [1, 2, 3, 4]);
        assert!(encode(&json!([1, "x"]), ElementType::F32).is_err());
        assert!(encode(&json!([300]), ElementType::U8).is_err());
    }
}

/// Fuzzing the infer body decoder (`PROPTEST_CASES` sets the inputs per target; see
/// README, "Fuzzing"): any body, structured or not, is a tensor list or a `BadRequest`,
/// never a panic, and every tensor decoded holds exactly its shape's bytes.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// JSON that looks like tensor data: numbers, nested arrays, and now and then junk.
    fn data() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|v| json!(v)),
            Just(json!("seven")),
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 64, 8, |inner| prop::collection::vec(inner, 0..8).prop_map(Value::from))
    }

    fn input() -> impl Strategy<Value = Value> {
        let datatype =
            prop::sample::select(vec!["FP32", "FP16", "FP64", "BF16", "UINT8", "INT32", "INT64", "BOOL", ""]);
        let dim = prop_oneof![0usize..6, Just(usize::MAX), Just(1usize << 40)];
        (
            prop::sample::select(vec!["x", "ids", ""]),
            datatype,
            prop::collection::vec(dim, 0..4),
            prop::option::of(data()),
            prop::option::of(prop_oneof![0u64..64, Just(u64::MAX)]),
        )
            .prop_map(|(name, datatype, shape, data, binary)| {
                let mut input = json!({ "name": name, "datatype": datatype, "shape": shape });
                if let Some(data) = data {
                    input["data"] = data;
                }
                if let Some(size) = binary {
                    input["parameters"] = json!({ "binary_data_size": size });
                }
                input
            })
    }

    fn check(header_length: Option<usize>, body: Vec<u8>) {
        let header = header_length.map(|n| HeaderValue::from(n as u64));
        if let Ok((request, binary)) = parse_request(header.as_ref(), Bytes::from(body))
            && let Ok(tensors) = input_tensors(&request.inputs, binary)
        {
            for (_, tensor) in tensors {
                let elements: usize = tensor.shape.iter().product();
                assert_eq!(tensor.data.len(), elements * tensor.element_type.size());
            }
        }
    }

    proptest! {
        #[test]
        fn any_bytes(body in prop::collection::vec(any::<u8>(), 0..512), header in prop::option::of(0usize..600)) {
            check(header, body);
        }

        #[test]
        fn infer_requests(
            inputs in prop::collection::vec(input(), 0..4),
            binary in prop::collection::vec(any::<u8>(), 0..128),
            declare_length in any::<bool>(),
        ) {
            let mut body = json!({ "inputs": inputs }).to_string().into_bytes();
            let json_length = body.len();
            body.extend(binary);
            check(declare_length.then_some(json_length), body);
        }
    }
}
