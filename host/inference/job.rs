//! One request's work for a model's executors, as it waits in the queue and runs in a batch,
//! and how it ends: its outputs, or why it has none.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::inference::tensor::Tensor;
use crate::request::RequestContext;
use crate::telemetry::metrics::{ModelMetrics, ModelOutcome};

/// How a queued job ended, as its caller hears it.
pub(super) type JobResult = Result<Ran, JobError>;

/// A job's outputs, with when its run started and how long it took.
pub(super) struct Ran {
    pub(super) outputs: Vec<Tensor>,
    pub(super) started: Instant,
    pub(super) took: Duration,
}

/// Why a job gave no outputs.
pub(super) enum JobError {
    Expired,
    /// Pushed out of a full queue by a tenant under its share.
    Displaced,
    /// The model is not loaded, and no room could be made for it.
    NoRoom(String),
    Failed(RunFailure),
}

/// Why a run of a model gave no outputs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunFailure {
    /// The backend returned an error (its whole chain, as text: one failed run may answer
    /// several requests).
    #[error("{0}")]
    Backend(String),
    /// The backend panicked; the executor renewed its session.
    #[error("the backend panicked")]
    Panicked,
    /// The executors stopped before the request ran.
    #[error("its executors stopped before the request ran")]
    Stopped,
}

/// One request's work for an executor.
pub(super) struct Job {
    pub(super) inputs: Vec<Tensor>,
    pub(super) items: usize,
    /// Length along the sequence axis (1 for models without one).
    pub(super) length: usize,
    pub(super) context: RequestContext,
    pub(super) enqueued: Instant,
    pub(super) reply: oneshot::Sender<JobResult>,
}

impl Job {
    /// If the job's caller is gone, counts it cancelled; if its deadline has passed, answers
    /// it `Expired`. Returns whether it is dead (and must not run).
    pub(super) fn settle_if_dead(&mut self, now: Instant, metrics: &ModelMetrics) -> bool {
        if self.reply.is_closed() {
            metrics.outcome(ModelOutcome::Cancelled);
            true
        } else if self.context.deadline <= now {
            metrics.outcome(ModelOutcome::Expired);
            // The job is only lent here: swap the reply out to answer it.
            let (placeholder, _) = oneshot::channel();
            let _ = std::mem::replace(&mut self.reply, placeholder).send(Err(JobError::Expired));
            true
        } else {
            false
        }
    }
}
