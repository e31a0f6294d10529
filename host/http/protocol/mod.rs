//! The Open Inference Protocol's core, under REST (`oip`, `router`, `admin`, `repository`),
//! gRPC (`grpc`) and the front page (`index`): the failures every protocol answers
//! (`failure`, one kind per way a request fails), the models as the protocol describes them
//! (`models`), the bounds a request's tensors are decoded within, and an inference run to
//! the request's deadline.

pub mod failure;
pub mod models;

use std::time::Duration;

pub use self::failure::{Failure, FailureKind};

use crate::inference::served::ServedModel;
use crate::inference::tensor::NamedTensor;
use crate::request::RequestContext;

/// Deadline of an infer request that names none (no `x-edge-deadline-ms`, no `grpc-timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most inputs, or requested outputs, in one request.
pub const MAX_TENSORS: usize = 64;
/// Most parameters of a request, an input or an output (and entries of repeated data).
pub const MAX_PARAMETERS: usize = 64;
/// Most dimensions of an input's shape.
pub const MAX_DIMENSIONS: usize = 16;

/// Runs `inputs` through `model`'s scheduler, giving up when the request's deadline passes.
pub async fn compute(
    model: &ServedModel,
    inputs: Vec<NamedTensor>,
    context: &RequestContext,
) -> Result<Vec<NamedTensor>, Failure> {
    let deadline = tokio::time::Instant::from_std(context.deadline);
    match tokio::time::timeout_at(deadline, model.compute(inputs, context)).await {
        Ok(computed) => Ok(computed?),
        Err(_) => Err(Failure::new(FailureKind::DeadlineExceeded, "the request's deadline passed")),
    }
}
