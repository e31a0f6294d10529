//! The node's models as the protocol describes them, alike over REST, gRPC and on the front
//! page: their metadata (name, platform, inputs and outputs), their configuration as Triton
//! publishes it, the model repository's index, and the failure for a model the node does not
//! serve.

use serde_json::{Value, json};

use crate::http::protocol::{Failure, FailureKind};
use crate::inference::residency::State;
use crate::inference::served::ServedModel;
use crate::inference::tensor::{ElementType, TensorSpec};
use crate::node::Node;
use crate::node::models::Models;

/// The failure for a model the node does not serve.
pub fn no_model(name: &str) -> Failure {
    Failure::new(FailureKind::NotFound, format!("no model named {name:?}"))
}

/// One model in the repository's index: every model the node serves is `READY`, its reason
/// empty when it is in memory (as Triton gives it) and else saying so (`loading`, or `not
/// loaded: loads on first use`); one unloaded through the repository API is `UNAVAILABLE`
/// (`unloaded`) until loaded again.
pub struct IndexEntry {
    pub name: String,
    pub state: &'static str,
    pub reason: &'static str,
}

/// The model repository's index: the models loaded, then those unloaded (each has version 1).
pub fn repository_index(node: &Node, models: &Models) -> Vec<IndexEntry> {
    let loaded = models.all().into_iter().map(|model| IndexEntry {
        name: model.name().to_string(),
        state: "READY",
        reason: match model.residency() {
            State::Loaded => "",
            _ => residency(model),
        },
    });
    let unloaded = node.control().unloaded_models().into_iter().map(|name| IndexEntry {
        name,
        state: "UNAVAILABLE",
        reason: "unloaded",
    });
    loaded.chain(unloaded).collect()
}

/// Whether a served model is in memory now, in words.
pub fn residency(model: &ServedModel) -> &'static str {
    match model.residency() {
        State::Loaded => "loaded",
        State::Loading => "loading",
        State::NotLoaded => "not loaded: loads on first use",
    }
}

/// An input's or an output's metadata: its name, element type and shape (`-1` for a
/// dimension of any size).
pub fn tensor_metadata(specs: &[TensorSpec]) -> Vec<PublishedTensor> {
    specs
        .iter()
        .map(|spec| PublishedTensor {
            name: spec.name.clone(),
            element_type: spec.element_type,
            dims: spec.shape_for_display(),
        })
        .collect()
}

/// A model's metadata as the protocol gives it: name, versions, platform, inputs, outputs.
pub fn describe_model(model: &ServedModel) -> Value {
    let describe = |specs: &[TensorSpec]| -> Vec<Value> {
        tensor_metadata(specs)
            .into_iter()
            .map(|tensor| {
                json!({
                    "name": tensor.name,
                    "datatype": tensor.element_type.to_string(),
                    "shape": tensor.dims,
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

/// One input or output: in a model's metadata, or in a [`PublishedConfig`] (where `dims`
/// leave out a batch axis).
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
        let describe = |specs: &[TensorSpec]| -> Vec<PublishedTensor> {
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
