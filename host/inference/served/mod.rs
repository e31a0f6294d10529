//! What callers (guests through `wasi:nn`, the Open Inference Protocol over REST and gRPC)
//! compute through: one model behind its scheduler, or a pipeline of them (an ensemble, or a
//! model split into stages: `pipeline`). Both take and give named tensors the same way.

pub mod pipeline;

use std::sync::Arc;

use self::pipeline::{Pipeline, PipelineKind};
use crate::inference::residency::State;
use crate::inference::scheduler::{ComputeError, ModelScheduler};
use crate::inference::tensor::{NamedTensor, Signature};
use crate::request::RequestContext;

/// A model as its callers see it. Cloning shares it.
#[derive(Clone)]
pub enum ServedModel {
    /// One model, computed by its own executors.
    Single(Arc<ModelScheduler>),
    /// Several models computed in steps, each through its own scheduler.
    Pipeline(Arc<Pipeline>),
}

impl ServedModel {
    /// The name callers ask for.
    pub fn name(&self) -> &str {
        match self {
            ServedModel::Single(model) => model.name(),
            ServedModel::Pipeline(pipeline) => pipeline.name(),
        }
    }

    /// The tensors it takes and gives.
    pub fn signature(&self) -> &Signature {
        match self {
            ServedModel::Single(model) => model.signature(),
            ServedModel::Pipeline(pipeline) => pipeline.signature(),
        }
    }

    /// Computes the outputs of `inputs` (see [`ModelScheduler::compute`] and
    /// [`Pipeline::compute`]).
    pub async fn compute(
        &self,
        inputs: Vec<NamedTensor>,
        context: &RequestContext,
    ) -> Result<Vec<NamedTensor>, ComputeError> {
        match self {
            ServedModel::Single(model) => model.compute(inputs, context).await,
            // Boxed: a pipeline's steps are served models in turn.
            ServedModel::Pipeline(pipeline) => Box::pin(pipeline.compute(inputs, context)).await,
        }
    }

    /// Whether both are the same loaded model (not merely equal settings).
    pub fn is(&self, other: &ServedModel) -> bool {
        match (self, other) {
            (ServedModel::Single(a), ServedModel::Single(b)) => Arc::ptr_eq(a, b),
            (ServedModel::Pipeline(a), ServedModel::Pipeline(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The pipeline, if it is a declared ensemble (a split model is published as one model).
    pub fn ensemble(&self) -> Option<&Pipeline> {
        match self {
            ServedModel::Pipeline(pipeline) if pipeline.kind() == PipelineKind::Ensemble => Some(pipeline),
            _ => None,
        }
    }

    /// Which backends run it: for a pipeline, each step's, joined by `+`.
    pub fn backend(&self) -> String {
        self.schedulers().iter().map(|model| model.backend()).collect::<Vec<_>>().join("+")
    }

    /// Whether its engines are loaded: all of them, some loading, or not all.
    pub fn residency(&self) -> State {
        let states: Vec<State> = self.schedulers().iter().map(|model| model.residency()).collect();
        if states.iter().all(|state| *state == State::Loaded) {
            State::Loaded
        } else if states.contains(&State::Loading) {
            State::Loading
        } else {
            State::NotLoaded
        }
    }

    /// The memory its loaded engines hold.
    pub fn resident_bytes(&self) -> u64 {
        self.schedulers().iter().map(|model| model.resident_bytes()).sum()
    }

    /// Whether it is never evicted.
    pub fn pinned(&self) -> bool {
        self.schedulers().iter().all(|model| model.pinned())
    }

    /// Every scheduler it computes through, in step order.
    pub fn schedulers(&self) -> Vec<&ModelScheduler> {
        match self {
            ServedModel::Single(model) => vec![model.as_ref()],
            ServedModel::Pipeline(pipeline) => {
                pipeline.steps().iter().flat_map(|step| step.model.schedulers()).collect()
            }
        }
    }
}
