//! The models of a node: each behind its own scheduler (or, split into stages, behind one
//! scheduler per stage), shared by every route and instance that is granted it; and the
//! ensembles over them.
//!
//! A model new to the node (or to this machine) is loaded, measured and optimized when it is
//! deployed, and what that measured is remembered ([`Measurements`]). A model measured before
//! starts from what was remembered: a pinned one is loaded before the node is ready, with no
//! measuring; the others load in the background once the node serves, or on first use. Under
//! `server.model_memory_mib`, models are loaded and evicted as [`ModelMemory`] says.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::inference::backend::{Backend, BackendKind};
use crate::inference::choice;
use crate::inference::hints;
use crate::inference::measurements::{Measurements, Remembered};
use crate::inference::pipeline::{Pipeline, PipelineKind, StepSpec};
use crate::inference::residency::{LoadCause, Loader, ModelMemory, Residence, State};
use crate::inference::scheduler::{CacheConfig, ModelScheduler, SchedulerConfig};
use crate::inference::served::ServedModel;
use crate::inference::split::{self, Cut};
use crate::node::config::{EnsembleConfig, ModelConfig, SplitConfig};
use crate::node::digest::Digest;
use crate::node::state::{ArtifactReader, ModelSpec};
use crate::telemetry::metrics;

/// Where models are charged and what is remembered of them, for loading a model.
#[derive(Clone)]
pub struct LoadContext {
    pub memory: Arc<ModelMemory>,
    pub measurements: Arc<Measurements>,
}

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
    /// Loads the model `name` from its file (which `reader` reads, now or after an eviction)
    /// as `spec` says, and starts its executors (for a split model, each stage's); or, for an
    /// unpinned model measured before, makes its scheduler to load later, without reading
    /// its file.
    pub fn load(
        name: &str,
        spec: &ModelSpec,
        reader: ArtifactReader,
        context: &LoadContext,
    ) -> anyhow::Result<LoadedModel> {
        let read = |reader: &ArtifactReader| -> anyhow::Result<Vec<u8>> {
            hints::declare(reader.read()?, &spec.settings.declarations())
                .with_context(|| format!("declaring the tensors of model {name:?} ({})", spec.file))
        };
        let served = match &spec.settings.split {
            None => {
                let identity = identity(spec, None);
                let least_bytes = reader.size()?;
                let file = || read(&reader);
                let model =
                    Model { name, spec, kind: spec.settings.backend, stage: None, identity: &identity };
                let reload = reloader(reader.clone(), spec.settings.declarations());
                ServedModel::Single(Arc::new(model.start(file, least_bytes, Some(reload), context)?))
            }
            Some(split) => load_split(name, spec, split, read(&reader)?, context)?,
        };
        Ok(LoadedModel { served, spec: spec.clone() })
    }

    /// Loads every model that is not loaded, one at a time in the order of their names, on
    /// a thread of its own, as room allows (a request's load goes first).
    pub fn load_in_background(&self) {
        let models = self.clone();
        let spawned = std::thread::Builder::new().name("background-loads".into()).spawn(move || {
            let mut names: Vec<&String> = models.by_name.keys().collect();
            names.sort();
            for model in names.into_iter().map(|name| &models.by_name[name]) {
                for scheduler in model.served.schedulers() {
                    if scheduler.residency() == State::NotLoaded {
                        scheduler.load_in_background();
                    }
                }
            }
        });
        if let Err(e) = spawned {
            warn!("cannot start the thread that loads models in the background: {e}");
        }
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

/// One model (or one stage of a split model) to start.
struct Model<'a> {
    name: &'a str,
    spec: &'a ModelSpec,
    kind: BackendKind,
    stage: Option<Stage>,
    /// What its measurements are remembered by.
    identity: &'a str,
}

/// What its measurements are remembered by: the model's file and every setting (any change
/// measures again), and the stage of a split model.
fn identity(spec: &ModelSpec, stage: Option<usize>) -> String {
    let settings = serde_json::to_vec(&spec.settings).expect("model settings serialize");
    let stage = stage.map_or(String::new(), |index| format!(" stage {}", index + 1));
    format!("{} settings {}{stage}", spec.file, Digest::of(&settings))
}

/// Loads the model's engine again from its file: the same declarations, the engine named.
fn reloader(reader: ArtifactReader, declarations: hints::Declarations) -> Loader {
    Arc::new(move |engine| {
        let bytes = reader.read()?;
        let bytes = hints::declare(bytes, &declarations)?;
        choice::load_engine(engine, bytes)
    })
}

