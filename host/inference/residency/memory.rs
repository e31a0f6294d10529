//! The node's model memory: the budget, the models that may hold some, making room for a
//! load by evicting idle models least recently used first, and the one load at a time,
//! measured (the growth of resident memory, the CPU other processes used meanwhile).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::Residency;
use crate::inference::batching::calibration::Measurement;
use crate::telemetry::cpu::{self, CpuSample};
use crate::telemetry::metrics;

/// The longest a load waits for models in use to go idle, so that it can evict one.
pub const ROOM_WAIT: Duration = Duration::from_secs(30);

/// The node's model memory: its budget, the models that may hold some, and the one load that
/// runs at a time.
pub struct ModelMemory {
    /// Bytes the loaded models may hold together; `None`: no limit.
    pub(super) budget: Option<u64>,
    /// Whether it is the node's, whose use the metrics report.
    reported: bool,
    models: Mutex<Vec<Weak<Residency>>>,
    /// Signalled when a model goes idle or is unloaded.
    pub(super) changed: Condvar,
    loading: Mutex<()>,
    /// Loads waiting for `loading`, which background loads let go first.
    wanted: AtomicUsize,
}

/// Why a model could not be given room.
#[derive(Debug, thiserror::Error)]
pub enum NoRoom {
    /// Every other model holding memory is pinned or in use.
    #[error(
        "no room under server.model_memory_mib ({budget_mib} MiB; {used_mib} MiB held by models that are pinned or in use, {need_mib} MiB needed)"
    )]
    Busy { budget_mib: u64, used_mib: u64, need_mib: u64 },
    /// The model alone holds more than the whole budget.
    #[error("it holds {need_mib} MiB loaded, more than server.model_memory_mib ({budget_mib} MiB)")]
    TooLarge { budget_mib: u64, need_mib: u64 },
}

pub(super) fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

impl ModelMemory {
    /// The node's model memory, of `budget` bytes at most (`None`: no limit).
    pub fn new(budget: Option<u64>) -> Arc<ModelMemory> {
        metrics::model_memory(budget.unwrap_or(0), 0);
        Self::with(budget, true)
    }

    /// Memory of no limit for a model that is not the node's (one a guest loaded from
    /// bytes, a benchmark's), left out of the metrics.
    pub fn unreported() -> Arc<ModelMemory> {
        Self::with(None, false)
    }

    /// Memory of `budget` bytes left out of the metrics, for tests.
    #[cfg(test)]
    pub(crate) fn unreported_with_budget(budget: u64) -> Arc<ModelMemory> {
        Self::with(Some(budget), false)
    }

    fn with(budget: Option<u64>, reported: bool) -> Arc<ModelMemory> {
        Arc::new(ModelMemory {
            budget,
            reported,
            models: Mutex::default(),
            changed: Condvar::new(),
            loading: Mutex::new(()),
            wanted: AtomicUsize::new(0),
        })
    }

    /// The budget, if there is one.
    pub fn budget(&self) -> Option<u64> {
        self.budget
    }

    /// Bytes the loaded models hold now.
    pub fn used(&self) -> u64 {
        self.live().iter().map(|model| model.charged()).sum()
    }

