//! Model backends: what runs a loaded model on some hardware.
//!
//! A [`Backend`] is one model, loaded and optimized once, shared by every executor. Each
//! executor thread asks it for a [`Session`], its own mutable run state, so executors run in
//! parallel without a lock around the model. Tensors cross this boundary as
//! [`crate::tensor::Tensor`], so nothing above this module knows which backend runs a model.

pub mod tract;

use std::path::Path;

use crate::tensor::{Signature, Tensor};

/// A loaded model, shared by all executors of that model.
pub trait Backend: Send + Sync {
    /// The model's inputs and outputs, as the model file declares them.
    fn signature(&self) -> &Signature;

    /// Makes the run state for one executor.
    fn new_session(&self) -> anyhow::Result<Box<dyn Session>>;
}

/// One executor's run state for a model.
pub trait Session: Send {
    /// Runs the model. `inputs` are in the signature's input order and already checked
    /// against it; the outputs come back in the signature's output order.
    fn run(&mut self, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>>;
}

/// Which backend runs a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tract, on the CPU: always available.
    #[default]
    Tract,
}

/// Loads the ONNX model at `path` with the chosen backend.
pub fn load_file(kind: BackendKind, path: &Path) -> anyhow::Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Tract => Ok(Box::new(tract::TractModel::load_file(path)?)),
    }
}

/// Loads an ONNX model from bytes with the chosen backend.
pub fn load_bytes(kind: BackendKind, bytes: &[u8]) -> anyhow::Result<Box<dyn Backend>> {
    match kind {
        BackendKind::Tract => Ok(Box::new(tract::TractModel::load_bytes(bytes)?)),
    }
}
