//! Which models hold memory. A model's engine (its backend and its executor threads, with
//! their sessions) is loaded when the model is needed and unloaded when room is needed,
//! under the node's model memory budget ([`ModelMemory`]); its queue, cache, metrics and
//! signature stay, so callers never see the difference but for the wait.
//!
//! - **Charged what it holds.** Loads run one at a time, and a model is charged by how much
//!   the process's resident memory grew while it loaded and started its executors (weights,
//!   sessions, arenas; at least its file's size), measured, not estimated. Its charge is
//!   remembered, so the next load knows how much room to make before it starts.
//! - **Loaded on first use.** A request for a model that is not loaded queues as usual and
//!   starts the load; its executors take the queue once they are up. The request waits
//!   within its deadline.
//! - **Evicted least recently used.** To make room, the idle model (nothing queued or
//!   running) used longest ago is unloaded first. A pinned model is never evicted, and a
//!   model in use never is: a load that finds no room waits for a model to go idle, up to
//!   [`ROOM_WAIT`], and then fails its requests as overloaded (503).
//! - **Loaded in the background.** A model the node starts without loading is loaded once the
//!   node serves, if it fits without evicting anything.
//!
//! `memory` keeps the node's budget and the loads; `batching`, how a model's batch limit is
//! decided at its first load and measured again after a noisy one; this module, each
//! model's slot.

mod batching;
mod memory;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use anyhow::{Context, bail};
use tracing::{info, warn};

use self::batching::BatchPlan;
use self::memory::mib;
pub use self::memory::{LoadReport, Loading, ModelMemory, NoRoom, ROOM_WAIT};
use crate::inference::backend::Backend;
use crate::inference::batching::calibration::Measurement;
use crate::inference::batching::policy::Batching;
use crate::inference::executor::{Executor, Shared};
use crate::inference::job::{JobError, RunFailure};
use crate::telemetry::cpu;

/// Bytes in a MiB, for log lines.
const MIB: f64 = (1u64 << 20) as f64;

/// A load is quiet (its measurements worth remembering) unless other processes kept more
/// than this share of the cores busy while it ran, on average: a build running beside the
/// node, not a shell polling it.
const NOISY_SHARE: f64 = 0.5;

/// Whether other processes keeping `others_busy_cores` busy leave the machine quiet enough
/// to measure on (see [`NOISY_SHARE`]).
fn quiet(others_busy_cores: f64) -> bool {
    others_busy_cores <= NOISY_SHARE * thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Loads a model's engine again, by the engine's name, after an eviction.
pub type Loader = Arc<dyn Fn(&'static str) -> anyhow::Result<Box<dyn Backend>> + Send + Sync>;

/// How a model lives in memory: where it is charged, whether it may be evicted, how it is
/// loaded again.
pub struct Residence {
    pub memory: Arc<ModelMemory>,
    /// Never evicted.
    pub pinned: bool,
    pub loader: Loader,
    /// The memory it held when last loaded (remembered), to make room for before a load.
    pub expected_bytes: u64,
    /// The least it is charged: its file's size.
    pub least_bytes: u64,
    /// A batching measurement an earlier start made, to decide its batch limit without
    /// measuring.
    pub remembered_batching: Option<Measurement>,
}

/// What started a load, as the log gives it.
#[derive(Clone, Copy, Debug)]
pub enum LoadCause {
    /// The node loaded it before serving.
    Start,
    /// Loaded once the node served, as it fit.
    Background,
    /// A request asked for it.
    Demand,
}

/// Whether a model's engine is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Loaded,
    Loading,
    NotLoaded,
}

enum Engine {
    NotLoaded,
    Loading,
    Loaded { threads: Vec<JoinHandle<()>> },
}

/// One model's engine slot: loaded or not, its charge, its use.
pub(super) struct Residency {
    shared: Arc<Shared>,
    pinned: bool,
    executors: usize,
    loader: Loader,
    memory: Arc<ModelMemory>,
    engine: Mutex<Engine>,
    /// The engine that runs the model.
    engine_name: &'static str,
    plan: Mutex<BatchPlan>,
    /// Requests computing through the model now (queued or running).
    outstanding: AtomicUsize,
    last_used: Mutex<Instant>,
    charged: AtomicU64,
    /// What the next load is expected to take.
    expected: AtomicU64,
    least_bytes: u64,
}

/// A request's hold on a model: while it lasts, the model is in use and is not evicted.
pub(super) struct InUse<'a> {
    residency: &'a Residency,
    /// Whether the model was loaded when the request came.
    pub(super) was_loaded: bool,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        if self.residency.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.residency.memory.changed.notify_all();
        }
    }
}

