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
//! - `POST /v2/repository/index`: the models served, each `READY` (its reason saying whether
//!   it is in memory now), and those unloaded through the repository API, `UNAVAILABLE`
//!   (Triton's model repository index, tritonclient's `get_model_repository_index`);
//! - `POST /v2/models/{model}[/versions/{v}]/infer`: JSON tensors, or the binary tensor data
//!   extension (`Inference-Header-Content-Length`), decoded within bounds (`decode`) and
//!   answered (`encode`) against the node's memory budget, through the model's scheduler like
//!   a guest's call: batching, queue limits, fair shares, priorities, deadlines, cache and
//!   metrics apply.
//!
//! Health endpoints live in the router, since they answer for the whole node.

pub mod decode;
pub mod encode;

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use serde_json::{Map, Value, json};
use tokio::sync::Semaphore;

use self::decode::DecodeError;
pub use self::decode::HEADER_LENGTH;
use crate::http::protocol::models::{self, PublishedConfig, PublishedTensor, describe_model, no_model};
use crate::http::protocol::{self, Failure, FailureKind};
use crate::http::response::{self, Body, hold};
use crate::inference::served::ServedModel;
use crate::node::Node;
use crate::node::config::OIP_PREFIX;
use crate::node::models::Models;
use crate::request::RequestContext;
use crate::request::memory::Charge;
use crate::telemetry::metrics;
/// Bodies larger than this are decoded off the async workers.
const OFFLOAD_BYTES: usize = 64 << 10;
/// Large bodies decoding at once: one per core.
static DECODING: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |cores| cores.get())));

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

/// The model repository index: every loaded model, version 1, ready; and every model
/// unloaded through the repository API, unavailable until loaded again.
pub fn repository_index(node: &Node, models: &Models, method: &Method) -> Response<Body> {
    if method != Method::POST {
        return response::failure(Failure::new(
            FailureKind::MethodNotAllowed,
            "the repository index takes POST",
        ));
    }
    let entries = models::repository_index(node, models).into_iter().map(
        |entry| json!({ "name": entry.name, "version": "1", "state": entry.state, "reason": entry.reason }),
    );
    response::json(StatusCode::OK, &Value::Array(entries.collect()))
}

/// Model metadata, or 404.
pub fn model_metadata(models: &Models, name: &str) -> Response<Body> {
    match models.get(name) {
        Some(model) => response::json(StatusCode::OK, &describe_model(model)),
        None => response::failure(no_model(name)),
    }
}

/// A model's configuration as Triton publishes it, or 404.
pub fn model_config(models: &Models, name: &str) -> Response<Body> {
    let Some(model) = models.get(name) else { return response::failure(no_model(name)) };
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
        None => response::failure(no_model(name)),
    }
}

/// Runs an infer request on `model`: `body` is the whole request body, already charged to
/// `charge`. It is decoded within bounds (off the async workers when large: see `decode`),
/// computed before the request's deadline, and answered (`encode`); what it held stays
/// charged until the answer has been handed to the connection.
pub async fn infer(
    model: &ServedModel,
    header_length: Option<HeaderValue>,
    body: Bytes,
    context: &RequestContext,
    mut charge: Charge,
) -> Response<Body> {
    let signature = model.signature().clone();
    let decoded = if body.len() > OFFLOAD_BYTES {
        // Many large bodies at once must not hold the async workers: they decode on blocking
        // threads, as many at a time as there are cores.
        let _decoding = DECODING.acquire().await.expect("the semaphore is never closed");
        let handed_body = body.clone();
        let handed = tokio::task::spawn_blocking(move || {
            let decoded = decode::decode(&handed_body, header_length.as_ref(), &signature, &mut charge);
            (decoded, charge)
        });
        match handed.await {
            Ok((decoded, returned)) => {
                charge = returned;
                decoded
            }
            Err(_) => {
                return response::failure(Failure::new(FailureKind::Internal, "decoding the request failed"));
            }
        }
    } else {
        decode::decode(&body, header_length.as_ref(), &signature, &mut charge)
    };
    let mut request = match decoded {
        Ok(request) => request,
        Err(error) => {
            if matches!(error, DecodeError::Memory(_)) {
                metrics::memory_refused("rest");
            }
            return response::failure(error.into());
        }
    };
    let inputs = std::mem::take(&mut request.inputs);
    let outputs = match protocol::compute(model, inputs, context).await {
        Ok(outputs) => outputs,
        Err(failure) => return response::failure(failure),
    };
    // The body and the inputs are gone once computed; the answer takes their place.
    drop(body);
    match encode::answer(model.name(), &request, outputs, &mut charge) {
        Ok(answer) => hold(answer, charge),
        Err(exhausted) => {
            metrics::memory_refused("rest");
            response::failure(exhausted.into())
        }
    }
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
}
