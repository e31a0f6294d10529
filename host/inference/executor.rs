//! Executor threads: each takes batches from its model's queue and runs them on a session
//! of its own, pads and parts them ([`crate::inference::batching::assembly`]), answers every job, and
//! contains failures: a panic renews the session, and a failed batch of several is rerun one
//! job at a time.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use tracing::{error, warn};

use crate::inference::backend::{Backend, Session};
use crate::inference::batching::assembly;
use crate::inference::batching::forming::BatchQueue;
use crate::inference::job::{Job, JobError, Ran, RunFailure};
use crate::inference::tensor::{Signature, Tensor};
use crate::telemetry::metrics::{ModelMetrics, ModelOutcome};

/// What a model's executors and its callers share.
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) signature: Signature,
    pub(super) queue: BatchQueue,
    /// One element's bytes per input, for padding.
    pub(super) pad_values: Vec<Vec<u8>>,
    pub(super) metrics: ModelMetrics,
}

/// One executor thread: a session of its own, batches from the model's shared queue, until
/// the queue closes or the executors of its generation are retired (the model unloaded).
pub(super) struct Executor {
    pub(super) shared: Arc<Shared>,
    pub(super) backend: Arc<dyn Backend>,
    pub(super) session: Box<dyn Session>,
    pub(super) generation: u64,
}

impl Executor {
    pub(super) fn run(mut self) {
        while let Some(batch) = self.shared.queue.next_batch(self.generation) {
            self.execute(batch);
        }
    }

    /// Runs a batch and answers its jobs. If a batch of several fails, each job is run alone,
    /// so that one bad request (say, too long for the model) fails only itself.
    fn execute(&mut self, mut batch: Vec<Job>) {
        let shared = self.shared.clone();
        let metrics = &shared.metrics;
        // Callers may have gone, or deadlines passed, while the batch was forming.
        let now = Instant::now();
        batch.retain_mut(|job| !job.settle_if_dead(now, metrics));
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        for job in &batch {
            metrics.queue_duration.observe((started - job.enqueued).as_secs_f64());
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run_once(&mut batch)));
        let took = started.elapsed();
        shared.queue.note_run(took);
        let total: usize = batch.iter().map(|job| job.items).sum();
        metrics.compute_duration.observe(took.as_secs_f64());
        metrics.executions.inc();
        metrics.inferences.inc_by(total as u64);
        metrics.batch_size.observe(total as f64);
        let failure = match outcome {
            Ok(Ok(per_job)) => {
                for (job, outputs) in batch.into_iter().zip(per_job) {
                    metrics.outcome(ModelOutcome::Success);
                    let _ = job.reply.send(Ok(Ran { outputs, started, took }));
                }
                return;
            }
            Ok(Err(e)) => RunFailure::Backend(format!("{e:#}")),
            Err(_) => {
                error!(model = %self.shared.name, "the backend panicked; renewing the executor's session");
                self.renew_session();
                RunFailure::Panicked
            }
        };
        if batch.len() > 1 {
            warn!(
                model = %self.shared.name,
                requests = batch.len(),
                "a batch failed ({failure}); running its requests one at a time"
            );
            for job in batch {
                self.execute(vec![job]);
            }
        } else {
            self.fail(batch, failure);
        }
    }

    /// Runs the model once for `batch`: padded and joined into one batch if there are several
    /// jobs, parted again afterwards. Returns each job's outputs, in order.
    fn run_once(&mut self, batch: &mut [Job]) -> anyhow::Result<Vec<Vec<Tensor>>> {
        let (shared, metrics) = (&self.shared, &self.shared.metrics);
        if let [job] = batch {
            let inputs = std::mem::take(&mut job.inputs);
            metrics
                .real_elements
                .inc_by(inputs.iter().map(|t| t.shape.iter().product::<usize>() as u64).sum());
            return Ok(vec![self.session.run(inputs)?]);
        }
        let longest = batch.iter().map(|job| job.length).max().unwrap_or(1);
        let requests: Vec<&[Tensor]> = batch.iter().map(|job| job.inputs.as_slice()).collect();
        let (inputs, counts) = assembly::assemble(&shared.signature, &requests, longest, &shared.pad_values);
        metrics.real_elements.inc_by(counts.real as u64);
        metrics.padding_elements.inc_by(counts.padding as u64);
        let outputs = self.session.run(inputs)?;
        let items: Vec<usize> = batch.iter().map(|job| job.items).collect();
        let lengths: Vec<usize> = batch.iter().map(|job| job.length).collect();
        Ok(assembly::disassemble(&shared.signature, outputs, &items, &lengths, longest))
    }

    fn fail(&self, batch: Vec<Job>, failure: RunFailure) {
        for job in batch {
            self.shared.metrics.outcome(ModelOutcome::Error);
            let _ = job.reply.send(Err(JobError::Failed(failure.clone())));
        }
    }

    fn renew_session(&mut self) {
        match self.backend.new_session() {
            Ok(session) => self.session = session,
            Err(e) => warn!(model = %self.shared.name, "cannot renew the session: {e:#}"),
        }
    }
}