impl Residency {
    /// The slot of a model served through `shared`, not loaded yet.
    pub(super) fn new(
        shared: Arc<Shared>,
        engine_name: &'static str,
        executors: usize,
        batching: (Batching, usize),
        residence: Residence,
    ) -> Arc<Residency> {
        let residency = Arc::new(Residency {
            shared,
            pinned: residence.pinned,
            executors,
            loader: residence.loader,
            memory: residence.memory,
            engine: Mutex::new(Engine::NotLoaded),
            engine_name,
            plan: Mutex::new(BatchPlan {
                batching: batching.0,
                max_batch_size: batching.1,
                remembered: residence.remembered_batching,
                decided: false,
                measured_now: false,
            }),
            outstanding: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            charged: AtomicU64::new(0),
            expected: AtomicU64::new(residence.expected_bytes.max(residence.least_bytes)),
            least_bytes: residence.least_bytes,
        });
        residency.memory.register(&residency);
        residency
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    pub(super) fn pinned(&self) -> bool {
        self.pinned
    }

    pub(super) fn charged(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
    }

    fn last_used(&self) -> Instant {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn state(&self) -> State {
        match *self.engine.lock().unwrap_or_else(|e| e.into_inner()) {
            Engine::Loaded { .. } => State::Loaded,
            Engine::Loading => State::Loading,
            Engine::NotLoaded => State::NotLoaded,
        }
    }

    fn evictable(&self) -> bool {
        !self.pinned
            && self.outstanding.load(Ordering::Acquire) == 0
            && matches!(*self.engine.lock().unwrap_or_else(|e| e.into_inner()), Engine::Loaded { .. })
    }

    /// Holds the model for a request and runs `queue` (which queues the request's job) while
    /// no load can fail the queue unseen and no eviction can start; starts a load if the
    /// model is not loaded.
    pub(super) fn use_for<T>(self: &Arc<Self>, queue: impl FnOnce() -> T) -> (InUse<'_>, T) {
        let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let was_loaded = matches!(*engine, Engine::Loaded { .. });
        let queued = queue();
        if matches!(*engine, Engine::NotLoaded) {
            *engine = Engine::Loading;
            self.spawn_load(LoadCause::Demand);
        }
        (InUse { residency: self, was_loaded }, queued)
    }

    /// Loads the model on this thread, if it is not loaded or loading and fits without
    /// evicting anything, once no request's load waits.
    pub(super) fn load_in_background(self: &Arc<Self>) {
        {
            let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
            if !matches!(*engine, Engine::NotLoaded) {
                return;
            }
            *engine = Engine::Loading;
        }
        if let Err(reason) = self.load(LoadCause::Background, None) {
            self.failed_to_load(LoadCause::Background, &reason);
        }
    }

    fn spawn_load(self: &Arc<Self>, cause: LoadCause) {
        let residency = self.clone();
        let spawned = thread::Builder::new().name(format!("load-{}", self.name())).spawn(move || {
            if let Err(reason) = residency.load(cause, None) {
                residency.failed_to_load(cause, &reason);
            }
        });
        if let Err(e) = spawned {
            self.failed_to_load(cause, &anyhow::anyhow!("cannot start a thread to load it: {e}"));
        }
    }

    /// A load that failed: the model is not loaded, and the requests waiting for it fail
    /// (unless the load was in the background and failed for want of room: then they start
    /// a load of their own).
    fn failed_to_load(self: &Arc<Self>, cause: LoadCause, reason: &anyhow::Error) {
        let no_room = reason.downcast_ref::<NoRoom>().is_some();
        let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        // Requests came while a background load, which may not evict, found no room: they
        // load it themselves, evicting as they may.
        if matches!(cause, LoadCause::Background) && no_room && self.outstanding.load(Ordering::Acquire) > 0 {
            self.spawn_load(LoadCause::Demand);
            return;
        }
        *engine = Engine::NotLoaded;
        let waiting = self.shared.queue.take_all();
        drop(engine);
        match (cause, no_room) {
            (LoadCause::Background, true) => {
                info!(model = %self.name(), "model not loaded in the background: {reason:#}")
            }
            _ => warn!(model = %self.name(), requests = waiting.len(), "model not loaded: {reason:#}"),
        }
        let reason = format!("{reason:#}");
        for job in waiting {
            let error = if no_room {
                JobError::NoRoom(reason.clone())
            } else {
                JobError::Failed(RunFailure::Backend(format!("loading the model: {reason}")))
            };
            let _ = job.reply.send(Err(error));
        }
    }

    /// Loads the model now, on this thread, if it is not loaded or loading (see
    /// [`Residency::load`]); an error leaves it not loaded, and fails the requests waiting.
    pub(super) fn load_now(
        self: &Arc<Self>,
        cause: LoadCause,
        first: Option<(Box<dyn Backend>, Loading<'_>)>,
    ) -> anyhow::Result<LoadReport> {
        {
            let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
            if !matches!(*engine, Engine::NotLoaded) {
                bail!("model {:?} is loaded or loading already", self.name());
            }
            *engine = Engine::Loading;
        }
        let loaded = self.load(cause, first);
        if let Err(reason) = &loaded {
            self.failed_to_load(cause, reason);
        }
        loaded
    }

    /// Loads the model now, on this thread: makes room (evicting idle models unless the load
    /// is in the background), loads its engine (`first`, if the caller loaded it already
    /// under `loading`; else by the loader), starts its executors and charges it.
    fn load(
        self: &Arc<Self>,
        cause: LoadCause,
        first: Option<(Box<dyn Backend>, Loading<'_>)>,
    ) -> anyhow::Result<LoadReport> {
        let (backend, loading) = match first {
            Some((backend, loading)) => (backend, loading),
            None => {
                let may_evict = !matches!(cause, LoadCause::Background);
                let loading = match may_evict {
                    true => self.memory.begin_load(),
                    false => self.memory.begin_background_load(),
                };
                let expected = self.expected.load(Ordering::Relaxed);
                self.memory.make_room(self, expected, may_evict, Instant::now() + ROOM_WAIT)?;
                let backend = (self.loader)(self.engine_name)?;
                (backend, loading)
            }
        };
        if backend.signature() != &self.shared.signature {
            bail!("the model's inputs or outputs are not what they were when it was first loaded");
        }
        let backend: Arc<dyn Backend> = Arc::from(backend);
        let sessions = (0..self.executors)
            .map(|index| backend.new_session().with_context(|| format!("starting executor {index}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let batching = self.decide_batching(backend.as_ref())?;
        let (resident_bytes, others_busy_cores, took) = loading.finish(self.least_bytes);
        drop(loading);
        if let Some(budget) = self.memory.budget
            && resident_bytes > budget
        {
            return Err(NoRoom::TooLarge { budget_mib: mib(budget), need_mib: mib(resident_bytes) }.into());
        }
        let engine = Arc::downgrade(&backend);
        {
            // Loaded before any executor can answer a request.
            let mut state = self.engine.lock().unwrap_or_else(|e| e.into_inner());
            let generation = self.shared.queue.generation();
            let mut threads = Vec::with_capacity(sessions.len());
            for (index, session) in sessions.into_iter().enumerate() {
                let executor =
                    Executor { shared: self.shared.clone(), backend: backend.clone(), session, generation };
                let spawned = thread::Builder::new()
                    .name(format!("exec-{}-{index}", self.name()))
                    .spawn(move || executor.run());
                match spawned {
                    Ok(thread) => threads.push(thread),
                    Err(e) => {
                        self.shared.queue.retire_executors();
                        drop(state);
                        threads.into_iter().for_each(|thread| drop(thread.join()));
                        bail!("spawning an executor thread: {e}");
                    }
                }
            }
            *state = Engine::Loaded { threads };
        }
        drop(backend);
        self.charged.store(resident_bytes, Ordering::Relaxed);
        self.expected.store(resident_bytes, Ordering::Relaxed);
        // It took more than expected: make the rest of the room now, as far as idle models
        // allow.
        if let Err(over) = self.memory.make_room(self, resident_bytes, true, Instant::now()) {
            warn!(model = %self.name(), "over the model memory budget until models in use go idle: {over}");
        }
        let metrics = &self.shared.metrics;
        metrics.loads.inc();
        metrics.resident_bytes.set(i64::try_from(resident_bytes).unwrap_or(i64::MAX));
        self.memory.publish();
        info!(
            model = %self.name(),
            backend = self.engine_name,
            executors = self.executors,
            max_batch = self.shared.queue.max_batch_items(),
            max_padding = self.shared.queue.max_padding_ratio,
            load_ms = took.as_millis() as u64,
            resident_mib = format!("{:.1}", resident_bytes as f64 / MIB),
            cause = ?cause,
            "model loaded"
        );
        let quiet = quiet(others_busy_cores);
        if !quiet {
            info!(
                model = %self.name(),
                others_busy_cores = format!("{others_busy_cores:.2}"),
                "other processes kept the CPU busy while the model loaded: its measurements are not remembered"
            );
            if self.plan.lock().unwrap_or_else(|e| e.into_inner()).measured_now {
                self.revisit_when_quiet(engine);
            }
        }
        Ok(LoadReport { engine: self.engine_name, batching, resident_bytes, others_busy_cores, quiet, took })
    }

    /// Unloads the model if it is idle and not pinned, for `for_model`; its executors stop,
    /// its backend goes, and the memory returns to the system.
    fn evict(&self, for_model: &str) {
        let mut engine = self.engine.lock().unwrap_or_else(|e| e.into_inner());
        if self.pinned || self.outstanding.load(Ordering::Acquire) != 0 {
            return;
        }
        let Engine::Loaded { threads } = std::mem::replace(&mut *engine, Engine::NotLoaded) else {
            return;
        };
        self.shared.queue.retire_executors();
        drop(engine);
        for thread in threads {
            let _ = thread.join();
        }
        cpu::return_free_memory();
        let freed = self.charged.swap(0, Ordering::Relaxed);
        self.shared.metrics.evictions.inc();
        self.shared.metrics.resident_bytes.set(0);
        self.memory.publish();
        self.memory.changed.notify_all();
        info!(
            model = %self.name(),
            freed_mib = format!("{:.1}", freed as f64 / MIB),
            for_model = %for_model,
            "model evicted (idle, least recently used) to make room"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::inference::backend::Session;
    use crate::inference::scheduler::{ComputeError, DelayPolicy, ModelScheduler, SchedulerConfig};
    use crate::inference::tensor::{Dim, ElementType, NamedTensor, Signature, Tensor, TensorSpec};
    use crate::request::{Priority, RequestContext};

    /// What each model is charged at least: far above what loading it really takes, so
    /// that the other tests of this process, allocating meanwhile, do not change the count.
    const FLOOR: u64 = 1 << 30;

    /// A model that gives back its input: `x [batch, 2]` → `x`.
    struct Echo(Signature);

    impl Echo {
        fn signature() -> Signature {
            let spec = TensorSpec {
                name: "x".into(),
                element_type: ElementType::F32,
                shape: vec![Dim::Any, Dim::Fixed(2)],
                batch_axis: Some(0),
                sequence_axis: None,
            };
            Signature { inputs: vec![spec.clone()], outputs: vec![spec] }
        }
    }

    impl Backend for Echo {
        fn signature(&self) -> &Signature {
            &self.0
        }

        fn new_session(&self) -> anyhow::Result<Box<dyn Session>> {
            Ok(Box::new(EchoSession))
        }

        fn name(&self) -> &'static str {
            "tract"
        }
    }

    struct EchoSession;

    impl Session for EchoSession {
        fn run(&mut self, inputs: Vec<Tensor>) -> anyhow::Result<Vec<Tensor>> {
            Ok(inputs)
        }
    }

    fn model(name: &str, memory: &Arc<ModelMemory>, pinned: bool, least_bytes: u64) -> ModelScheduler {
        let config = SchedulerConfig {
            executors: 1,
            queue_capacity: 16,
            batching: Batching::Off,
            max_batch_size: 1,
            max_queue_delay: Duration::ZERO,
            queue_delay: DelayPolicy::Adaptive,
            max_padding_ratio: None,
            pad_values: BTreeMap::new(),
            cache: None,
        };
        let residence = Residence {
            memory: memory.clone(),
            pinned,
            loader: Arc::new(|_| Ok(Box::new(Echo(Echo::signature())) as Box<dyn Backend>)),
            expected_bytes: 0,
            least_bytes,
            remembered_batching: None,
        };
        ModelScheduler::unloaded(name, Echo::signature(), "tract", &config, residence).unwrap()
    }

    async fn compute(model: &ModelScheduler) -> Result<Vec<NamedTensor>, ComputeError> {
        let x = Tensor::new(
            ElementType::F32,
            vec![1, 2],
            [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        )
        .unwrap();
        let context = RequestContext::new(Instant::now() + Duration::from_secs(30), Priority::Normal);
        model.compute(vec![("x".to_string(), x.clone())], &context).await
    }

    fn states(models: &[&ModelScheduler]) -> Vec<State> {
        models.iter().map(|model| model.residency()).collect()
    }

    #[tokio::test]
    async fn a_model_loads_on_first_use_and_the_least_recently_used_idle_one_makes_room() {
        let memory = ModelMemory::unreported_with_budget(FLOOR * 5 / 2);
        let (a, b, c) = (
            model("a", &memory, false, FLOOR),
            model("b", &memory, false, FLOOR),
            model("c", &memory, false, FLOOR),
        );
        assert_eq!(states(&[&a, &b, &c]), [State::NotLoaded; 3]);
        for (first, second) in [(&a, &b), (&a, &b)] {
            compute(first).await.unwrap();
            compute(second).await.unwrap();
        }
        assert_eq!(states(&[&a, &b, &c]), [State::Loaded, State::Loaded, State::NotLoaded]);
        // a was used before b: c's load evicts a.
        let outputs = compute(&c).await.unwrap();
        assert_eq!(outputs[0].1.shape, vec![1, 2]);
        assert_eq!(states(&[&a, &b, &c]), [State::NotLoaded, State::Loaded, State::Loaded]);
        assert_eq!(memory.used(), 2 * FLOOR);
        // And a comes back, evicting b.
        compute(&a).await.unwrap();
        assert_eq!(states(&[&a, &b, &c]), [State::Loaded, State::NotLoaded, State::Loaded]);
    }

    #[tokio::test]
    async fn a_pinned_model_is_never_evicted() {
        let memory = ModelMemory::unreported_with_budget(FLOOR * 5 / 2);
        let pinned = model("pinned", &memory, true, FLOOR);
        pinned.load_now(LoadCause::Start, None).unwrap();
        let (a, b) = (model("a", &memory, false, FLOOR), model("b", &memory, false, FLOOR));
        compute(&a).await.unwrap();
        compute(&pinned).await.unwrap();
        compute(&b).await.unwrap();
        assert_eq!(states(&[&pinned, &a, &b]), [State::Loaded, State::NotLoaded, State::Loaded]);
    }

    #[tokio::test]
    async fn a_model_larger_than_the_budget_is_refused_as_overload_and_stays_unloaded() {
        let memory = ModelMemory::unreported_with_budget(FLOOR);
        let large = model("large", &memory, false, FLOOR * 2);
        let error = compute(&large).await.unwrap_err();
        assert!(error.is_overload(), "{error}");
        assert!(error.to_string().contains("more than server.model_memory_mib"), "{error}");
        assert_eq!(large.residency(), State::NotLoaded);
        assert!(large.load_now(LoadCause::Start, None).is_err());
    }
}
