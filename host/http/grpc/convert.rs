//! The service's conversions between the protocol's messages and the node's: a request's
//! input tensors (raw or typed contents) and a model's configuration as Triton's
//! `ModelConfig` message.

use std::collections::HashMap;

use bytes::Bytes;
use tonic::Status;

use super::proto::model_infer_request::InferInputTensor;
use super::proto::{
    DataType, InferTensorContents, ModelConfig, ModelDynamicBatching, ModelInput, ModelInstanceGroup,
    ModelOutput, ModelParameter, model_instance_group,
};
use crate::http::protocol::models::{PublishedConfig, PublishedTensor};
use crate::inference::served::ServedModel;
use crate::inference::tensor::{ElementType, NamedTensor, Tensor};

/// The request's inputs: from `raw_input_contents` (one per input, in order) or from each
/// input's typed `contents`.
pub(super) fn input_tensors(
    inputs: Vec<InferInputTensor>,
    raw: Vec<Bytes>,
) -> Result<Vec<NamedTensor>, Status> {
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(Status::invalid_argument(format!(
            "raw_input_contents has {} entries for {} inputs",
            raw.len(),
            inputs.len()
        )));
    }
    let mut raw = raw.into_iter();
    inputs
        .into_iter()
        .map(|input| {
            let bad = |reason: String| Status::invalid_argument(format!("input {:?}: {reason}", input.name));
            let element_type = ElementType::from_name(&input.datatype)
                .ok_or_else(|| bad(format!("datatype {} is not supported", input.datatype)))?;
            let shape = input
                .shape
                .iter()
                .map(|&d| usize::try_from(d).map_err(|_| bad(format!("dimension {d} is negative"))))
                .collect::<Result<Vec<usize>, Status>>()?;
            let data = match (raw.next(), &input.contents) {
                (Some(bytes), None) => bytes,
                (None, Some(contents)) => typed_contents(contents, element_type).map_err(bad)?,
                (Some(_), Some(_)) => return Err(bad("contents given twice (typed and raw)".into())),
                (None, None) => return Err(bad("no contents".into())),
            };
            let tensor = Tensor::new(element_type, shape, data).map_err(|e| bad(e.to_string()))?;
            Ok((input.name, tensor))
        })
        .collect()
}

/// Little-endian bytes of typed contents, from the field the element type uses.
fn typed_contents(contents: &InferTensorContents, element_type: ElementType) -> Result<Bytes, String> {
    let bytes: Vec<u8> = match element_type {
        ElementType::F32 => contents.fp32_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ElementType::F64 => contents.fp64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ElementType::I64 => contents.int64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ElementType::I32 => contents.int_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ElementType::U8 => contents
            .uint_contents
            .iter()
            .map(|&v| u8::try_from(v).map_err(|_| format!("{v} is not a UINT8")))
            .collect::<Result<_, _>>()?,
        ElementType::F16 | ElementType::Bf16 => {
            return Err(format!("send {element_type} data in raw_input_contents"));
        }
    };
    Ok(bytes.into())
}

/// Triton's model configuration message for `model`.
pub(super) fn model_config(model: &ServedModel) -> ModelConfig {
    let published = PublishedConfig::of(model);
    let inputs = published.inputs.iter().map(|t| ModelInput {
        name: t.name.clone(),
        data_type: data_type(t),
        dims: t.dims.clone(),
    });
    let outputs = published.outputs.iter().map(|t| ModelOutput {
        name: t.name.clone(),
        data_type: data_type(t),
        dims: t.dims.clone(),
    });
    let kind =
        if published.on_gpu { model_instance_group::Kind::Gpu } else { model_instance_group::Kind::Cpu };
    ModelConfig {
        name: model.name().to_string(),
        platform: published.platform.into(),
        backend: published.backend.clone(),
        max_batch_size: i32::try_from(published.max_batch_size).unwrap_or(i32::MAX),
        input: inputs.collect(),
        output: outputs.collect(),
        // Ensembles have no instances of their own (Triton's too): their steps' models do.
        instance_group: match model.ensemble() {
            None => vec![ModelInstanceGroup {
                name: model.name().to_string(),
                count: i32::try_from(published.executors).unwrap_or(i32::MAX),
                kind: kind as i32,
            }],
            Some(_) => Vec::new(),
        },
        dynamic_batching: (published.max_batch_size > 0)
            .then_some(ModelDynamicBatching { max_queue_delay_microseconds: published.max_queue_delay_us }),
        parameters: HashMap::from([(
            "max_padding_ratio".to_string(),
            ModelParameter { string_value: published.max_padding_ratio.to_string() },
        )]),
    }
}

/// The protocol's data type of a published tensor.
fn data_type(tensor: &PublishedTensor) -> i32 {
    let data_type = match tensor.element_type {
        ElementType::F16 => DataType::TypeFp16,
        ElementType::F32 => DataType::TypeFp32,
        ElementType::F64 => DataType::TypeFp64,
        ElementType::Bf16 => DataType::TypeBf16,
        ElementType::U8 => DataType::TypeUint8,
        ElementType::I32 => DataType::TypeInt32,
        ElementType::I64 => DataType::TypeInt64,
    };
    data_type as i32
}
