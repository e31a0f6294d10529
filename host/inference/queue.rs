//! A model's queue of jobs: bounded, fair between tenants by weight, by priority within each
//! ([`FairQueue`], each job costing its tenant its items), dead jobs (caller gone, deadline
//! passed) cleared out. A full queue makes room for a tenant under its share by refusing the
//! newest job of the tenant most over it (push-out). It is held under its model's lock;
//! batches are formed from it by [`crate::inference::batching`].

use std::time::Instant;

use crate::inference::job::{Job, JobError};
use crate::request::fair::{FairQueue, Place, Turn};
use crate::telemetry::metrics::{ModelMetrics, ModelOutcome};

/// The model's queued jobs.
pub(super) struct JobQueue {
    jobs: FairQueue<Job>,
    capacity: usize,
    closed: bool,
    metrics: ModelMetrics,
}

impl JobQueue {
    /// An open, empty queue of at most `capacity` jobs.
    pub(super) fn new(capacity: usize, metrics: ModelMetrics) -> JobQueue {
        JobQueue { jobs: FairQueue::default(), capacity, closed: false, metrics }
    }

    /// Queues a job; false if the queue is full even after clearing out dead jobs and its
    /// tenant holds its share of it.
    pub(super) fn push(&mut self, job: Job) -> bool {
        if self.len() >= self.capacity {
            self.remove_dead();
            if self.len() >= self.capacity {
                let Some(displaced) = self.jobs.evict_for(&job.context.tenant) else {
                    return false;
                };
                self.metrics.outcome(ModelOutcome::Rejected);
                let _ = displaced.reply.send(Err(JobError::Displaced));
            }
        }
        let (tenant, priority, cost) = (job.context.tenant.clone(), job.context.priority, job.items as f64);
        self.jobs.push(&tenant, priority, cost, job);
        self.metrics.pending.set(self.len() as i64);
        true
    }

    /// Takes the first live job in fair order.
    pub(super) fn pop(&mut self) -> Option<Job> {
        self.remove_dead();
        self.jobs.pop()
    }

    /// Every queued job in the order it would be served (see [`FairQueue::in_turn_order`]).
    pub(super) fn in_turn_order(&self) -> Vec<Turn<'_, Job>> {
        self.jobs.in_turn_order()
    }

    /// Takes the jobs at `places`, from one [`JobQueue::in_turn_order`], in the order given.
    pub(super) fn take(&mut self, places: &[Place]) -> Vec<Job> {
        self.jobs.take(places)
    }

    /// Drops jobs whose caller is gone and answers those past their deadline, unrun.
    pub(super) fn remove_dead(&mut self) {
        let now = Instant::now();
        let metrics = &self.metrics;
        self.jobs.retain(|job| !job.settle_if_dead(now, metrics));
    }

    /// Jobs queued.
    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Closes the queue: once it is empty, its executors stop.
    pub(super) fn close(&mut self) {
        self.closed = true;
    }

    /// Whether the queue is closed.
    pub(super) fn is_closed(&self) -> bool {
        self.closed
    }
}
