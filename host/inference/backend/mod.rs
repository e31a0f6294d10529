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

use crate::inference::calibration;
use crate::inference::tensor::{ElementType, Signature, Tensor};

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
                let tract = tract(&bytes)?;
                match ort_cpu(bytes) {
                    Ok(ort) => Ok(faster_on_the_cpu(name, tract, ort)),
                    Err(_) => {
                        info!(model = %name, "backend auto: using tract on the CPU (no usable GPU: {reason:#})");
                        Ok(tract)
                    }
                }
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

/// Outputs of two engines differing by more than this share of the largest output value mean
/// they do not compute the same thing.
const AGREEMENT: f64 = 1e-3;

/// Of tract and ONNX Runtime on the CPU, the one that runs a request alone faster, measured
/// now on synthesized inputs; tract if they disagree on the outputs or one cannot be
/// measured. Logs both times and the choice.
fn faster_on_the_cpu(name: &str, tract: Box<dyn Backend>, ort: Box<dyn Backend>) -> Box<dyn Backend> {
    let measured =
        calibration::alone(tract.as_ref()).and_then(|t| Ok((t, calibration::alone(ort.as_ref())?)));
    let ((tract_s, tract_out), (ort_s, ort_out)) = match measured {
        Ok(measured) => measured,
        Err(reason) => {
            info!(model = %name, "backend auto: using tract on the CPU (no GPU; the engines could not be compared: {reason})");
            return tract;
        }
    };
    let difference = largest_difference(&tract_out, &ort_out);
    let (tract_ms, ort_ms) = (tract_s * 1e3, ort_s * 1e3);
    if difference > AGREEMENT {
        warn!(model = %name, difference, "backend auto: using tract on the CPU: ONNX Runtime's outputs differ from tract's");
        return tract;
    }
    let chosen = if ort_s < tract_s { ort } else { tract };
    info!(
        model = %name,
        tract_ms,
        ort_ms,
        "backend auto: using {} on the CPU (no GPU; the faster for one request alone)",
        chosen.name()
    );
    chosen
}

/// The largest difference between two sets of float outputs, as a share of the largest value
/// (0 where there are no float outputs to compare).
fn largest_difference(a: &[Tensor], b: &[Tensor]) -> f64 {
    let floats = |t: &Tensor| -> Vec<f64> {
        if t.element_type != ElementType::F32 {
            return Vec::new();
        }
        t.data.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()
    };
    let mut largest_value = f64::MIN_POSITIVE;
    let mut largest_difference: f64 = 0.0;
    for (x, y) in a.iter().zip(b) {
        if x.shape != y.shape {
            return f64::INFINITY;
        }
        for (p, q) in floats(x).into_iter().zip(floats(y)) {
            largest_value = largest_value.max(p.abs());
            largest_difference = largest_difference.max((p - q).abs());
        }
    }
    largest_difference / largest_value
}

/// Loads an ONNX model a guest passed as bytes: on the GPU if it asked for one and one is
/// usable, else with tract.
pub fn load_bytes(bytes: &[u8], want_gpu: bool) -> anyhow::Result<Box<dyn Backend>> {
    if want_gpu && let Ok(backend) = gpu(bytes.to_vec()) {
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
