//! Per-model scheduling: a bounded priority queue, a dynamic batcher, and executor threads.
//!
//! Inference never runs on tokio's threads. [`ModelScheduler::compute`] checks a request's
//! tensors, answers from the result cache if it can, and otherwise queues a job and awaits it.
//! Executor threads (by default one per core), each with its own backend session over the
//! one shared model, take jobs from the queue:
//! - higher priority first, arrival order within a priority;
//! - a job whose caller went away (client disconnected, deadline passed upstream) is dropped
//!   unrun, and one whose deadline has passed is answered `Expired` unrun;
//! - with batching, the executor joins compatible jobs (same shapes but for the batch axis
//!   and, for models with a sequence axis, the length) up to `max_batch_size` items and
//!   within `max_padding_ratio`, waiting for more as long as the queue delay allows, runs
//!   them once and splits the outputs back to each caller ([`crate::inference::batcher`] says how).
//!
//! Batching is not always a gain (tract runs some models slower per item in batches), so the
//! `auto` policy measures the model at start-up, alone and in a batch, and batches only if
//! that is clearly cheaper per item ([`crate::inference::calibration`]).

use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::inference::backend::{Backend, Session};
use crate::inference::batcher::{self, Candidate, Fill, QueueDelay};
use crate::inference::cache::{self, ResultCache};
use crate::inference::calibration;
use crate::inference::tensor::{NamedTensor, Signature, Tensor, TensorSpec};
use crate::request::{Priority, RequestContext};
use crate::telemetry::metrics::{ModelMetrics, ModelOutcome};

pub use crate::inference::batcher::DelayPolicy;

/// Batching policy of a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// The longest the first request of a batch may wait for more.
    pub max_queue_delay: Duration,
    /// Whether that wait adapts to the load or is always the maximum.
    pub queue_delay: DelayPolicy,
    /// Most padding in a batch of requests of different lengths, as a share of its elements;
    /// `None`: [`batcher::DEFAULT_MAX_PADDING_RATIO`] for models with a mask input (which
    /// mask padded positions), 0 (equal lengths only) for others.
    pub max_padding_ratio: Option<f64>,
    /// Pad values by input name; inputs not named pad with 0.
    pub pad_values: BTreeMap<String, f64>,
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
    /// Length along the sequence axis (1 for models without one).
    length: usize,
    context: RequestContext,
    enqueued: Instant,
    reply: oneshot::Sender<JobResult>,
}

/// The model's queue: one lane per priority.
struct Queue {
    lanes: [VecDeque<Job>; Priority::LEVELS],
    /// Set while an executor waits for a batch to fill, so the others leave new jobs to it.
    forming: bool,
    /// How long a batch may wait to fill, now.
    delay: QueueDelay,
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
    max_padding_ratio: f64,
    /// One element's bytes per input, for padding.
    pad_values: Vec<Vec<u8>>,
    /// How long a run of the model took lately (a moving average, in ns): no batch waits
    /// longer than this for more work.
    recent_run_nanos: AtomicU64,
    metrics: ModelMetrics,
}

