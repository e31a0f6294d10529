//! Per-model scheduling, the entry to the inference layer: [`ModelScheduler`] starts a
//! model's executors (`executor`) over its bounded priority queue (`queue`), and is what
//! callers (guests, the Open Inference Protocol) compute through.
//!
//! Inference never runs on tokio's threads. [`ModelScheduler::compute`] checks a request's
//! tensors, answers from the result cache if it can, and otherwise queues a job and awaits it.
//! Executor threads (by default one per core), each with its own backend session over the
//! one shared model, take jobs from the queue:
//! - fair between tenants by weight (each job costs its tenant its items), and within a
//!   tenant higher priority first, arrival order within a priority;
//! - a job whose caller went away (client disconnected, deadline passed upstream) is dropped
//!   unrun, and one whose deadline has passed is answered `Expired` unrun;
//! - with batching, the executor joins compatible jobs (same shapes but for the batch axis
//!   and, for models with a sequence axis, the length) up to `max_batch_size` items and
//!   within `max_padding_ratio`, waiting for more as long as the queue delay allows, runs
//!   them once and splits the outputs back to each caller ([`crate::inference::batching`]
//!   says how).
//!
//! Batching is not always a gain (tract runs some models slower per item in batches), so the
//! `auto` policy measures the model at start-up, alone and in a batch, and batches only if
//! that is clearly cheaper per item ([`crate::inference::batching::calibration`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::oneshot;

use crate::inference::backend::Backend;
use crate::inference::batching::assembly::pad_values;
use crate::inference::batching::forming::BatchQueue;
use crate::inference::batching::policy::{self, QueueDelay};
use crate::inference::cache::{self, ResultCache};
use crate::inference::executor::Shared;
use crate::inference::job::{Job, JobError};
use crate::inference::queue::JobQueue;
use crate::inference::residency::{LoadCause, LoadReport, Loading, ModelMemory, Residence, Residency, State};
use crate::inference::tensor::{NamedTensor, Signature, Tensor, TensorError, TensorSpec};
use crate::request::RequestContext;
use crate::telemetry::metrics::{ModelMetrics, ModelOutcome};

pub use crate::inference::batching::policy::{Batching, DelayPolicy};
pub use crate::inference::job::RunFailure;

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
    /// `None`: [`policy::DEFAULT_MAX_PADDING_RATIO`] for models with a mask input (which
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
    /// Bytes its entries may hold.
    pub max_bytes: usize,
    pub time_to_live: Duration,
    /// When the queue is full, answer from an expired entry rather than refuse.
    pub serve_stale_on_overload: bool,
}

/// Why a computation did not produce outputs.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// The tensors do not fit the model's signature.
    #[error(transparent)]
    InvalidInput(#[from] TensorError),
    /// The model's queue is full.
    #[error("model {model:?} is overloaded: its queue is full")]
    Overloaded { model: String },
    /// The model is not loaded and no room could be made for it: the other models are in
    /// use or pinned.
    #[error("model {model:?} cannot be loaded now: {reason}; retry shortly")]
    NoRoom { model: String, reason: String },
    /// The request's deadline passed while it waited in the queue.
    #[error("the deadline passed while the request waited for model {model:?}")]
    DeadlineExpired { model: String },
    /// The model ran, or was to run, and gave no outputs.
    #[error("model {model:?} failed: {reason}")]
    Failed { model: String, reason: RunFailure },
}

impl ComputeError {
    /// Whether it is the load's fault, not the request's: to be retried shortly (503).
    pub fn is_overload(&self) -> bool {
        matches!(self, ComputeError::Overloaded { .. } | ComputeError::NoRoom { .. })
    }
}

/// A model's queue, cache and executors. Dropping it closes the queue; the executors finish
/// the jobs already queued and exit.
pub struct ModelScheduler {
    shared: Arc<Shared>,
    /// Whether its engine is loaded, and how it is loaded again.
    residency: Arc<Residency>,
    /// Which backend runs the model, as metrics and logs name it.
    backend: &'static str,
    cache: Option<(ResultCache, CacheConfig)>,
    /// Executor threads, and whether they run on a GPU.
    executors: usize,
    on_gpu: bool,
    /// The longest the first request of a batch may wait for more.
    max_queue_delay: Duration,
}

