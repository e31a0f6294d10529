//! The tract backend: ONNX models on the CPU, pure Rust, always available.
//!
//! A model is parsed, typed and optimized once; the optimized plan is shared, and each
//! executor runs it through its own `SimpleState`. Symbolic dimensions in the ONNX file (such
//! as a `batch` axis) stay symbolic, so one plan serves every batch size and length; the
//! batch and sequence axes of each tensor are found from the symbols they share.
//!
//! Large matrix products are split across the cores by one pool that every executor shares
//! (tract's own gate keeps small ones whole): an executor alone, as at one client, uses the
//! cores the others leave idle; when all are busy, the pool's threads are all there is, so
//! the cores are not oversubscribed.

use std::sync::Arc;

use anyhow::{Context, bail};
use tract_onnx::prelude::*;

use super::{Backend, Session};
use crate::inference::tensor::{
    Axes, DeclaredDim, Dim, ElementType, Signature, Tensor, TensorSpec, find_axes,
};

/// An optimized tract plan and the signature it was made from.
pub struct TractModel {
    plan: Arc<TypedSimplePlan>,
    signature: Signature,
}

impl TractModel {
    /// Loads and optimizes an ONNX model from bytes.
    pub fn load_bytes(mut bytes: &[u8]) -> anyhow::Result<TractModel> {
        let model = tract_onnx::onnx().model_for_read(&mut bytes)?;
        Self::optimize(model)
    }

    fn optimize(model: InferenceModel) -> anyhow::Result<TractModel> {
        share_cores();
        let typed = model.into_typed().context("typing the model")?;
        let signature = signature_of(&typed)?;
        let plan = typed
            .into_optimized()
            .context("optimizing the model")?
            .into_runnable()
            .context("planning the model")?;
        Ok(TractModel { plan, signature })
    }
}

impl Backend for TractModel {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn name(&self) -> &'static str {
        "tract"
    }

    fn new_session(&self) -> anyhow::Result<Box<dyn Session>> {
        Ok(Box::new(TractSession { state: TypedSimpleState::new(&self.plan)? }))
    }
}

/// One executor's tract run state.
struct TractSession {
    state: TypedSimpleState,
}

impl Session for TractSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>> {
        let inputs = inputs.iter().map(to_tract).collect::<anyhow::Result<TVec<TValue>>>()?;
        let outputs = self.state.run(inputs)?;
        outputs.iter().map(from_tract).collect()
    }
}

fn signature_of(model: &TypedModel) -> anyhow::Result<Signature> {
    let inputs = model.input_outlets()?.to_vec();
    let outputs = model.output_outlets()?.to_vec();
    // Each dimension's symbol, for finding the batch and sequence axes (tract keeps the
    // ONNX file's symbolic dimensions, e.g. `batch_size`, through typing).
    let symbols = |outlets: &[OutletId]| -> anyhow::Result<Vec<Vec<DeclaredDim<TDim>>>> {
        outlets
            .iter()
            .map(|&outlet| {
                let fact = model.outlet_fact(outlet)?;
                Ok(fact
                    .shape
                    .iter()
                    .map(|dim| match dim {
                        _ if dim.as_i64().is_some() => DeclaredDim::Fixed,
                        TDim::Sym(_) => DeclaredDim::Named(dim.clone()),
                        _ => DeclaredDim::Unnamed,
                    })
                    .collect())
            })
            .collect()
    };
    let (input_axes, output_axes) = find_axes(&symbols(&inputs)?, &symbols(&outputs)?);
    let spec = |outlet: OutletId, name: String, axes: Axes| -> anyhow::Result<TensorSpec> {
        let fact = model.outlet_fact(outlet)?;
        let element_type = element_type(fact.datum_type).with_context(|| format!("tensor {name:?}"))?;
        let shape = fact
            .shape
            .iter()
            .map(|dim| match dim.as_i64() {
                Some(size) => Dim::Fixed(size as usize),
                None => Dim::Any,
            })
            .collect();
        Ok(TensorSpec { name, element_type, shape, batch_axis: axes.batch, sequence_axis: axes.sequence })
    };
    let inputs = inputs
        .iter()
        .zip(input_axes)
        .map(|(&outlet, axes)| spec(outlet, model.node(outlet.node).name.clone(), axes))
        .collect::<anyhow::Result<_>>()?;
    let outputs = outputs
        .iter()
        .zip(output_axes)
        .map(|(&outlet, axes)| {
            let name = model
                .outlet_label(outlet)
                .map(str::to_owned)
                .unwrap_or_else(|| model.node(outlet.node).name.clone());
            spec(outlet, name, axes)
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Signature { inputs, outputs })
}

fn element_type(datum_type: DatumType) -> anyhow::Result<ElementType> {
    Ok(match datum_type {
        DatumType::F16 => ElementType::F16,
        DatumType::F32 => ElementType::F32,
        DatumType::F64 => ElementType::F64,
        DatumType::U8 => ElementType::U8,
        DatumType::I32 => ElementType::I32,
        DatumType::I64 => ElementType::I64,
        other => bail!("element type {other:?} cannot cross wasi:nn"),
    })
}

fn datum_type(element_type: ElementType) -> anyhow::Result<DatumType> {
    Ok(match element_type {
        ElementType::F16 => DatumType::F16,
        ElementType::F32 => DatumType::F32,
        ElementType::F64 => DatumType::F64,
        ElementType::U8 => DatumType::U8,
        ElementType::I32 => DatumType::I32,
        ElementType::I64 => DatumType::I64,
        ElementType::Bf16 => bail!("tract has no BF16 tensors"),
    })
}

fn to_tract(tensor: &Tensor) -> anyhow::Result<TValue> {
    let datum_type = datum_type(tensor.element_type)?;
    // SAFETY: every element type reachable here is plain old data, for which any bit
    // pattern is a valid value, and `from_raw_dt` checks the byte length against the shape.
    let value = unsafe { tract_onnx::prelude::Tensor::from_raw_dt(datum_type, &tensor.shape, &tensor.data)? };
    Ok(value.into_tvalue())
}

fn from_tract(value: &TValue) -> anyhow::Result<Tensor> {
    let element_type = element_type(value.datum_type())?;
    Tensor::new(element_type, value.shape().to_vec(), value.as_bytes().to_vec()).map_err(anyhow::Error::msg)
}

/// Matrix products of at least this many panels are split across the pool. tract's default,
/// 64, keeps a short text's products in MiniLM (12 tokens: 1 client, `/embed`) on one core;
/// at 8 they are split too: 84 to 94 requests per second at one client instead of 75 to 76,
/// and no fewer at 16 (benches/RESULTS.md), while the small models' products stay whole.
const THREADING_PANEL_THRESHOLD: usize = 8;

/// Gives tract one pool of a thread per core for its matrix products, once per process.
fn share_cores() {
    static POOL: std::sync::Once = std::sync::Once::new();
    POOL.call_once(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores > 1 {
            let pool = tract_linalg::multithread::Executor::multithread_with_name(cores, "tract");
            tract_linalg::multithread::set_default_executor(pool);
            tract_linalg::multithread::set_threading_panel_threshold(THREADING_PANEL_THRESHOLD);
        }
    });
}
