//! Per-model scheduling: a bounded queue in front of a pool of executor threads.
//!
//! Inference never runs on tokio's threads. [`ModelScheduler::compute`] checks the request's
//! tensors against the model's signature, puts the job on the model's queue and awaits the
//! answer; dedicated executor threads (by default one per core), each with its own backend
//! session over the one shared model, take jobs from the queue and run them. A job whose
//! caller has gone away (client disconnected, deadline passed) is skipped, not run.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread;

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::backend::{Backend, Session};
use crate::tensor::{NamedTensor, Signature, Tensor};

/// Why a computation did not produce outputs.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// The tensors do not fit the model's signature.
    #[error("{0}")]
    InvalidInput(String),
    /// The model's queue is full.
    #[error("model {0:?} is overloaded: its queue is full")]
    Overloaded(String),
    /// The backend failed while running the model.
    #[error("{0}")]
    Failed(String),
}

/// One request's work for an executor.
struct Job {
    inputs: Vec<Tensor>,
    reply: oneshot::Sender<Result<Vec<Tensor>, String>>,
}

/// A model's queue and executors. Dropping it closes the queue; the executors finish the
/// jobs already queued and exit.
pub struct ModelScheduler {
    name: String,
    signature: Signature,
    queue: Sender<Job>,
}

/// How many executors a model gets and how many jobs may wait for them.
#[derive(Clone, Copy, Debug)]
pub struct SchedulerLimits {
    pub executors: usize,
    pub queue_capacity: usize,
}

impl ModelScheduler {
    /// Starts `limits.executors` executor threads for `backend`. Every executor's session is
    /// made before this returns, so a model that cannot run fails here, at start-up.
    pub fn start(
        name: &str,
        backend: Arc<dyn Backend>,
        limits: SchedulerLimits,
    ) -> anyhow::Result<ModelScheduler> {
        let (queue, jobs) = crossbeam_channel::bounded(limits.queue_capacity);
        for index in 0..limits.executors.max(1) {
            let session = backend
                .new_session()
                .with_context(|| format!("starting executor {index} of model {name:?}"))?;
            let executor = Executor {
                model: name.to_string(),
                backend: backend.clone(),
                session,
                jobs: jobs.clone(),
            };
            thread::Builder::new()
                .name(format!("exec-{name}-{index}"))
                .spawn(move || executor.run())
                .context("spawning an executor thread")?;
        }
        Ok(ModelScheduler {
            name: name.to_string(),
            signature: backend.signature().clone(),
            queue,
        })
    }

    /// The model's name, as routes and guests refer to it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's inputs and outputs.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Runs the model on `inputs` and returns its named outputs.
    pub async fn compute(
        &self,
        inputs: Vec<NamedTensor>,
    ) -> Result<Vec<NamedTensor>, ComputeError> {
        let inputs = self
            .signature
            .check_inputs(inputs)
            .map_err(ComputeError::InvalidInput)?;
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(Job { inputs, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(ComputeError::Overloaded(self.name.clone())),
            Err(TrySendError::Disconnected(_)) => {
                return Err(ComputeError::Failed(format!(
                    "model {:?} has no executors",
                    self.name
                )));
            }
        }
        let outputs = answer
            .await
            .map_err(|_| ComputeError::Failed(format!("model {:?} dropped the job", self.name)))?
            .map_err(ComputeError::Failed)?;
        Ok(self
            .signature
            .outputs
            .iter()
            .map(|spec| spec.name.clone())
            .zip(outputs)
            .collect())
    }
}

/// One executor thread: a session of its own, jobs from the model's shared queue.
struct Executor {
    model: String,
    backend: Arc<dyn Backend>,
    session: Box<dyn Session>,
    jobs: Receiver<Job>,
}

impl Executor {
    fn run(mut self) {
        while let Ok(job) = self.jobs.recv() {
            if job.reply.is_closed() {
                continue; // the caller is gone: don't spend compute on it
            }
            let outcome = match catch_unwind(AssertUnwindSafe(|| self.session.run(job.inputs))) {
                Ok(Ok(outputs)) => Ok(outputs),
                Ok(Err(e)) => Err(format!("model {:?} failed: {e:#}", self.model)),
                Err(_) => {
                    error!(model = %self.model, "the backend panicked; renewing the executor's session");
                    self.renew_session();
                    Err(format!(
                        "model {:?} failed: the backend panicked",
                        self.model
                    ))
                }
            };
            let _ = job.reply.send(outcome);
        }
    }

    fn renew_session(&mut self) {
        match self.backend.new_session() {
            Ok(session) => self.session = session,
            Err(e) => warn!(model = %self.model, "cannot renew the session: {e:#}"),
        }
    }
}