    fn live(&self) -> Vec<Arc<Residency>> {
        self.models.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade).collect()
    }

    pub(super) fn register(&self, model: &Arc<Residency>) {
        let mut models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        models.retain(|weak| weak.strong_count() > 0);
        models.push(Arc::downgrade(model));
    }

    pub(super) fn publish(&self) {
        if self.reported {
            metrics::model_memory(self.budget.unwrap_or(0), self.used());
        }
    }

    /// Starts a load: waits for the one running to finish, and notes the process's memory
    /// and CPU time, to charge the model and judge the measurements made while it loads.
    pub fn begin_load(&self) -> Loading<'_> {
        self.wanted.fetch_add(1, Ordering::AcqRel);
        let serial = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        self.wanted.fetch_sub(1, Ordering::AcqRel);
        Self::loading(serial)
    }

    /// Starts a load that nobody waits for: only when no other load is wanted, so that a
    /// request's load never waits behind the background's.
    pub(super) fn begin_background_load(&self) -> Loading<'_> {
        loop {
            if self.wanted.load(Ordering::Acquire) == 0
                && let Ok(serial) = self.loading.try_lock()
            {
                if self.wanted.load(Ordering::Acquire) == 0 {
                    return Self::loading(serial);
                }
                drop(serial);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn loading(serial: MutexGuard<'_, ()>) -> Loading<'_> {
        cpu::return_free_memory();
        Loading {
            _serial: serial,
            resident_before: cpu::resident_bytes(),
            cpu_before: CpuSample::now(),
            started: Instant::now(),
        }
    }

    /// Makes room for `need` more bytes beside what is loaded, for `model` (never evicted
    /// for itself): evicts idle models, least recently used first, if `may_evict`, and waits
    /// until `give_up` for models in use to go idle.
    pub(super) fn make_room(
        &self,
        model: &Residency,
        need: u64,
        may_evict: bool,
        give_up: Instant,
    ) -> Result<(), NoRoom> {
        let Some(budget) = self.budget else { return Ok(()) };
        if need > budget {
            return Err(NoRoom::TooLarge { budget_mib: mib(budget), need_mib: mib(need) });
        }
        loop {
            let live = self.live();
            let used: u64 =
                live.iter().filter(|other| !std::ptr::eq(other.as_ref(), model)).map(|m| m.charged()).sum();
            if used + need <= budget {
                return Ok(());
            }
            let busy = NoRoom::Busy { budget_mib: mib(budget), used_mib: mib(used), need_mib: mib(need) };
            if !may_evict {
                return Err(busy);
            }
            let victim = live
                .iter()
                .filter(|other| !std::ptr::eq(other.as_ref(), model) && other.evictable())
                .min_by_key(|other| other.last_used());
            if let Some(victim) = victim {
                victim.evict(model.name());
                continue;
            }
            let now = Instant::now();
            if now >= give_up {
                return Err(busy);
            }
            // Woken when a model goes idle; the timeout covers a wake-up sent just before
            // this wait began.
            let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
            let step = (give_up - now).min(Duration::from_millis(50));
            drop(self.changed.wait_timeout(models, step).unwrap_or_else(|e| e.into_inner()));
        }
    }
}

/// A load in progress (one at a time): what the process held and had used when it began.
pub struct Loading<'a> {
    _serial: MutexGuard<'a, ()>,
    resident_before: u64,
    cpu_before: Option<CpuSample>,
    started: Instant,
}

/// What a load measured: the memory it took and how busy the machine was meanwhile.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// The engine that runs the model.
    pub engine: &'static str,
    /// The batching measurement the load decided on, if it measured (or recalled) one.
    pub batching: Option<Measurement>,
    /// What the model is charged: the growth of the process's resident memory.
    pub resident_bytes: u64,
    /// The cores' worth of CPU other processes used while the model loaded, on average.
    pub others_busy_cores: f64,
    /// Whether the machine was quiet enough meanwhile for its measurements to be kept.
    pub quiet: bool,
    pub took: Duration,
}

impl Loading<'_> {
    /// The growth of resident memory since the load began (at least `floor`), the CPU others
    /// used meanwhile, and the time it took.
    pub(super) fn finish(&self, floor: u64) -> (u64, f64, Duration) {
        // What the load freed (an engine that lost `auto`'s choice, copies the engine made
        // on the way) is not the model's.
        cpu::return_free_memory();
        let grown = cpu::resident_bytes().saturating_sub(self.resident_before).max(floor);
        let others = match (self.cpu_before, CpuSample::now()) {
            (Some(before), Some(after)) => before.others_busy_cores(&after),
            _ => 0.0,
        };
        (grown, others, self.started.elapsed())
    }
}
