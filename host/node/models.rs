//! The models of a node: each loaded and optimized once (at start-up or when deployed),
//! behind its own scheduler (or, split into stages, behind one scheduler per stage), shared
//! by every route and instance that is granted it; and the ensembles over them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::info;

use crate::inference::backend::BackendKind;
use crate::inference::choice;
use crate::inference::hints;
use crate::inference::pipeline::{Pipeline, PipelineKind, StepSpec};
use crate::inference::scheduler::{CacheConfig, ModelScheduler, SchedulerConfig};
use crate::inference::served::ServedModel;
use crate::inference::split::{self, Cut};
use crate::node::config::{EnsembleConfig, ModelConfig, SplitConfig};
use crate::node::state::ModelSpec;
use crate::telemetry::metrics;

/// One loaded model: what callers compute through, and the settings it was loaded with.
#[derive(Clone)]
pub struct LoadedModel {
    pub served: ServedModel,
    pub spec: ModelSpec,
}

/// One ensemble: its pipeline, and the settings it was made from.
#[derive(Clone)]
pub struct LoadedEnsemble {
    pub served: ServedModel,
    pub config: EnsembleConfig,
}

/// All loaded models and ensembles, by name (one namespace). Cloning shares them.
#[derive(Clone, Default)]
pub struct Models {
    by_name: HashMap<String, LoadedModel>,
    ensembles: HashMap<String, LoadedEnsemble>,
}

impl Models {
    /// Loads the model `name` from `bytes` as `spec` says, and starts its executors (for a
    /// split model, each stage's).
    pub fn load(name: &str, spec: &ModelSpec, bytes: Vec<u8>) -> anyhow::Result<LoadedModel> {
        let bytes = hints::declare(bytes, &spec.settings.declarations())
            .with_context(|| format!("declaring the tensors of model {name:?} ({})", spec.file))?;
        let served = match &spec.settings.split {
            None => ServedModel::Single(Arc::new(start(name, spec, spec.settings.backend, None, bytes)?)),
            Some(split) => load_split(name, spec, split, bytes)?,
        };
        Ok(LoadedModel { served, spec: spec.clone() })
    }

    /// Adds (or replaces) a loaded model.
    pub fn insert(&mut self, name: String, model: LoadedModel) {
        self.by_name.insert(name, model);
    }

