//! Model backends: the engines that run a loaded model on some hardware.
//!
//! A [`Backend`] is one model, loaded and optimized once, shared by every executor. Each
//! executor thread asks it for a [`Session`], its own mutable run state, so executors run in
//! parallel without a lock around the model. Tensors cross this boundary as
//! [`crate::inference::tensor::Tensor`], so nothing above this module knows which backend runs a model.
//!
//! Backends: tract (pure Rust, on the CPU, always there: the embedded default) and, with the
//! `ort` feature, ONNX Runtime loaded dynamically, on the CPU or (feature `gpu`) on a CUDA
//! device. Which one runs a model is chosen above this module, by `inference::choice`.

#[cfg(feature = "ort")]
pub mod ort;
pub mod tract;

use std::path::Path;

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

/// A model shared with its other users is a model too.
impl Backend for std::sync::Arc<dyn Backend> {
    fn signature(&self) -> &Signature {
        self.as_ref().signature()
    }

    fn new_session(&self) -> anyhow::Result<Box<dyn Session>> {
        self.as_ref().new_session()
    }

    fn name(&self) -> &'static str {
        self.as_ref().name()
    }

    fn on_gpu(&self) -> bool {
        self.as_ref().on_gpu()
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
    /// A GPU if a usable one is found at start-up, else the CPU engine that runs the model
    /// fastest, measured at start-up.
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

/// An engine that runs models on the CPU: its name, as logs give it, and how it loads an
/// ONNX model.
pub struct CpuEngine {
    pub name: &'static str,
    pub load: fn(Vec<u8>) -> anyhow::Result<Box<dyn Backend>>,
}

/// The engines that run models on the CPU, the preferred first (where they are equally fast,
/// or cannot be compared).
pub const CPU_ENGINES: [CpuEngine; 2] =
    [CpuEngine { name: "tract", load: load_tract }, CpuEngine { name: "ort", load: load_ort_cpu }];

/// Loads an ONNX model a guest passed as bytes: on the GPU if it asked for one and one is
/// usable, else with tract.
pub fn load_bytes(bytes: &[u8], want_gpu: bool) -> anyhow::Result<Box<dyn Backend>> {
    if want_gpu && let Ok(backend) = load_gpu(bytes.to_vec()) {
        return Ok(backend);
    }
    Ok(Box::new(tract::TractModel::load_bytes(bytes)?))
}

/// Where ONNX Runtime is to be loaded from when `ORT_DYLIB_PATH` is not set (the config's
/// `server.onnxruntime_library`); to be called before the first model loads.
pub fn use_onnxruntime_library(library: &Path) {
    #[cfg(feature = "ort")]
    ort::use_library(library);
    #[cfg(not(feature = "ort"))]
    let _ = library;
}

/// The ONNX Runtime library the node loads; `None` without the `ort` feature.
pub fn onnxruntime_library() -> Option<std::path::PathBuf> {
    #[cfg(feature = "ort")]
    return Some(ort::library());
    #[cfg(not(feature = "ort"))]
    None
}

/// Loads an ONNX model with tract.
pub fn load_tract(bytes: Vec<u8>) -> anyhow::Result<Box<dyn Backend>> {
    Ok(Box::new(tract::TractModel::load_bytes(&bytes)?))
}

/// Loads an ONNX model with ONNX Runtime on the first CUDA device; the error says why no GPU
/// is usable.
#[cfg(feature = "ort")]
pub fn load_gpu(bytes: Vec<u8>) -> anyhow::Result<Box<dyn Backend>> {
    Ok(Box::new(ort::OrtModel::load(bytes, ort::Device::Cuda(0))?))
}

/// Without the `ort` feature, no GPU is ever usable.
#[cfg(not(feature = "ort"))]
pub fn load_gpu(_: Vec<u8>) -> anyhow::Result<Box<dyn Backend>> {
    anyhow::bail!("edge-infer was built without the `gpu` feature")
}

/// Loads an ONNX model with ONNX Runtime on the CPU; the error says why it cannot.
#[cfg(feature = "ort")]
pub fn load_ort_cpu(bytes: Vec<u8>) -> anyhow::Result<Box<dyn Backend>> {
    Ok(Box::new(ort::OrtModel::load(bytes, ort::Device::Cpu)?))
}

/// Without the `ort` feature, ONNX Runtime cannot load any model.
#[cfg(not(feature = "ort"))]
pub fn load_ort_cpu(_: Vec<u8>) -> anyhow::Result<Box<dyn Backend>> {
    anyhow::bail!("edge-infer was built without the `ort` feature")
}