impl ModelScheduler {
    /// Starts the executors for `backend`, pinned and charged to no budget. Every executor's
    /// session is made, and the batching policy decided, before this returns: a model that
    /// cannot run fails here.
    pub fn start(
        name: &str,
        backend: Arc<dyn Backend>,
        config: &SchedulerConfig,
    ) -> anyhow::Result<ModelScheduler> {
        let memory = ModelMemory::unreported();
        let kept = backend.clone();
        let residence = Residence {
            memory: memory.clone(),
            pinned: true,
            loader: Arc::new(move |_| Ok(Box::new(kept.clone()) as Box<dyn Backend>)),
            expected_bytes: 0,
            least_bytes: 0,
            remembered_batching: None,
        };
        let scheduler = Self::unloaded(name, backend.signature().clone(), backend.name(), config, residence)?;
        scheduler.load_now(LoadCause::Start, None)?;
        Ok(scheduler)
    }

    /// The scheduler of a model whose engine, `backend`, the caller loaded under `loading`:
    /// its executors start now, and the model is charged what the load took.
    pub fn loaded(
        name: &str,
        backend: Box<dyn Backend>,
        loading: Loading<'_>,
        config: &SchedulerConfig,
        residence: Residence,
    ) -> anyhow::Result<(ModelScheduler, LoadReport)> {
        let scheduler = Self::unloaded(name, backend.signature().clone(), backend.name(), config, residence)?;
        let report = scheduler.load_now(LoadCause::Start, Some((backend, loading)))?;
        Ok((scheduler, report))
    }

    /// The scheduler of a model of `signature`, run by the engine called `engine`, not
    /// loaded yet: it loads on [`ModelScheduler::load_now`], in the background, or at its
    /// first request.
    pub fn unloaded(
        name: &str,
        signature: Signature,
        engine: &'static str,
        config: &SchedulerConfig,
        residence: Residence,
    ) -> anyhow::Result<ModelScheduler> {
        let pad_values =
            pad_values(&signature, &config.pad_values).with_context(|| format!("model {name:?}"))?;
        let max_padding_ratio = config.max_padding_ratio.unwrap_or_else(|| {
            let masked = signature.inputs.iter().any(TensorSpec::is_mask);
            if masked { policy::DEFAULT_MAX_PADDING_RATIO } else { 0.0 }
        });
        let delay = QueueDelay::new(config.queue_delay, config.max_queue_delay);
        let metrics = ModelMetrics::new(name);
        let jobs = JobQueue::new(config.queue_capacity, metrics.clone());
        // Until the first load decides, the batch limit is the most it can be.
        let undecided =
            if signature.batchable() && config.batching != Batching::Off { config.max_batch_size } else { 1 };
        let queue =
            BatchQueue::new(jobs, delay, signature.clone(), undecided, max_padding_ratio, metrics.clone());
        let shared = Arc::new(Shared { name: name.to_string(), signature, queue, pad_values, metrics });
        shared.metrics.queue_delay.set(delay.allowed(Duration::ZERO).as_secs_f64());
        let executors = config.executors.max(1);
        let batching = (config.batching, config.max_batch_size);
        let residency = Residency::new(shared.clone(), engine, executors, batching, residence);
        let cache = config.cache.map(|c| (ResultCache::new(c.entries, c.max_bytes, c.time_to_live), c));
        Ok(ModelScheduler {
            shared,
            residency,
            backend: engine,
            cache,
            executors,
            on_gpu: engine == "ort-cuda",
            max_queue_delay: config.max_queue_delay,
        })
    }