/// A model's queue, cache and executors. Dropping it closes the queue; the executors finish
/// the jobs already queued and exit.
pub struct ModelScheduler {
    shared: Arc<Shared>,
    /// Which backend runs the model, as metrics and logs name it.
    backend: &'static str,
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
        let sessions = (0..config.executors.max(1))
            .map(|index| {
                backend.new_session().with_context(|| format!("starting executor {index} of model {name:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pad_values =
            pad_values(&signature, &config.pad_values).with_context(|| format!("model {name:?}"))?;
        let max_batch_items = batch_limit(name, &signature, config, backend.as_ref())?;
        let max_padding_ratio = config.max_padding_ratio.unwrap_or_else(|| {
            let masked = signature.inputs.iter().any(TensorSpec::is_mask);
            if masked { batcher::DEFAULT_MAX_PADDING_RATIO } else { 0.0 }
        });
        let delay = QueueDelay::new(config.queue_delay, config.max_queue_delay);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            signature,
            queue: Mutex::new(Queue { lanes: Default::default(), forming: false, delay, closed: false }),
            changed: Condvar::new(),
            capacity: config.queue_capacity,
            max_batch_items,
            max_padding_ratio,
            pad_values,
            recent_run_nanos: AtomicU64::new(0),
            metrics: ModelMetrics::new(name),
        });
        shared.metrics.max_batch_size.set(max_batch_items as i64);
        shared.metrics.queue_delay.set(delay.allowed(Duration::ZERO).as_secs_f64());
        for (index, session) in sessions.into_iter().enumerate() {
            let executor = Executor { shared: shared.clone(), backend: backend.clone(), session };
            thread::Builder::new()
                .name(format!("exec-{name}-{index}"))
                .spawn(move || executor.run())
                .context("spawning an executor thread")?;
        }
        let cache = config.cache.map(|c| (ResultCache::new(c.entries, c.time_to_live), c));
        Ok(ModelScheduler { shared, backend: backend.name(), cache })
    }

    /// The model's name, as routes and guests refer to it.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Which backend runs the model (`tract`, `ort`, `ort-cuda`).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The model's inputs and outputs.
    pub fn signature(&self) -> &Signature {
        &self.shared.signature
    }

    /// Most items the batcher puts in one run (1: no batching).
    pub fn max_batch_items(&self) -> usize {
        self.shared.max_batch_items
    }

    /// Most padding in a batch of requests of different lengths (0: equal lengths only).
    pub fn max_padding_ratio(&self) -> f64 {
        if self.shared.signature.pads() { self.shared.max_padding_ratio } else { 0.0 }
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
        let length = self.signature().sequence_length(&inputs);
        let enqueued = Instant::now();
        let job = Job { inputs, items, length, context: context.clone(), enqueued, reply };
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
    /// compatible jobs up to the batch limit, waiting as long as the queue delay allows for
    /// more. `None` once the queue is closed and empty.
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
    fn recent_run(&self) -> Duration {
        Duration::from_nanos(self.recent_run_nanos.load(Ordering::Relaxed))
    }

    /// Counts a run's time into the moving average (an eighth of its weight to the new one).
    fn note_run(&self, took: Duration) {
        let took = took.as_nanos().min(u64::MAX.into()) as u64;
        let old = self.recent_run_nanos.load(Ordering::Relaxed);
        let new = if old == 0 { took } else { old - old / 8 + took / 8 };
        self.recent_run_nanos.store(new, Ordering::Relaxed);
    }

    /// Moves queued jobs that fit `batch` into it (see [`batcher::choose`]): higher priority
    /// first, then closest in length to the batch's first job, within the batch's limits.
    fn take_compatible(&self, queue: &mut Queue, batch: &mut Vec<Job>, fill: &mut Fill) {
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
    fn remove_dead(&self, queue: &mut Queue) {
        let now = Instant::now();
        for lane in &mut queue.lanes {
            lane.retain_mut(|job| !self.settle_if_dead(job, now));
        }
    }

    /// If `job`'s caller is gone, counts it cancelled; if its deadline has passed, answers it
    /// `Expired`. Returns whether it is dead (and must not run).
    fn settle_if_dead(&self, job: &mut Job, now: Instant) -> bool {
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

    /// Runs a batch and answers its jobs. If a batch of several fails, each job is run alone,
    /// so that one bad request (say, too long for the model) fails only itself.
    fn execute(&mut self, mut batch: Vec<Job>) {
        let shared = self.shared.clone();
        let metrics = &shared.metrics;
        // Callers may have gone, or deadlines passed, while the batch was forming.
        let now = Instant::now();
        batch.retain_mut(|job| !shared.settle_if_dead(job, now));
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        for job in &batch {
            metrics.queue_duration.observe((started - job.enqueued).as_secs_f64());
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run_once(&mut batch)));
        let took = started.elapsed();
        shared.note_run(took);
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
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => {
                error!(model = %self.shared.name, "the backend panicked; renewing the executor's session");
                self.renew_session();
                "the backend panicked".to_string()
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
            self.fail(batch, format!("model {:?} failed: {failure}", self.shared.name));
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
        let (inputs, counts) = batcher::assemble(&shared.signature, &requests, longest, &shared.pad_values);
        metrics.real_elements.inc_by(counts.real as u64);
        metrics.padding_elements.inc_by(counts.padding as u64);
        let outputs = self.session.run(inputs)?;
        let items: Vec<usize> = batch.iter().map(|job| job.items).collect();
        let lengths: Vec<usize> = batch.iter().map(|job| job.length).collect();
        Ok(batcher::disassemble(&shared.signature, outputs, &items, &lengths, longest))
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

/// Decides the batch limit: 1 (no batching) or `max_batch_size`, measured for `auto` on a
/// session of its own (so that a model that panics on the measurement leaves no executor's
/// state behind).
fn batch_limit(
    name: &str,
    signature: &Signature,
    config: &SchedulerConfig,
    backend: &dyn Backend,
) -> anyhow::Result<usize> {
    if !signature.batchable() || config.max_batch_size <= 1 || config.batching == Batching::Off {
        return Ok(1);
    }
    if config.batching == Batching::On {
        return Ok(config.max_batch_size);
    }
    let mut session = backend.new_session().context("starting a session to measure batching")?;
    Ok(calibration::batch_limit(name, signature, config.max_batch_size, session.as_mut()))
}

/// Each input's pad value as one element's bytes: the configured value, else 0.
fn pad_values(signature: &Signature, configured: &BTreeMap<String, f64>) -> anyhow::Result<Vec<Vec<u8>>> {
    if let Some(name) =
        configured.keys().find(|name| !signature.inputs.iter().any(|spec| &spec.name == *name))
    {
        let inputs: Vec<&str> = signature.inputs.iter().map(|spec| spec.name.as_str()).collect();
        bail!("pad_values names {name:?}, which is not an input; the inputs are {inputs:?}");
    }
    signature
        .inputs
        .iter()
        .map(|spec| {
            let value = configured.get(&spec.name).copied().unwrap_or(0.0);
            spec.element_type
                .encode(value)
                .map_err(|reason| anyhow::anyhow!("pad value of input {:?}: {reason}", spec.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::tensor::{Dim, ElementType, TensorSpec};

    /// A model that doubles token ids: `ids [batch, sequence]` → `doubled [batch, sequence, 1]`.
    /// Every run records its input shape, and waits while the gate is closed.
    struct Doubler {
        signature: Signature,
        runs: Arc<Mutex<Vec<Vec<usize>>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Doubler {
        fn new() -> Doubler {
            let spec = |name: &str, shape| TensorSpec {
                name: name.into(),
                element_type: ElementType::I64,
                shape,
                batch_axis: Some(0),
                sequence_axis: Some(1),
            };
            Doubler {
                signature: Signature {
                    inputs: vec![spec("ids", vec![Dim::Any, Dim::Any])],
                    outputs: vec![spec("doubled", vec![Dim::Any, Dim::Any, Dim::Fixed(1)])],
                },
                runs: Default::default(),
                gate: Arc::new((Mutex::new(true), Condvar::new())),
            }
        }
    }

    impl Backend for Doubler {
        fn signature(&self) -> &Signature {
            &self.signature
        }

        fn new_session(&self) -> anyhow::Result<Box<dyn Session>> {
            Ok(Box::new(DoublerSession { runs: self.runs.clone(), gate: self.gate.clone() }))
        }

        fn name(&self) -> &'static str {
            "doubler"
        }
    }

    struct DoublerSession {
        runs: Arc<Mutex<Vec<Vec<usize>>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Session for DoublerSession {
        fn run(&mut self, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>> {
            self.runs.lock().unwrap().push(inputs[0].shape.clone());
            let (open, changed) = &*self.gate;
            drop(changed.wait_while(open.lock().unwrap(), |open| !*open).unwrap());
            let ids = &inputs[0];
            // Bad values, as a model meets them: an error, or (like tract on an index out of
            // range) a panic.
            if values(ids).contains(&ERROR_ID) {
                anyhow::bail!("id {ERROR_ID} is out of range");
            }
            assert!(!values(ids).contains(&PANIC_ID), "id {PANIC_ID} makes the model panic");
            let data = ids
                .data
                .chunks(8)
                .flat_map(|b| (i64::from_le_bytes(b.try_into().unwrap()) * 2).to_le_bytes())
                .collect();
            Ok(vec![Tensor::new(ElementType::I64, vec![ids.shape[0], ids.shape[1], 1], data).unwrap()])
        }
    }

    const ERROR_ID: i64 = -1;
    const PANIC_ID: i64 = -2;

    fn config(max_queue_delay: Duration) -> SchedulerConfig {
        SchedulerConfig {
            executors: 1,
            queue_capacity: 64,
            batching: Batching::On,
            max_batch_size: 32,
            max_queue_delay,
            queue_delay: DelayPolicy::Adaptive,
            max_padding_ratio: Some(0.5),
            pad_values: BTreeMap::from([("ids".to_string(), -7.0)]),
            cache: None,
        }
    }

    /// One request of token ids `seed, seed + 1, …`, `length` long.
    fn request(length: usize, seed: i64) -> Vec<NamedTensor> {
        let data = (0..length as i64).flat_map(|i| (seed + i).to_le_bytes()).collect();
        vec![("ids".to_string(), Tensor::new(ElementType::I64, vec![1, length], data).unwrap())]
    }

    fn values(tensor: &Tensor) -> Vec<i64> {
        tensor.data.chunks(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn context() -> RequestContext {
        RequestContext::new(Instant::now() + Duration::from_secs(30), Priority::Normal)
    }

    /// Waits (without sleeping) until `condition` holds, for at most 10 s.
    async fn until(condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "the condition never held");
            tokio::task::yield_now().await;
        }
    }

    /// A scheduler over a [`Doubler`], with its runs and gate at hand.
    struct Harness {
        scheduler: Arc<ModelScheduler>,
        runs: Arc<Mutex<Vec<Vec<usize>>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Harness {
        fn start(name: &str, max_queue_delay: Duration) -> Harness {
            let backend = Doubler::new();
            let (runs, gate) = (backend.runs.clone(), backend.gate.clone());
            let scheduler = ModelScheduler::start(name, Arc::new(backend), &config(max_queue_delay)).unwrap();
            Harness { scheduler: Arc::new(scheduler), runs, gate }
        }

        fn runs(&self) -> Vec<Vec<usize>> {
            self.runs.lock().unwrap().clone()
        }

        fn set_gate(&self, open: bool) {
            *self.gate.0.lock().unwrap() = open;
            self.gate.1.notify_all();
        }

        /// Sends `requests` so that the first holds the executor at the closed gate while the
        /// rest queue behind it (each queued before the next is sent), then opens the gate and
        /// returns every answer, in order.
        async fn behind_a_busy_executor(
            &self,
            requests: Vec<Vec<NamedTensor>>,
        ) -> Vec<Result<Vec<NamedTensor>, ComputeError>> {
            self.set_gate(false);
            let runs_before = self.runs().len();
            let mut answers = Vec::new();
            for (i, inputs) in requests.into_iter().enumerate() {
                let caller = self.scheduler.clone();
                answers.push(tokio::spawn(async move { caller.compute(inputs, &context()).await }));
                if i == 0 {
                    until(|| self.runs().len() == runs_before + 1).await;
                } else {
                    until(|| self.scheduler.shared.metrics.pending.get() == i as i64).await;
                }
            }
            self.set_gate(true);
            let mut results = Vec::new();
            for answer in answers {
                results.push(answer.await.unwrap());
            }
            results
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_requests_of_similar_length_share_a_padded_run_and_get_their_own_outputs() {
        let harness = Harness::start("test-padding", Duration::ZERO);
        let lengths = [4, 3, 5, 4, 40, 38];
        let requests =
            lengths.iter().enumerate().map(|(i, &length)| request(length, 100 * i as i64)).collect();
        let answers = harness.behind_a_busy_executor(requests).await;
        for (i, answer) in answers.into_iter().enumerate() {
            let outputs = answer.unwrap();
            assert_eq!(outputs[0].0, "doubled");
            let expected: Vec<i64> = (0..lengths[i] as i64).map(|t| 2 * (100 * i as i64 + t)).collect();
            assert_eq!(outputs[0].1.shape, vec![1, lengths[i], 1], "request {i} gets its own length back");
            assert_eq!(values(&outputs[0].1), expected, "request {i} gets its own outputs");
        }
        // Alone; then the short ones, padded to 5; then the long ones, padded to 40: the
        // long requests never joined the short batch (its padding would be over half).
        assert_eq!(harness.runs(), vec![vec![1, 4], vec![3, 5], vec![2, 40]]);
        let metrics = &harness.scheduler.shared.metrics;
        assert_eq!(metrics.real_elements.get(), 4 + 3 + 5 + 4 + 40 + 38);
        assert_eq!(metrics.padding_elements.get(), (2 + 1) + 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_fails_its_batch_fails_alone() {
        let harness = Harness::start("test-isolation", Duration::ZERO);
        // Behind a busy executor: good, erring, good, panicking, good; all the same length.
        let seeds = [0, 10, ERROR_ID, 20, PANIC_ID, 30];
        let answers =
            harness.behind_a_busy_executor(seeds.iter().map(|&seed| request(1, seed)).collect()).await;
        for (answer, &seed) in answers.into_iter().zip(&seeds) {
            match (answer, seed) {
                (Ok(outputs), 0 | 10 | 20 | 30) => assert_eq!(values(&outputs[0].1), vec![2 * seed]),
                (Err(ComputeError::Failed(message)), ERROR_ID) => {
                    assert!(message.contains("out of range"), "{message}")
                }
                (Err(ComputeError::Failed(message)), PANIC_ID) => {
                    assert!(message.contains("panicked"), "{message}")
                }
                (other, seed) => panic!("seed {seed}: {other:?}"),
            }
        }
        // The first alone, the batch of five that failed, then each of the five alone.
        assert_eq!(harness.runs().len(), 1 + 1 + 5);
        // The executor survived the panic: the model still answers.
        let outputs = harness.scheduler.compute(request(2, 40), &context()).await.unwrap();
        assert_eq!(values(&outputs[0].1), vec![80, 82]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_caller_never_waits_and_load_opens_the_queue_delay() {
        let max_delay = Duration::from_millis(2);
        let harness = Harness::start("test-delay", max_delay);
        let delay = || harness.scheduler.shared.queue.lock().unwrap().delay.allowed(Duration::MAX);
        for i in 0..20 {
            harness.scheduler.compute(request(3, i), &context()).await.unwrap();
        }
        assert_eq!(harness.runs().len(), 20, "one run per request");
        assert_eq!(delay(), Duration::ZERO, "one caller at a time: no waiting");

        // Load: requests queue behind a busy executor and are found together.
        for answer in harness.behind_a_busy_executor((0..4).map(|i| request(3, i)).collect()).await {
            answer.unwrap();
        }
        assert!(delay() > Duration::ZERO, "a batch found queued requests: the delay opens");
        assert!(delay() <= max_delay);
    }

    #[test]
    fn pad_values_must_name_inputs_and_fit_their_type() {
        let signature = Doubler::new().signature;
        let values = pad_values(&signature, &BTreeMap::from([("ids".to_string(), -1.0)])).unwrap();
        assert_eq!(values, vec![(-1i64).to_le_bytes().to_vec()]);
        let unknown = pad_values(&signature, &BTreeMap::from([("mask".to_string(), 0.0)])).unwrap_err();
        assert!(format!("{unknown:#}").contains("\"mask\", which is not an input"), "{unknown:#}");
        let fraction = pad_values(&signature, &BTreeMap::from([("ids".to_string(), 0.5)])).unwrap_err();
        assert!(format!("{fraction:#}").contains("INT64 cannot hold 0.5"), "{fraction:#}");
    }
}
