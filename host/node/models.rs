//! The models of a node: each loaded and optimized once (at start-up or when deployed),
//! behind its own scheduler, shared by every route and instance that is granted it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::info;

use crate::inference::backend;
use crate::inference::scheduler::{CacheConfig, ModelScheduler, SchedulerConfig};
use crate::node::config::ModelConfig;
use crate::node::state::ModelSpec;
use crate::telemetry::metrics;

/// One loaded model: its scheduler, and the settings it was loaded with.
#[derive(Clone)]
pub struct LoadedModel {
    pub scheduler: Arc<ModelScheduler>,
    pub spec: ModelSpec,
}

/// All loaded models, by name. Cloning shares the models.
#[derive(Clone, Default)]
pub struct Models {
    by_name: HashMap<String, LoadedModel>,
}

impl Models {
    /// Loads the model `name` from `bytes` as `spec` says, and starts its executors.
    pub fn load(name: &str, spec: &ModelSpec, bytes: Vec<u8>) -> anyhow::Result<LoadedModel> {
        let started = Instant::now();
        let backend = backend::load(name, spec.backend, bytes)
            .with_context(|| format!("loading model {name:?} ({})", spec.file))?;
        let scheduling = scheduler_config(spec, backend.on_gpu());
        let backend_name = backend.name();
        let scheduler = ModelScheduler::start(name, Arc::from(backend), &scheduling)?;
        metrics::model_backend(name, backend_name);
        info!(
            model = %name,
            backend = backend_name,
            executors = scheduling.executors,
            max_batch = scheduler.max_batch_items(),
            max_padding = scheduler.max_padding_ratio(),
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(LoadedModel { scheduler: Arc::new(scheduler), spec: spec.clone() })
    }

    /// Adds (or replaces) a loaded model.
    pub fn insert(&mut self, name: String, model: LoadedModel) {
        self.by_name.insert(name, model);
    }

    /// The model called `name`, if it is loaded.
    pub fn get(&self, name: &str) -> Option<&Arc<ModelScheduler>> {
        self.by_name.get(name).map(|model| &model.scheduler)
    }

    /// The model called `name` with its settings, if it is loaded.
    pub fn loaded(&self, name: &str) -> Option<&LoadedModel> {
        self.by_name.get(name)
    }

    /// Every model, by name in order.
    pub fn all(&self) -> Vec<&ModelScheduler> {
        let mut models: Vec<&ModelScheduler> = self.by_name.values().map(|m| m.scheduler.as_ref()).collect();
        models.sort_by_key(|model| model.name());
        models
    }
}

/// Default batch limits: a GPU is fed larger batches.
const CPU_MAX_BATCH: usize = 32;
const GPU_MAX_BATCH: usize = 128;

/// The scheduling knobs of a model's config. On a GPU one executor feeds the device with
/// large batches (that is what makes it fast); on the CPU, one executor per core.
pub fn scheduler_config<F>(config: &ModelConfig<F>, on_gpu: bool) -> SchedulerConfig {
    SchedulerConfig {
        executors: config.executors.unwrap_or_else(|| if on_gpu { 1 } else { default_executors() }),
        queue_capacity: config.queue_capacity,
        batching: config.batching,
        max_batch_size: config.max_batch_size.unwrap_or(if on_gpu { GPU_MAX_BATCH } else { CPU_MAX_BATCH }),
        max_queue_delay: Duration::from_micros(config.max_queue_delay_us),
        queue_delay: config.queue_delay,
        max_padding_ratio: config.max_padding_ratio,
        pad_values: config.pad_values.clone(),
        cache: (config.cache_entries > 0).then(|| CacheConfig {
            entries: config.cache_entries,
            time_to_live: Duration::from_millis(config.cache_ttl_ms),
            serve_stale_on_overload: config.serve_stale_on_overload,
        }),
    }
}

/// One executor per core: tract runs one inference on one thread.
pub fn default_executors() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