    /// Makes the ensemble `name` over the models loaded here; the error says which step or
    /// tensor does not fit.
    pub fn ensemble(&self, name: &str, config: &EnsembleConfig) -> anyhow::Result<LoadedEnsemble> {
        let steps = config
            .steps
            .iter()
            .enumerate()
            .map(|(index, step)| {
                let model = self.by_name.get(&step.model).with_context(|| {
                    format!("`steps[{index}].model`: no model named {:?} is loaded", step.model)
                })?;
                let (input_map, output_map) = (step.input_map.clone(), step.output_map.clone());
                Ok(StepSpec { model: model.served.clone(), input_map, output_map })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pipeline = Pipeline::new(name, PipelineKind::Ensemble, steps, &config.outputs)?;
        Ok(LoadedEnsemble { served: ServedModel::Pipeline(Arc::new(pipeline)), config: config.clone() })
    }

    /// Adds (or replaces) an ensemble.
    pub fn insert_ensemble(&mut self, name: String, ensemble: LoadedEnsemble) {
        self.ensembles.insert(name, ensemble);
    }

    /// The model or ensemble called `name`, if it is loaded.
    pub fn get(&self, name: &str) -> Option<&ServedModel> {
        match self.by_name.get(name) {
            Some(model) => Some(&model.served),
            None => self.ensembles.get(name).map(|ensemble| &ensemble.served),
        }
    }

    /// The model called `name` with its settings, if it is loaded.
    pub fn loaded(&self, name: &str) -> Option<&LoadedModel> {
        self.by_name.get(name)
    }

    /// The ensemble called `name` with its settings, if it is made.
    pub fn loaded_ensemble(&self, name: &str) -> Option<&LoadedEnsemble> {
        self.ensembles.get(name)
    }

    /// Every model and ensemble, by name in order.
    pub fn all(&self) -> Vec<&ServedModel> {
        let models = self.by_name.values().map(|m| &m.served);
        let mut all: Vec<&ServedModel> = models.chain(self.ensembles.values().map(|e| &e.served)).collect();
        all.sort_by_key(|model| model.name());
        all
    }
}

/// How one stage of a split model is scheduled differently from the whole model.
struct Stage {
    /// The stage's own executors, if set.
    executors: Option<usize>,
    /// Whether it is the first stage: the only one whose inputs are all the caller's.
    first: bool,
}

/// Loads one model (or one `stage` of a split model) with `kind` and starts its executors.
fn start(
    name: &str,
    spec: &ModelSpec,
    kind: BackendKind,
    stage: Option<Stage>,
    bytes: Vec<u8>,
) -> anyhow::Result<ModelScheduler> {
    let started = Instant::now();
    let backend =
        choice::load(name, kind, bytes).with_context(|| format!("loading model {name:?} ({})", spec.file))?;
    let mut scheduling = scheduler_config(spec, backend.on_gpu());
    if let Some(stage) = stage {
        if let Some(executors) = stage.executors {
            scheduling.executors = executors;
        }
        let signature = backend.signature();
        scheduling.pad_values.retain(|input, _| signature.inputs.iter().any(|spec| &spec.name == input));
        // Later stages take tensors the model made, whose padding the model never sees
        // masked: requests share a batch there only at equal lengths.
        if !stage.first {
            scheduling.max_padding_ratio = Some(0.0);
        }
    }
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
    Ok(scheduler)
}

/// Loads a model split into stages (model parallelism): each stage its own backend and
/// executors, chained by the tensors that cross each cut.
fn load_split(
    name: &str,
    spec: &ModelSpec,
    split: &SplitConfig,
    bytes: Vec<u8>,
) -> anyhow::Result<ServedModel> {
    let cut = match split.after.is_empty() {
        true => Cut::Stages(split.stage_count()),
        false => Cut::After(split.after.clone()),
    };
    let stages =
        split::split(&bytes, &cut).with_context(|| format!("splitting model {name:?} ({})", spec.file))?;
    drop(bytes);
    let mut steps = Vec::with_capacity(stages.models.len());
    for (index, (model, (first_node, last_node))) in stages.models.into_iter().zip(&stages.bounds).enumerate()
    {
        let stage_name = format!("{name}/stage{}", index + 1);
        info!(model = %name, stage = %stage_name, first_node = %first_node, last_node = %last_node, "model split");
        let kind = split.backends.get(index).map_or(spec.settings.backend, |backend| backend.0);
        let stage = Stage { executors: split.executors.get(index).copied(), first: index == 0 };
        let scheduler = start(&stage_name, spec, kind, Some(stage), model)?;
        // The tensors that cross a cut keep their names in the model: no map is needed.
        let (input_map, output_map) = Default::default();
        steps.push(StepSpec { model: ServedModel::Single(Arc::new(scheduler)), input_map, output_map });
    }
    Ok(ServedModel::Pipeline(Arc::new(Pipeline::new(name, PipelineKind::Split, steps, &stages.outputs)?)))
}

/// Default batch limits: a GPU is fed larger batches.
const CPU_MAX_BATCH: usize = 32;
const GPU_MAX_BATCH: usize = 128;

/// The scheduling knobs of a model's config. On a GPU one executor feeds the device with
/// large batches (that is what makes it fast); on the CPU, one executor per core.
pub fn scheduler_config<F>(config: &ModelConfig<F>, on_gpu: bool) -> SchedulerConfig {
    let config = &config.settings;
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
            max_bytes: usize::try_from(config.cache_max_bytes).unwrap_or(usize::MAX),
            time_to_live: Duration::from_millis(config.cache_ttl_ms),
            serve_stale_on_overload: config.serve_stale_on_overload,
        }),
    }
}

/// One executor per core: tract runs one inference on one thread.
pub fn default_executors() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
