//! Forming batches: a model's [`JobQueue`] under its lock, as callers push jobs into it and
//! executors take batches from it. An executor takes the first live job in fair order and,
//! when the model batches, the compatible jobs that the policy lets join
//! ([`policy::choose`]), then waits for more as long as the queue delay allows
//! ([`QueueDelay`]). While one executor waits for its batch to fill, the others leave new
//! jobs to it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::inference::batching::policy::{self, Candidate, Fill, QueueDelay};
use crate::inference::job::Job;
use crate::inference::queue::JobQueue;
use crate::inference::tensor::Signature;
use crate::telemetry::metrics::ModelMetrics;

/// A model's queue, shared by its callers and its executors.
pub(in crate::inference) struct BatchQueue {
    pub(in crate::inference) state: Mutex<QueueState>,
    changed: Condvar,
    signature: Signature,
    /// Most items in one run: 1 when not batching (decided when the model loads).
    max_batch_items: AtomicUsize,
    pub(in crate::inference) max_padding_ratio: f64,
    /// How long a run of the model took lately (a moving average, in ns): no batch waits
    /// longer than this for more work.
    recent_run_nanos: AtomicU64,
    metrics: ModelMetrics,
}

/// What the model's lock guards: the jobs, and how batches are forming.
pub(in crate::inference) struct QueueState {
    jobs: JobQueue,
    /// Set while an executor waits for a batch to fill, so the others leave new jobs to it.
    forming: bool,
    /// How long a batch may wait to fill, now.
    pub(in crate::inference) delay: QueueDelay,
    /// Which set of executors may take batches: a model unloaded retires its executors by
    /// moving it on, and the jobs queued wait for the next set.
    generation: u64,
}

impl BatchQueue {
    /// A queue over `jobs` for a model of `signature`, forming batches of at most
    /// `max_batch_items` items within `max_padding_ratio`, waiting as `delay` allows.
    pub(in crate::inference) fn new(
        jobs: JobQueue,
        delay: QueueDelay,
        signature: Signature,
        max_batch_items: usize,
        max_padding_ratio: f64,
        metrics: ModelMetrics,
    ) -> BatchQueue {
        BatchQueue {
            state: Mutex::new(QueueState { jobs, forming: false, delay, generation: 0 }),
            changed: Condvar::new(),
            signature,
            max_batch_items: AtomicUsize::new(max_batch_items),
            max_padding_ratio,
            recent_run_nanos: AtomicU64::new(0),
            metrics,
        }
    }

    /// Queues a job and wakes the executors; false if the queue refused it (see
    /// [`JobQueue::push`]).
    pub(in crate::inference) fn push(&self, job: Job) -> bool {
        let mut state = self.state.lock().unwrap();
        if !state.jobs.push(job) {
            return false;
        }
        drop(state);
        self.changed.notify_all();
        true
    }

    /// Closes the queue and wakes the executors, which finish the jobs queued and stop.
    pub(in crate::inference) fn close(&self) {
        self.state.lock().unwrap().jobs.close();
        self.changed.notify_all();
    }

    /// Most items in one run (1: no batching).
    pub(in crate::inference) fn max_batch_items(&self) -> usize {
        self.max_batch_items.load(Ordering::Relaxed)
    }

    /// Sets the most items in one run, for the batches formed from now on.
    pub(in crate::inference) fn set_max_batch_items(&self, items: usize) {
        self.max_batch_items.store(items.max(1), Ordering::Relaxed);
    }

