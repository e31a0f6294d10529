//! One decoder model on ONNX Runtime, run one step at a time for a batch of sequences.
//!
//! The model takes `input_ids`, `attention_mask`, `position_ids` (int64) and `past` (the
//! cache, float32 `[layers, 2, batch, kv_heads, past, head_dim]`), and gives `next_token`
//! (int64 `[batch]`, its greedy choice) and `present` (the new tokens' cache entries).
//! `models/smollm2/export.py` writes SmolLM2 so. Values go to and from ONNX Runtime as typed
//! arrays, never through byte tensors: a batch's cache is most of what a step moves.

use anyhow::{Context, bail};
use ort::session::Session as OrtSession;
use ort::value::{Tensor as OrtTensor, ValueType};

use super::kv::{CacheShape, StepInputs};
use crate::inference::backend::ort::{Device, new_session};

/// A decoder, loaded.
pub struct Decoder {
    session: OrtSession,
    shape: CacheShape,
}

/// What one step gives back.
pub struct StepOutputs {
    pub next_tokens: Vec<i64>,
    /// `[layers, 2, batch, kv_heads, new, head_dim]`.
    pub present: Vec<f32>,
}

const INPUTS: [&str; 4] = ["input_ids", "attention_mask", "position_ids", "past"];
const OUTPUTS: [&str; 2] = ["next_token", "present"];

impl Decoder {
    /// Loads a decoder model on the CPU; the error says what in its signature is wrong.
    pub fn load(bytes: &[u8]) -> anyhow::Result<Decoder> {
        let session = new_session(bytes, Device::Cpu)?;
        let names: Vec<&str> = session.inputs().iter().map(|input| input.name()).collect();
        if names != INPUTS {
            bail!("a decoder takes {INPUTS:?}, this model takes {names:?}");
        }
        let outputs: Vec<&str> = session.outputs().iter().map(|output| output.name()).collect();
        if outputs != OUTPUTS {
            bail!("a decoder gives {OUTPUTS:?}, this model gives {outputs:?}");
        }
        let past = &session.inputs()[3];
        let dims = match past.dtype() {
            ValueType::Tensor { shape, .. } => shape.iter().copied().collect::<Vec<i64>>(),
            other => bail!("`past` is a {other:?}, not a tensor"),
        };
        let fixed = |at: usize| usize::try_from(dims[at]).ok().filter(|&d| d > 0);
        let (Some(layers), Some(2), Some(kv_heads), Some(head_dim)) =
            (dims.len().eq(&6).then(|| fixed(0)).flatten(), fixed(1), fixed(3), fixed(5))
        else {
            bail!(
                "`past` must be [layers, 2, batch, kv_heads, past, head_dim] with fixed layers, heads and head_dim, not {dims:?}"
            );
        };
        Ok(Decoder { session, shape: CacheShape { layers, kv_heads, head_dim } })
    }

    /// What one cached token is made of.
    pub fn cache_shape(&self) -> CacheShape {
        self.shape
    }

    /// Runs one step.
    pub fn step(&mut self, step: StepInputs) -> anyhow::Result<StepOutputs> {
        let (batch, new, past) = (step.batch as i64, step.new as i64, step.past as i64);
        let shape = self.shape;
        let past_shape = [shape.layers as i64, 2, batch, shape.kv_heads as i64, past, shape.head_dim as i64];
        let inputs = ort::inputs![
            "input_ids" => OrtTensor::from_array(([batch, new], step.input_ids))?,
            "attention_mask" => OrtTensor::from_array(([batch, past + new], step.attention_mask))?,
            "position_ids" => OrtTensor::from_array(([batch, new], step.position_ids))?,
            "past" => OrtTensor::from_array((past_shape, step.past_values))?,
        ];
        let outputs = self.session.run(inputs)?;
        let (_, next) = outputs["next_token"].try_extract_tensor::<i64>().context("next_token")?;
        let (_, present) = outputs["present"].try_extract_tensor::<f32>().context("present")?;
        Ok(StepOutputs { next_tokens: next.to_vec(), present: present.to_vec() })
    }
}
