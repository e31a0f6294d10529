//! Per-model scheduling: a bounded priority queue, a dynamic batcher, and executor threads.
//!
//! Inference never runs on tokio's threads. [`ModelScheduler::compute`] checks a request's
//! tensors, answers from the result cache if it can, and otherwise queues a job and awaits it.
//! Executor threads (by default one per core), each with its own backend session over the
//! one shared model, take jobs from the queue:
//! - higher priority first, arrival order within a priority;
//! - a job whose caller went away (client disconnected, deadline passed upstream) is dropped
//!   unrun, and one whose deadline has passed is answered `Expired` unrun;
//! - with batching, the executor joins compatible jobs (same shapes but for the batch axis)
//!   up to `max_batch_size` items, waiting at most `max_queue_delay` after the first job's
//!   arrival for more, runs them once and splits the outputs back to each caller.
//!
//! Batching is not always a gain (tract runs some models slower per item in batches), so the
//! `auto` policy measures the model at start-up, alone and in a batch, and batches only if
//! that is clearly cheaper per item.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::backend::{Backend, Session};
use crate::cache::{self, ResultCache};
use crate::metrics::{ModelMetrics, ModelOutcome};
use crate::request::{Priority, RequestContext};
use crate::tensor::{self, NamedTensor, Signature, Tensor};

/// Batching policy of a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Batching {
    /// Measure at start-up and batch only where it is cheaper per item.
    #[default]
    Auto,
    /// Always batch (when the model has a batch axis).
    On,
    /// Never batch.
    Off,
}

/// How a model is scheduled: the knobs of `[models.NAME]` in the config.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub executors: usize,
    pub queue_capacity: usize,
    pub batching: Batching,
    pub max_batch_size: usize,
    pub max_queue_delay: Duration,
    pub cache: Option<CacheConfig>,
}

/// The result cache of a model.
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    pub entries: usize,
    pub time_to_live: Duration,
    /// When the queue is full, answer from an expired entry rather than refuse.
    pub serve_stale_on_overload: bool,
}

/// Why a computation did not produce outputs.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// The tensors do not fit the model's signature.
    #[error("{0}")]
    InvalidInput(String),
    /// The model's queue is full.
    #[error("model {0:?} is overloaded: its queue is full")]
    Overloaded(String),
    /// The request's deadline passed while it waited in the queue.
    #[error("the deadline passed while the request waited for model {0:?}")]
    DeadlineExpired(String),
    /// The backend failed while running the model.
    #[error("{0}")]
    Failed(String),
}

/// How a queued job ended, as its caller hears it.
type JobResult = Result<Ran, JobError>;

/// A job's outputs, with when its run started and how long it took.
struct Ran {
    outputs: Vec<Tensor>,
    started: Instant,
    took: Duration,
}

enum JobError {
    Expired,
    Failed(String),
}

/// One request's work for an executor.
struct Job {
    inputs: Vec<Tensor>,
    items: usize,
    context: RequestContext,
    enqueued: Instant,
    reply: oneshot::Sender<JobResult>,
}

/// The model's queue: one lane per priority.
struct Queue {
    lanes: [VecDeque<Job>; Priority::LEVELS],
    /// Set while an executor waits for a batch to fill, so the others leave new jobs to it.
    forming: bool,
    closed: bool,
}

/// What the executors and the callers share.
struct Shared {
    name: String,
    signature: Signature,
    queue: Mutex<Queue>,
    changed: Condvar,
    capacity: usize,
    /// Most items in one run: 1 when not batching.
    max_batch_items: usize,
    max_queue_delay: Duration,
    metrics: ModelMetrics,
}

/// A model's queue, cache and executors. Dropping it closes the queue; the executors finish
/// the jobs already queued and exit.
pub struct ModelScheduler {
    shared: Arc<Shared>,
    cache: Option<(ResultCache, CacheConfig)>,
}

