//! A model's queue, shared by the callers that push jobs and the executors that take them
//! in batches: fair between tenants by weight, by priority within each ([`FairQueue`], each
//! job costing its tenant its items), dead jobs (caller gone, deadline passed) cleared out,
//! and batch formation (which jobs join, how long to wait for more) as
//! [`crate::inference::batcher`] decides it. A full queue makes room for a tenant under its
//! share by refusing the newest job of the tenant most over it (push-out).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::inference::batcher::{self, Candidate, Fill, QueueDelay};
use crate::inference::scheduler::RunFailure;
use crate::inference::tensor::{Signature, Tensor};
use crate::request::RequestContext;
use crate::request::fair::FairQueue;
use crate::telemetry::metrics::{ModelMetrics, ModelOutcome};

/// How a queued job ended, as its caller hears it.
pub(super) type JobResult = Result<Ran, JobError>;

/// A job's outputs, with when its run started and how long it took.
pub(super) struct Ran {
    pub(super) outputs: Vec<Tensor>,
    pub(super) started: Instant,
    pub(super) took: Duration,
}

pub(super) enum JobError {
    Expired,
    /// Pushed out of a full queue by a tenant under its share.
    Displaced,
    Failed(RunFailure),
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

/// The model's queue.
pub(super) struct Queue {
    pub(super) jobs: FairQueue<Job>,
    /// Set while an executor waits for a batch to fill, so the others leave new jobs to it.
    pub(super) forming: bool,
    /// How long a batch may wait to fill, now.
    pub(super) delay: QueueDelay,
    pub(super) closed: bool,
}

/// What the executors and the callers share.
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) signature: Signature,
    pub(super) queue: Mutex<Queue>,
    pub(super) changed: Condvar,
    pub(super) capacity: usize,
    /// Most items in one run: 1 when not batching.
    pub(super) max_batch_items: usize,
    pub(super) max_padding_ratio: f64,
    /// One element's bytes per input, for padding.
    pub(super) pad_values: Vec<Vec<u8>>,
    /// How long a run of the model took lately (a moving average, in ns): no batch waits
    /// longer than this for more work.
    pub(super) recent_run_nanos: AtomicU64,
    pub(super) metrics: ModelMetrics,
}

impl Shared {
    /// Queues a job; false if the queue is full even after clearing out dead jobs and its
    /// tenant holds its share of it.
    pub(super) fn push(&self, job: Job) -> bool {
        let mut queue = self.queue.lock().unwrap();
        if queue.len() >= self.capacity {
            self.remove_dead(&mut queue);
            if queue.len() >= self.capacity {
                let Some(displaced) = queue.jobs.evict_for(&job.context.tenant) else {
                    return false;
                };
                self.metrics.outcome(ModelOutcome::Rejected);
                let _ = displaced.reply.send(Err(JobError::Displaced));
            }
        }
        let (tenant, priority, cost) = (job.context.tenant.clone(), job.context.priority, job.items as f64);
        queue.jobs.push(&tenant, priority, cost, job);
        self.metrics.pending.set(queue.len() as i64);
        drop(queue);
        self.changed.notify_all();
        true
    }