    /// The set of executors that may take batches now.
    pub(in crate::inference) fn generation(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).generation
    }

    /// Retires the executors taking batches now: each stops once its batch is answered
    /// (one waiting for work at once); the jobs queued stay for the next set.
    pub(in crate::inference) fn retire_executors(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).generation += 1;
        self.changed.notify_all();
    }

    /// Takes every queued job, unanswered (to be answered by the caller).
    pub(in crate::inference) fn take_all(&self) -> Vec<Job> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let jobs = std::iter::from_fn(|| state.jobs.pop()).collect();
        self.metrics.pending.set(0);
        jobs
    }

    /// Waits for the next batch for an executor of `generation`: the first live job in fair
    /// order, plus (when batching) compatible jobs up to the batch limit, waiting as long as
    /// the queue delay allows for more. `None` once the queue is closed and empty, or once
    /// the executors of `generation` are retired.
    pub(in crate::inference) fn next_batch(&self, generation: u64) -> Option<Vec<Job>> {
        let mut state = self.state.lock().unwrap();
        let first = loop {
            if state.generation != generation {
                return None;
            }
            if !state.forming {
                if let Some(job) = state.jobs.pop() {
                    break job;
                }
                if state.jobs.is_closed() {
                    return None;
                }
            }
            state = self.changed.wait(state).unwrap();
        };
        let mut fill = Fill::new(first.items, first.length);
        let mut batch = vec![first];
        let limit = self.max_batch_items();
        if limit > 1 {
            self.take_compatible(&mut state, &mut batch, &mut fill, limit);
            if batch.len() > 1 {
                state.delay.found_queued();
            }
            let allowed = state.delay.allowed(self.recent_run());
            let fill_by = batch[0].enqueued + allowed;
            if fill.items < limit && Instant::now() < fill_by && !state.jobs.is_closed() {
                // Wait while requests keep coming: under the adaptive policy, a step of
                // `patience` that brings none ends the wait.
                let patience = state.delay.patience();
                let (before, mut last_gain) = (batch.len(), Instant::now());
                state.forming = true;
                loop {
                    let now = Instant::now();
                    let give_up = patience.map_or(fill_by, |step| fill_by.min(last_gain + step));
                    if fill.items >= limit || now >= give_up || state.jobs.is_closed() {
                        break;
                    }
                    state = self.changed.wait_timeout(state, give_up - now).unwrap().0;
                    let had = batch.len();
                    self.take_compatible(&mut state, &mut batch, &mut fill, limit);
                    if batch.len() > had {
                        last_gain = Instant::now();
                    }
                }
                state.forming = false;
                state.delay.waited(batch.len() > before);
            }
            self.metrics.queue_delay.set(allowed.as_secs_f64());
        }
        self.metrics.pending.set(state.jobs.len() as i64);
        drop(state);
        self.changed.notify_all();
        Some(batch)
    }

    /// How long a run of the model took lately.
    fn recent_run(&self) -> Duration {
        Duration::from_nanos(self.recent_run_nanos.load(Ordering::Relaxed))
    }

    /// Counts a run's time into the moving average (an eighth of its weight to the new one).
    pub(in crate::inference) fn note_run(&self, took: Duration) {
        let took = took.as_nanos().min(u64::MAX.into()) as u64;
        let old = self.recent_run_nanos.load(Ordering::Relaxed);
        let new = if old == 0 { took } else { old - old / 8 + took / 8 };
        self.recent_run_nanos.store(new, Ordering::Relaxed);
    }

    /// Moves queued jobs that fit `batch` into it (see [`policy::choose`]): in fairness
    /// rounds of one batch's worth of turns, closest in length to the batch's first job first,
    /// within the batch's limits (at most `limit` items).
    fn take_compatible(&self, state: &mut QueueState, batch: &mut Vec<Job>, fill: &mut Fill, limit: usize) {
        state.jobs.remove_dead();
        if fill.items >= limit {
            return;
        }
        let head = &batch[0];
        let turns = state.jobs.in_turn_order();
        let Some(first) = turns.first() else { return };
        let (base, round) = (first.start, limit as f64);
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
        let chosen = policy::choose(fill, head.length, candidates, limit, self.max_padding_ratio);
        let places: Vec<_> = chosen.into_iter().map(|order| turns[order].place).collect();
        drop(turns);
        batch.extend(state.jobs.take(&places));
    }
}
