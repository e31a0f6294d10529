//! A model's batch limit across its loads: decided at the first load (measured, or from a
//! remembered measurement) and kept for later ones; after a load the machine was too busy
//! to measure well, measured again once it is quiet.

use std::sync::{Arc, Weak};
use std::thread;
use std::time::Duration;

use tracing::{info, warn};

use super::{Residency, quiet};
use crate::inference::backend::Backend;
use crate::inference::batching::calibration::Measurement;
use crate::inference::batching::policy::{self, Batching};
use crate::telemetry::cpu::CpuSample;

/// How long a decision made on a noisy load waits for a quiet machine to be measured again.
const REVISIT_WAIT: Duration = Duration::from_secs(600);

/// How a model's batch limit is decided at its first load.
pub(super) struct BatchPlan {
    pub(super) batching: Batching,
    pub(super) max_batch_size: usize,
    pub(super) remembered: Option<Measurement>,
    pub(super) decided: bool,
    /// Whether the decision was measured (not recalled) at the last load.
    pub(super) measured_now: bool,
}

impl Residency {
    /// The batch limit, decided at the first load (measured, or from the remembered
    /// measurement) and kept for later ones; returns the measurement it was decided on.
    pub(super) fn decide_batching(&self, backend: &dyn Backend) -> anyhow::Result<Option<Measurement>> {
        let mut plan = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        plan.measured_now = false;
        if !plan.decided {
            let decision = policy::batch_limit(
                self.name(),
                &self.shared.signature,
                plan.batching,
                plan.max_batch_size,
                backend,
                plan.remembered.as_ref(),
            )?;
            self.shared.queue.set_max_batch_items(decision.limit);
            self.shared.metrics.max_batch_size.set(decision.limit as i64);
            plan.measured_now = plan.remembered.is_none() && decision.measured.is_some();
            plan.remembered = decision.measured;
            plan.decided = true;
        }
        Ok(plan.remembered.clone())
    }

    /// Measures batching again once the machine is quiet (for a second, other processes
    /// use at most half the cores), on a session of its own beside the
    /// executors, while the model is loaded; the log and `edge_infer_model_max_batch_size`
    /// say what it decided. For a decision a noisy load made: one bad moment does not decide
    /// for the life of the process.
    pub(super) fn revisit_when_quiet(self: &Arc<Self>, engine: Weak<dyn Backend>) {
        let residency = Arc::downgrade(self);
        let spawned = thread::Builder::new().name(format!("revisit-{}", self.name())).spawn(move || {
            for _ in 0..REVISIT_WAIT.as_secs() {
                let Some(before) = CpuSample::now() else { return };
                thread::sleep(Duration::from_secs(1));
                let Some(after) = CpuSample::now() else { return };
                if !quiet(before.others_busy_cores(&after)) {
                    continue;
                }
                if let (Some(residency), Some(engine)) = (residency.upgrade(), engine.upgrade()) {
                    residency.measure_batching_again(engine.as_ref());
                }
                return;
            }
        });
        if let Err(e) = spawned {
            warn!(model = %self.name(), "cannot start a thread to measure batching again: {e}");
        }
    }

    fn measure_batching_again(&self, backend: &dyn Backend) {
        let mut plan = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        let was = self.shared.queue.max_batch_items();
        let (name, signature) = (self.name(), &self.shared.signature);
        match policy::batch_limit(name, signature, plan.batching, plan.max_batch_size, backend, None) {
            Ok(decision) => {
                self.shared.queue.set_max_batch_items(decision.limit);
                self.shared.metrics.max_batch_size.set(decision.limit as i64);
                info!(model = %name, was, now = decision.limit, "batching measured again on a quiet machine");
                plan.remembered = decision.measured;
            }
            Err(e) => warn!(model = %name, "batching not measured again: {e:#}"),
        }
    }
}