    /// Waits for the next batch: the first live job in fair order, plus (when batching)
    /// compatible jobs up to the batch limit, waiting as long as the queue delay allows for
    /// more. `None` once the queue is closed and empty.
    pub(super) fn next_batch(&self) -> Option<Vec<Job>> {
        let mut queue = self.queue.lock().unwrap();
        let first = loop {
            if !queue.forming {
                self.remove_dead(&mut queue);
                if let Some(job) = queue.jobs.pop() {
                    break job;
                }
                if queue.closed {
                    return None;
                }
            }
            queue = self.changed.wait(queue).unwrap();
        };
        let mut fill = Fill::new(first.items, first.length);
        let mut batch = vec![first];
        if self.max_batch_items > 1 {
            self.take_compatible(&mut queue, &mut batch, &mut fill);
            if batch.len() > 1 {
                queue.delay.found_queued();
            }
            let allowed = queue.delay.allowed(self.recent_run());
            let fill_by = batch[0].enqueued + allowed;
            if fill.items < self.max_batch_items && Instant::now() < fill_by && !queue.closed {
                // Wait while requests keep coming: under the adaptive policy, a step of
                // `patience` that brings none ends the wait.
                let patience = queue.delay.patience();
                let (before, mut last_gain) = (batch.len(), Instant::now());
                queue.forming = true;
                loop {
                    let now = Instant::now();
                    let give_up = patience.map_or(fill_by, |step| fill_by.min(last_gain + step));
                    if fill.items >= self.max_batch_items || now >= give_up || queue.closed {
                        break;
                    }
                    queue = self.changed.wait_timeout(queue, give_up - now).unwrap().0;
                    let had = batch.len();
                    self.take_compatible(&mut queue, &mut batch, &mut fill);
                    if batch.len() > had {
                        last_gain = Instant::now();
                    }
                }
                queue.forming = false;
                queue.delay.waited(batch.len() > before);
            }
            self.metrics.queue_delay.set(allowed.as_secs_f64());
        }
        self.metrics.pending.set(queue.len() as i64);
        drop(queue);
        self.changed.notify_all();
        Some(batch)
    }

    /// How long a run of the model took lately.
    pub(super) fn recent_run(&self) -> Duration {
        Duration::from_nanos(self.recent_run_nanos.load(Ordering::Relaxed))
    }

    /// Counts a run's time into the moving average (an eighth of its weight to the new one).
    pub(super) fn note_run(&self, took: Duration) {
        let took = took.as_nanos().min(u64::MAX.into()) as u64;
        let old = self.recent_run_nanos.load(Ordering::Relaxed);
        let new = if old == 0 { took } else { old - old / 8 + took / 8 };
        self.recent_run_nanos.store(new, Ordering::Relaxed);
    }

    /// Moves queued jobs that fit `batch` into it (see [`batcher::choose`]): in fairness
    /// rounds of one batch's worth of turns, closest in length to the batch's first job first,
    /// within the batch's limits.
    pub(super) fn take_compatible(&self, queue: &mut Queue, batch: &mut Vec<Job>, fill: &mut Fill) {
        self.remove_dead(queue);
        if fill.items >= self.max_batch_items {
            return;
        }
        let head = &batch[0];
        let turns = queue.jobs.in_turn_order();
        let Some(first) = turns.first() else { return };
        let (base, round) = (first.start, self.max_batch_items as f64);
        let candidates = turns
            .iter()
            .enumerate()
            .filter(|(_, turn)| self.signature.compatible(&head.inputs, &turn.item.inputs))
            .map(|(order, turn)| Candidate {
                round: ((turn.start - base) / round) as usize,
                order,
                items: turn.item.items,
                length: turn.item.length,
            })
            .collect();
        let chosen =
            batcher::choose(fill, head.length, candidates, self.max_batch_items, self.max_padding_ratio);
        let places: Vec<_> = chosen.into_iter().map(|order| turns[order].place).collect();
        drop(turns);
        batch.extend(queue.jobs.take(&places));
    }

    /// Drops jobs whose caller is gone and answers those past their deadline, unrun.
    pub(super) fn remove_dead(&self, queue: &mut Queue) {
        let now = Instant::now();
        queue.jobs.retain(|job| !self.settle_if_dead(job, now));
    }

    /// If `job`'s caller is gone, counts it cancelled; if its deadline has passed, answers it
    /// `Expired`. Returns whether it is dead (and must not run).
    pub(super) fn settle_if_dead(&self, job: &mut Job, now: Instant) -> bool {
        if job.reply.is_closed() {
            self.metrics.outcome(ModelOutcome::Cancelled);
            true
        } else if job.context.deadline <= now {
            self.metrics.outcome(ModelOutcome::Expired);
            // The job is only lent here: swap the reply out to answer it.
            let (placeholder, _) = oneshot::channel();
            let _ = std::mem::replace(&mut job.reply, placeholder).send(Err(JobError::Expired));
            true
        } else {
            false
        }
    }
}

impl Queue {
    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }
}