impl ModelScheduler {
    /// Starts the executors for `backend`. Every executor's session is made, and the
    /// batching policy decided, before this returns: a model that cannot run fails here.
    pub fn start(
        name: &str,
        backend: Arc<dyn Backend>,
        config: &SchedulerConfig,
    ) -> anyhow::Result<ModelScheduler> {
        let signature = backend.signature().clone();
        let mut sessions = (0..config.executors.max(1))
            .map(|index| {
                backend.new_session().with_context(|| format!("starting executor {index} of model {name:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let max_batch_items = batch_limit(name, &signature, config, sessions[0].as_mut());
        let shared = Arc::new(Shared {
            name: name.to_string(),
            signature,
            queue: Mutex::new(Queue { lanes: Default::default(), forming: false, closed: false }),
            changed: Condvar::new(),
            capacity: config.queue_capacity,
            max_batch_items,
            max_queue_delay: config.max_queue_delay,
            metrics: ModelMetrics::new(name),
        });
        shared.metrics.max_batch_size.set(max_batch_items as i64);
        for (index, session) in sessions.into_iter().enumerate() {
            let executor = Executor { shared: shared.clone(), backend: backend.clone(), session };
            thread::Builder::new()
                .name(format!("exec-{name}-{index}"))
                .spawn(move || executor.run())
                .context("spawning an executor thread")?;
        }
        let cache = config.cache.map(|c| (ResultCache::new(c.entries, c.time_to_live), c));
        Ok(ModelScheduler { shared, cache })
    }

    /// The model's name, as routes and guests refer to it.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The model's inputs and outputs.
    pub fn signature(&self) -> &Signature {
        &self.shared.signature
    }

    /// Most items the batcher puts in one run (1: no batching).
    pub fn max_batch_items(&self) -> usize {
        self.shared.max_batch_items
    }

    /// Runs the model on `inputs` and returns its named outputs; the time spent queued and
    /// computing is noted in the request's stats. Dropping the returned future withdraws the
    /// request: if it is still queued, it never runs.
    pub async fn compute(
        &self,
        inputs: Vec<NamedTensor>,
        context: &RequestContext,
    ) -> Result<Vec<NamedTensor>, ComputeError> {
        let metrics = &self.shared.metrics;
        let inputs = self.signature().check_inputs(inputs).map_err(|e| {
            metrics.outcome(ModelOutcome::Invalid);
            ComputeError::InvalidInput(e)
        })?;
        let cache_key = self.cache.as_ref().map(|_| cache::key(&inputs));
        if let (Some((cache, _)), Some(key)) = (&self.cache, &cache_key) {
            if let Some(outputs) = cache.get_fresh(key) {
                metrics.cache_hits.inc();
                metrics.outcome(ModelOutcome::CacheHit);
                context.record_model(self.name(), Duration::ZERO, Duration::ZERO);
                return Ok(self.named(outputs));
            }
            metrics.cache_misses.inc();
        }

        let (reply, answer) = oneshot::channel();
        let items = self.signature().items(&inputs);
        let enqueued = Instant::now();
        let job = Job { inputs, items, context: context.clone(), enqueued, reply };
        if !self.shared.push(job) {
            if let (Some((cache, config)), Some(key)) = (&self.cache, &cache_key)
                && config.serve_stale_on_overload
                && let Some(outputs) = cache.get_stale(key)
            {
                metrics.outcome(ModelOutcome::StaleHit);
                return Ok(self.named(outputs));
            }
            metrics.outcome(ModelOutcome::Rejected);
            return Err(ComputeError::Overloaded(self.name().to_string()));
        }
        let outputs = match answer.await {
            Ok(Ok(ran)) => {
                context.record_model(self.name(), ran.started - enqueued, ran.took);
                ran.outputs
            }
            Ok(Err(JobError::Expired)) => {
                return Err(ComputeError::DeadlineExpired(self.name().to_string()));
            }
            Ok(Err(JobError::Failed(message))) => return Err(ComputeError::Failed(message)),
            Err(_) => {
                return Err(ComputeError::Failed(format!("model {:?} dropped the job", self.name())));
            }
        };
        if let (Some((cache, _)), Some(key)) = (&self.cache, cache_key) {
            cache.insert(key, outputs.clone());
        }
        Ok(self.named(outputs))
    }

    fn named(&self, outputs: Vec<Tensor>) -> Vec<NamedTensor> {
        self.signature().outputs.iter().map(|spec| spec.name.clone()).zip(outputs).collect()
    }
}

impl Drop for ModelScheduler {
    fn drop(&mut self) {
        self.shared.queue.lock().unwrap().closed = true;
        self.shared.changed.notify_all();
    }
}

impl Shared {
    /// Queues a job; false if the queue is full even after clearing out dead jobs.
    fn push(&self, job: Job) -> bool {
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
    /// compatible jobs up to the batch limit, waiting up to the queue delay for them.
    /// `None` once the queue is closed and empty.
    fn next_batch(&self) -> Option<Vec<Job>> {
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
        let mut items = first.items;
        let mut batch = vec![first];
        if self.max_batch_items > 1 {
            let fill_by = batch[0].enqueued + self.max_queue_delay;
            queue.forming = true;
            loop {
                self.take_compatible(&mut queue, &mut batch, &mut items);
                let now = Instant::now();
                if items >= self.max_batch_items || now >= fill_by || queue.closed {
                    break;
                }
                queue = self.changed.wait_timeout(queue, fill_by - now).unwrap().0;
            }
            queue.forming = false;
        }
        self.metrics.pending.set(queue.len() as i64);
        drop(queue);
        self.changed.notify_all();
        Some(batch)
    }

    /// Moves queued jobs that fit `batch` into it, in priority order, up to the batch limit.
    fn take_compatible(&self, queue: &mut Queue, batch: &mut Vec<Job>, items: &mut usize) {
        self.remove_dead(queue);
        for lane in &mut queue.lanes {
            let mut index = 0;
            while index < lane.len() && *items < self.max_batch_items {
                let job = &lane[index];
                if *items + job.items <= self.max_batch_items
                    && self.signature.compatible(&batch[0].inputs, &job.inputs)
                {
                    let job = lane.remove(index).expect("index is in bounds");
                    *items += job.items;
                    batch.push(job);
                } else {
                    index += 1;
                }
            }
        }
    }

    /// Drops jobs whose caller is gone and answers those past their deadline, unrun.
    fn remove_dead(&self, queue: &mut Queue) {
        let now = Instant::now();
        for lane in &mut queue.lanes {
            lane.retain_mut(|job| {
                if job.reply.is_closed() {
                    self.metrics.outcome(ModelOutcome::Cancelled);
                    false
                } else if job.context.deadline <= now {
                    self.metrics.outcome(ModelOutcome::Expired);
                    // retain_mut only lends the job: swap the reply out to answer it.
                    let (placeholder, _) = oneshot::channel();
                    let _ = std::mem::replace(&mut job.reply, placeholder).send(Err(JobError::Expired));
                    false
                } else {
                    true
                }
            });
        }
    }
}

impl Queue {
    fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }
}

/// One executor thread: a session of its own, batches from the model's shared queue.
struct Executor {
    shared: Arc<Shared>,
    backend: Arc<dyn Backend>,
    session: Box<dyn Session>,
}

impl Executor {
    fn run(mut self) {
        while let Some(batch) = self.shared.next_batch() {
            self.execute(batch);
        }
    }

    fn execute(&mut self, mut batch: Vec<Job>) {
        let metrics = &self.shared.metrics;
        let started = Instant::now();
        for job in &batch {
            metrics.queue_duration.observe((started - job.enqueued).as_secs_f64());
        }
        let sizes: Vec<usize> = batch.iter().map(|job| job.items).collect();
        let inputs = if batch.len() == 1 {
            std::mem::take(&mut batch[0].inputs)
        } else {
            let signature = &self.shared.signature;
            signature
                .inputs
                .iter()
                .enumerate()
                .map(|(i, spec)| {
                    let parts: Vec<&Tensor> = batch.iter().map(|job| &job.inputs[i]).collect();
                    tensor::concat(&parts, spec.batch_axis.expect("batched models have batch axes"))
                })
                .collect()
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| self.session.run(inputs)));
        let took = started.elapsed();
        let total: usize = sizes.iter().sum();
        metrics.compute_duration.observe(took.as_secs_f64());
        metrics.executions.inc();
        metrics.inferences.inc_by(total as u64);
        metrics.batch_size.observe(total as f64);
        let outputs = match outcome {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(e)) => {
                return self.fail(batch, format!("model {:?} failed: {e:#}", self.shared.name));
            }
            Err(_) => {
                error!(model = %self.shared.name, "the backend panicked; renewing the executor's session");
                self.renew_session();
                return self
                    .fail(batch, format!("model {:?} failed: the backend panicked", self.shared.name));
            }
        };
        if batch.len() == 1 {
            metrics.outcome(ModelOutcome::Success);
            let _ = batch.pop().expect("one job").reply.send(Ok(Ran { outputs, started, took }));
            return;
        }
        let mut per_job: Vec<Vec<Tensor>> = batch.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
        for (output, spec) in outputs.iter().zip(&self.shared.signature.outputs) {
            let pieces =
                tensor::split(output, spec.batch_axis.expect("batched models have batch axes"), &sizes);
            for (job_outputs, piece) in per_job.iter_mut().zip(pieces) {
                job_outputs.push(piece);
            }
        }
        for (job, outputs) in batch.into_iter().zip(per_job) {
            metrics.outcome(ModelOutcome::Success);
            let _ = job.reply.send(Ok(Ran { outputs, started, took }));
        }
    }

    fn fail(&self, batch: Vec<Job>, message: String) {
        for job in batch {
            self.shared.metrics.outcome(ModelOutcome::Error);
            let _ = job.reply.send(Err(JobError::Failed(message.clone())));
        }
    }

    fn renew_session(&mut self) {
        match self.backend.new_session() {
            Ok(session) => self.session = session,
            Err(e) => warn!(model = %self.shared.name, "cannot renew the session: {e:#}"),
        }
    }
}

/// Time spent measuring each batch size at start-up, at most.
const CALIBRATION_BUDGET: Duration = Duration::from_millis(150);
/// Batching is chosen only if it costs at most this fraction per item of unbatched runs.
const BATCHING_GAIN_REQUIRED: f64 = 0.8;

/// Decides the batch limit: 1 (no batching) or `max_batch_size`.
fn batch_limit(
    name: &str,
    signature: &Signature,
    config: &SchedulerConfig,
    session: &mut dyn Session,
) -> usize {
    if !signature.batchable() || config.max_batch_size <= 1 || config.batching == Batching::Off {
        return 1;
    }
    if config.batching == Batching::On {
        return config.max_batch_size;
    }
    let batch = config.max_batch_size.min(64);
    let (Some(single), Some(batched)) =
        (time_per_item(signature, session, 1), time_per_item(signature, session, batch))
    else {
        info!(model = %name, "batching: off (the model cannot be measured with zero inputs; set batching = \"on\" to force it)");
        return 1;
    };
    let chosen = if batched <= single * BATCHING_GAIN_REQUIRED { config.max_batch_size } else { 1 };
    info!(
        model = %name,
        single_us = format!("{:.1}", single * 1e6),
        batched_us = format!("{:.1}", batched * 1e6),
        batch,
        max_batch_size = chosen,
        "batching: {} (time per item alone vs in a batch of {batch})",
        if chosen > 1 { "on" } else { "off" }
    );
    chosen
}

/// Median time per item of running the model on zeros in batches of `batch`, or `None` if
/// the model has other symbolic dimensions or fails on zeros.
fn time_per_item(signature: &Signature, session: &mut dyn Session, batch: usize) -> Option<f64> {
    let inputs = signature
        .inputs
        .iter()
        .map(|spec| {
            let shape = spec.shape_for_batch(batch)?;
            let len = shape.iter().product::<usize>() * spec.element_type.size();
            Tensor::new(spec.element_type, shape, vec![0; len]).ok()
        })
        .collect::<Option<Vec<Tensor>>>()?;
    session.run(inputs.clone()).ok()?; // warm-up
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < 3 || (started.elapsed() < CALIBRATION_BUDGET && times.len() < 200) {
        let run = Instant::now();
        session.run(inputs.clone()).ok()?;
        times.push(run.elapsed().as_secs_f64() / batch as f64);
    }
    times.sort_by(f64::total_cmp);
    Some(times[times.len() / 2])
}