impl Model<'_> {
    /// Starts the model: from what was remembered of it if anything was (loaded now only
    /// if pinned), else loaded, measured and remembered now. `reload` loads it again after
    /// an eviction; without one (a stage of a split model), it is pinned.
    fn start(
        self,
        file: impl FnOnce() -> anyhow::Result<Vec<u8>>,
        least_bytes: u64,
        reload: Option<Loader>,
        context: &LoadContext,
    ) -> anyhow::Result<ModelScheduler> {
        let name = self.name;
        let pinned = self.spec.settings.pinned || reload.is_none();
        let reload: Loader =
            reload.unwrap_or_else(|| Arc::new(|_| anyhow::bail!("a stage of a split model stays loaded")));
        let mut file = Some(file);
        let mut bytes =
            || file.take().map_or_else(|| anyhow::bail!("the model's file is read once"), |read| read());
        let residence = |remembered: Option<&Remembered>, loader| Residence {
            memory: context.memory.clone(),
            pinned,
            loader,
            expected_bytes: remembered.map_or(0, |r| r.resident_bytes),
            least_bytes,
            remembered_batching: remembered.and_then(|r| r.batching.clone()),
        };
        let remembered = context.measurements.recall(self.identity);
        if let Some(remembered) = &remembered
            && let Some(engine) = choice::engine_named(&remembered.engine)
        {
            let inputs = remembered.signature.inputs.iter().map(|spec| spec.name.as_str());
            let scheduling = self.scheduling(inputs, engine == "ort-cuda");
            let scheduler = ModelScheduler::unloaded(
                name,
                remembered.signature.clone(),
                engine,
                &scheduling,
                residence(Some(remembered), reload.clone()),
            )?;
            let loaded = match pinned {
                false => Ok(()),
                true => {
                    let loading = context.memory.begin_load();
                    bytes()
                        .and_then(|bytes| choice::load_engine(engine, bytes))
                        .and_then(|backend| scheduler.load_now(LoadCause::Start, Some((backend, loading))))
                        .map(drop)
                }
            };
            match loaded {
                Ok(()) => {
                    metrics::model_backend(name, engine);
                    info!(
                        model = %name,
                        backend = engine,
                        candidates = remembered.candidates.as_deref().unwrap_or("-"),
                        pinned,
                        "model measured on an earlier start: its choices are remembered"
                    );
                    return Ok(scheduler);
                }
                Err(reason) => {
                    warn!(model = %name, "the engine chosen on an earlier start cannot load it ({reason:#}); measuring again");
                }
            }
        }
        let loading = context.memory.begin_load();
        let chosen = choice::load(name, self.kind, bytes()?)
            .with_context(|| format!("loading model {name:?} ({})", self.spec.file))?;
        let backend: Box<dyn Backend> = chosen.backend;
        let inputs = backend.signature().inputs.iter().map(|spec| spec.name.as_str());
        let scheduling = self.scheduling(inputs, backend.on_gpu());
        let engine = backend.name();
        let residence = residence(None, reload);
        let (scheduler, report) = ModelScheduler::loaded(name, backend, loading, &scheduling, residence)?;
        metrics::model_backend(name, engine);
        if report.quiet {
            let measured = Remembered {
                signature: scheduler.signature().clone(),
                engine: engine.to_string(),
                candidates: chosen.candidates,
                batching: report.batching,
                resident_bytes: report.resident_bytes,
            };
            context.measurements.remember(self.identity, measured);
        }
        Ok(scheduler)
    }

    /// Its scheduling knobs, for a model of `inputs` (pad values for other inputs are
    /// dropped for a stage) on a GPU or not.
    fn scheduling<'i>(&self, inputs: impl Iterator<Item = &'i str> + Clone, on_gpu: bool) -> SchedulerConfig {
        let mut scheduling = scheduler_config(self.spec, on_gpu);
        if let Some(stage) = &self.stage {
            if let Some(executors) = stage.executors {
                scheduling.executors = executors;
            }
            scheduling.pad_values.retain(|input, _| inputs.clone().any(|name| name == input));
            // Later stages take tensors the model made, whose padding the model never sees
            // masked: requests share a batch there only at equal lengths.
            if !stage.first {
                scheduling.max_padding_ratio = Some(0.0);
            }
        }
        scheduling
    }
}

/// Loads a model split into stages (model parallelism): each stage its own backend and
/// executors, chained by the tensors that cross each cut.
fn load_split(
    name: &str,
    spec: &ModelSpec,
    split: &SplitConfig,
    bytes: Vec<u8>,
    context: &LoadContext,
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
        let identity = identity(spec, Some(index));
        let stage_model = Model { name: &stage_name, spec, kind, stage: Some(stage), identity: &identity };
        let least_bytes = model.len() as u64;
        let scheduler = stage_model.start(|| Ok(model), least_bytes, None, context)?;
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
