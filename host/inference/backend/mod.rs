//! Model backends: what runs a loaded model on some hardware, and how one is chosen.
//!
//! A [`Backend`] is one model, loaded and optimized once, shared by every executor. Each
//! executor thread asks it for a [`Session`], its own mutable run state, so executors run in
//! parallel without a lock around the model. Tensors cross this boundary as
//! [`crate::inference::tensor::Tensor`], so nothing above this module knows which backend runs a model.
//!
//! Backends: tract (pure Rust, on the CPU, always there: the embedded default) and, with the
//! `ort` feature, ONNX Runtime loaded dynamically, on the CPU or (feature `gpu`) on a CUDA
//! device. [`load`] picks one from the model's `backend` setting and logs which and why.

#[cfg(feature = "ort")]
pub mod ort;
pub mod tract;

use std::path::Path;

use anyhow::Context;
use tracing::{info, warn};

use crate::inference::tensor::{Signature, Tensor};

/// A loaded model, shared by all executors of that model.
pub trait Backend: Send + Sync {
    /// The model's inputs and outputs, as the model file declares them.
    fn signature(&self) -> &Signature;

    /// Makes the run state for one executor.
    fn new_session(&self) -> anyhow::Result<Box<dyn Session>>;

    /// Which backend this is, as metrics and logs name it.
    fn name(&self) -> &'static str;

    /// Whether the model runs on a GPU (which favours one executor and large batches).
    fn on_gpu(&self) -> bool {
        false
    }
}

/// One executor's run state for a model.
pub trait Session: Send {
    /// Runs the model. `inputs` are in the signature's input order and already checked
    /// against it; the outputs come back in the signature's output order.
    fn run(&mut self, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>>;
}

/// Which backend a model asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// A GPU if a usable one is found at start-up, else tract.
    #[default]
    Auto,
    /// The CPU: tract.
    Cpu,
    /// A GPU (ONNX Runtime with CUDA); none usable is a start-up error.
    Gpu,
    /// tract, explicitly.
    Tract,
    /// ONNX Runtime on the CPU; if it cannot be loaded, tract.
    Ort,
}

/// Loads the ONNX model at `path` with the backend `kind` asks for.
pub fn load_file(name: &str, kind: BackendKind, path: &Path) -> anyhow::Result<Box<dyn Backend>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    load(name, kind, bytes)
}

/// Loads the ONNX model in `bytes` with the backend `kind` asks for.
pub fn load(name: &str, kind: BackendKind, bytes: Vec<u8>) -> anyhow::Result<Box<dyn Backend>> {
    let tract = |bytes: &[u8]| -> anyhow::Result<Box<dyn Backend>> {
        Ok(Box::new(tract::TractModel::load_bytes(bytes)?))
    };
    match kind {
        BackendKind::Cpu | BackendKind::Tract => tract(&bytes),
        BackendKind::Gpu => gpu(bytes)
            .map_err(|reason| anyhow::anyhow!("backend = \"gpu\", but no GPU is usable: {reason:#}")),
        BackendKind::Auto => match gpu(bytes.clone()) {
            Ok(backend) => {
                info!(model = %name, "backend auto: using the GPU");
                Ok(backend)
            }
            Err(reason) => {
                info!(model = %name, "backend auto: using tract on the CPU (no usable GPU: {reason:#})");
                tract(&bytes)
            }
        },
        BackendKind::Ort => match ort_cpu(bytes.clone()) {
            Ok(backend) => Ok(backend),
            Err(reason) => {
                warn!(model = %name, "backend ort: falling back to tract ({reason:#})");
                tract(&bytes)
            }
        },
    }
}

/// Loads an ONNX model a guest passed as bytes: on the GPU if it asked for one and one is
/// usable, else with tract.
pub fn load_bytes(bytes: &[u8], want_gpu: bool) -> anyhow::Result<Box<dyn Backend>> {
    if want_gpu && let Ok(backend) = gpu(bytes.to_vec()) {
        return Ok(backend);
    }
    Ok(Box::new(tract::TractModel::load_bytes(bytes)?))
}

#[cfg(feature = "ort")]
fn gpu(bytes: Vec<u8>) -> anyhow::Result<Box<dyn Backend>> {
    Ok(Box::new(ort::OrtModel::load(bytes, ort::Device::Cuda(0))?))
}

#[cfg(not(feature = "ort"))]
fn gpu(_: Vec<u8>) -> anyhow::Result<Box<dyn Backend>> {
    anyhow::bail!("edge-infer was built without the `gpu` feature")
}

#[cfg(feature = "ort")]
fn ort_cpu(bytes: Vec<u8>) -> anyhow::Result<Box<dyn Backend>> {
    Ok(Box::new(ort::OrtModel::load(bytes, ort::Device::Cpu)?))
}

#[cfg(not(feature = "ort"))]
fn ort_cpu(_: Vec<u8>) -> anyhow::Result<Box<dyn Backend>> {
    anyhow::bail!("edge-infer was built without the `ort` feature")
}