    /// Loads the model now, on this thread, evicting idle models to make room (`first`: an
    /// engine the caller loaded already, under its load). An error leaves it not loaded.
    pub fn load_now(
        &self,
        cause: LoadCause,
        first: Option<(Box<dyn Backend>, Loading<'_>)>,
    ) -> anyhow::Result<LoadReport> {
        self.residency.load_now(cause, first)
    }

    /// Loads the model on this thread if it is not loaded or loading and fits without
    /// evicting anything, once no request's load waits (a failure leaves it not loaded).
    pub fn load_in_background(&self) {
        self.residency.load_in_background();
    }

    /// Whether the model's engine is loaded.
    pub fn residency(&self) -> State {
        self.residency.state()
    }

    /// Whether the model is never evicted.
    pub fn pinned(&self) -> bool {
        self.residency.pinned()
    }

    /// The memory the model holds while loaded (0 when not loaded).
    pub fn resident_bytes(&self) -> u64 {
        self.residency.charged()
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

    /// Most items the batcher puts in one run (1: no batching; before the model's first
    /// load, the most it may be).
    pub fn max_batch_items(&self) -> usize {
        self.shared.queue.max_batch_items()
    }

    /// Executor threads, each with its own session.
    pub fn executors(&self) -> usize {
        self.executors
    }

    /// Whether the model runs on a GPU.
    pub fn on_gpu(&self) -> bool {
        self.on_gpu
    }

    /// The longest the first request of a batch may wait for more (`max_queue_delay_us`).
    pub fn max_queue_delay(&self) -> Duration {
        self.max_queue_delay
    }

    /// Most padding in a batch of requests of different lengths (0: equal lengths only).
    pub fn max_padding_ratio(&self) -> f64 {
        if self.shared.signature.pads() { self.shared.queue.max_padding_ratio } else { 0.0 }
    }

    /// Runs the model on `inputs` and returns its named outputs; the time spent queued and
    /// computing is noted in the request's stats. A model that is not loaded is loaded first,
    /// within the request's deadline. Dropping the returned future withdraws the request: if
    /// it is still queued, it never runs.
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
        let (in_use, queued) = self.residency.use_for(|| self.shared.queue.push(job));
        if !queued {
            if let (Some((cache, config)), Some(key)) = (&self.cache, &cache_key)
                && config.serve_stale_on_overload
                && let Some(outputs) = cache.get_stale(key)
            {
                metrics.outcome(ModelOutcome::StaleHit);
                return Ok(self.named(outputs));
            }
            metrics.outcome(ModelOutcome::Rejected);
            return Err(ComputeError::Overloaded { model: self.name().to_string() });
        }
        // A loaded model's executors answer a job whose deadline passes; one waiting for a
        // load is given up here at its deadline.
        let answered = match in_use.was_loaded {
            true => answer.await,
            false => match tokio::time::timeout_at(context.deadline.into(), answer).await {
                Ok(answered) => answered,
                Err(_) => return Err(ComputeError::DeadlineExpired { model: self.name().to_string() }),
            },
        };
        drop(in_use);
        let model = || self.name().to_string();
        let outputs = match answered {
            Ok(Ok(ran)) => {
                context.record_model(self.name(), ran.started - enqueued, ran.took);
                ran.outputs
            }
            Ok(Err(JobError::Expired)) => return Err(ComputeError::DeadlineExpired { model: model() }),
            Ok(Err(JobError::Displaced)) => return Err(ComputeError::Overloaded { model: model() }),
            Ok(Err(JobError::NoRoom(reason))) => return Err(ComputeError::NoRoom { model: model(), reason }),
            Ok(Err(JobError::Failed(reason))) => return Err(ComputeError::Failed { model: model(), reason }),
            Err(_) => return Err(ComputeError::Failed { model: model(), reason: RunFailure::Stopped }),
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
        self.shared.queue.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};

    use super::*;
    use crate::inference::backend::Session;
    use crate::inference::tensor::{Dim, ElementType, TensorSpec};
    use crate::request::Priority;

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
                .collect::<Vec<u8>>();
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
        let data: Vec<u8> = (0..length as i64).flat_map(|i| (seed + i).to_le_bytes()).collect();
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
                (Err(ComputeError::Failed { reason: RunFailure::Backend(message), .. }), ERROR_ID) => {
                    assert!(message.contains("out of range"), "{message}")
                }
                (Err(ComputeError::Failed { reason: RunFailure::Panicked, .. }), PANIC_ID) => {}
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
        let delay = || harness.scheduler.shared.queue.state.lock().unwrap().delay.allowed(Duration::MAX);
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
}
