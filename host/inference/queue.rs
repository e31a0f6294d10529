//! A model's queue, shared by the callers that push jobs and the executors that take them
//! in batches: one lane per priority, dead jobs (caller gone, deadline passed) cleared out,
//! and batch formation (which jobs join, how long to wait for more) as [`crate::inference::batcher`]
//! decides it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::inference::batcher::{self, Candidate, Fill, QueueDelay};
use crate::inference::scheduler::RunFailure;
use crate::inference::tensor::{Signature, Tensor};
use crate::request::{Priority, RequestContext};
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

/// The model's queue: one lane per priority.
pub(super) struct Queue {
    pub(super) lanes: [VecDeque<Job>; Priority::LEVELS],
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
    /// Queues a job; false if the queue is full even after clearing out dead jobs.
    pub(super) fn push(&self, job: Job) -> bool {
        let mut queue = self.queue.lock().unwrap();
        if queue.len() >= self.capacity {
            self.remove_dead(&mut queue);
            if queue.len() >= self.capacity {
                return false;
            }
        }
        queue.lanes[job.context.priority as usize].push_back(job);
        self.metrics.pending.set(queue.len() as i64);
        drop(queue);
        self.changed.notify_all();
        true
    }

    /// Waits for the next batch: the first live job in priority order, plus (when batching)
    /// compatible jobs up to the batch limit, waiting as long as the queue delay allows for
    /// more. `None` once the queue is closed and empty.
    pub(super) fn next_batch(&self) -> Option<Vec<Job>> {
        let mut queue = self.queue.lock().unwrap();
        let first = loop {
            if !queue.forming {
                self.remove_dead(&mut queue);
                if let Some(job) = queue.lanes.iter_mut().find_map(VecDeque::pop_front) {
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

    /// Moves queued jobs that fit `batch` into it (see [`batcher::choose`]): higher priority
    /// first, then closest in length to the batch's first job, within the batch's limits.
    pub(super) fn take_compatible(&self, queue: &mut Queue, batch: &mut Vec<Job>, fill: &mut Fill) {
        self.remove_dead(queue);
        if fill.items >= self.max_batch_items {
            return;
        }
        let head = &batch[0];
        let candidates = queue
            .lanes
            .iter()
            .enumerate()
            .flat_map(|(lane, jobs)| {
                jobs.iter().enumerate().map(move |(position, job)| (lane, position, job))
            })
            .filter(|(_, _, job)| self.signature.compatible(&head.inputs, &job.inputs))
            .map(|(lane, position, job)| Candidate { lane, position, items: job.items, length: job.length })
            .collect();
        let mut chosen =
            batcher::choose(fill, head.length, candidates, self.max_batch_items, self.max_padding_ratio);
        // Remove from the back of each lane first, so positions stay valid.
        chosen.sort_unstable_by(|a, b| b.cmp(a));
        let mut taken: Vec<Job> = chosen
            .into_iter()
            .map(|(lane, position)| queue.lanes[lane].remove(position).expect("chosen jobs are queued"))
            .collect();
        taken.reverse();
        batch.extend(taken);
    }

    /// Drops jobs whose caller is gone and answers those past their deadline, unrun.
    pub(super) fn remove_dead(&self, queue: &mut Queue) {
        let now = Instant::now();
        for lane in &mut queue.lanes {
            lane.retain_mut(|job| !self.settle_if_dead(job, now));
        }
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
        self.lanes.iter().map(VecDeque::len).sum()
    }
}
