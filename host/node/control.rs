//! The control plane: every change to what the node serves — a route deployed, deleted or
//! rolled back, a model loaded or unloaded, the config file applied at start-up or on
//! SIGHUP — goes through `Node::change`, one at a time:
//!
//! 1. the desired state is edited (a copy; nothing serves it yet);
//! 2. a new [`Runtime`] is built from it beside the serving one: new models loaded and
//!    calibrated, new components compiled, their imports checked, one instance of each made;
//!    everything unchanged is reused as it is;
//! 3. the desired state is saved to the state folder (the commit point: a crash before it
//!    restarts on the old version, after it on the new);
//! 4. the new runtime is swapped in. Requests in flight finish on the version they started
//!    on, which is dropped when its last request ends.
//!
//! A change that fails at 1 or 2 changes nothing, and its error says why.
//!
//! Before a change, what it names is brought into the state folder ([`Node::fetch`]): a file
//! copied, an OCI artifact pulled (once per digest: a reference pinned by digest and already
//! pulled needs no registry), so a deployed version never depends on a registry again.
//!
//! The config file and the admin API both edit the desired state; the last word wins. The
//! file's entry for a route or model is applied when it differs from what the file said the
//! last time it was applied, so a restart with the same file keeps what the API deployed,
//! and an edited file (at restart or SIGHUP) deploys what it now says.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use anyhow::Context;
use serde::Serialize;
use tracing::{error, info, warn};

use crate::inference::backend;
use crate::node::config::{
    Config, EnsembleConfig, ModelConfig, RouteConfig, Source, check_model_name, check_route_name,
};
use crate::node::models::Models;
use crate::node::state::{DesiredState, Digest, ModelSpec, RouteRecord, RouteSpec, StateDir, StateError};
use crate::node::{Node, Route, Runtime, load_route};
use crate::oci::{ArtifactKind, OciError, OciReference, Registries};
use crate::request::memory::MemoryBudget;
use crate::telemetry::metrics::{self, RouteMetrics};

/// Why a change was not made. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No route or model by that name.
    #[error("{0}")]
    NotFound(String),
    /// The change contradicts what is deployed (a path taken, a model in use, nothing to roll
    /// back to).
    #[error("{0}")]
    Conflict(String),
    /// The settings are malformed or out of bounds.
    #[error("{0:#}")]
    Invalid(anyhow::Error),
    /// The new version did not load: not a component, imports refused, a model that fails
    /// to load, ...
    #[error("{0:#}")]
    Rejected(anyhow::Error),
    /// The state folder failed (or named an artifact that is not there).
    #[error(transparent)]
    State(#[from] StateError),
    /// An artifact could not be pulled from its registry, or is not what it should be.
    #[error(transparent)]
    Pull(#[from] OciError),
    /// The node is still loading what it serves.
    #[error("the node is still loading; retry shortly")]
    Loading,
}

/// What a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Replaced,
    Unchanged,
    Deleted,
    RolledBack,
}

/// A route as the admin API reports it.
#[derive(Debug, Serialize)]
pub struct RouteStatus {
    pub name: String,
    /// `serving`, or `draining` for a version replaced but still finishing requests.
    pub state: &'static str,
    pub component: Digest,
    /// Where the component was pulled from, pinned by digest (for an `oci://` source).
    pub source: Option<OciReference>,
    pub previous_component: Option<Digest>,
    pub settings: RouteSpec,
    pub in_flight: usize,
    pub waiting: usize,
    /// Replaced versions of this route still finishing requests.
    pub draining_versions: usize,
}

/// How the control plane works.
pub struct ControlSettings {
    /// Keep compiled components in wasmtime's on-disk cache.
    pub compilation_cache: bool,
    /// What callers of the admin API must present.
    pub admin_token: String,
    /// Largest artifact accepted, in bytes.
    pub max_artifact_bytes: u64,
    /// Whether the main listener takes model repository changes (with the token): when it
    /// is on the loopback interface, or the token was configured (not made by the node).
    pub repository_changes_on_main_listener: bool,
    /// Whether the gRPC listener takes them (with the token): as the main listener does.
    pub repository_changes_on_grpc_listener: bool,
    /// How to reach OCI registries for `oci://` sources.
    pub registries: Registries,
    /// The main listener's scheme (`http` or `https`) and port, reported to fleet tools.
    pub public_listener: (&'static str, u16),
}

/// The node's desired state and the folder that keeps it.
pub struct ControlPlane {
    state: StateDir,
    settings: ControlSettings,
    /// The node's memory budget, which the guests of the routes it builds are charged to.
    memory: Arc<MemoryBudget>,
    /// Held for the whole of a change: one at a time.
    changing: tokio::sync::Mutex<()>,
    /// The desired state as last saved.
    desired: Mutex<DesiredState>,
    /// Route versions replaced by a change, until their last request ends.
    retired: Mutex<Vec<Weak<Route>>>,
}

impl ControlPlane {
    pub(super) fn new(state: StateDir, settings: ControlSettings, memory: Arc<MemoryBudget>) -> ControlPlane {
        ControlPlane {
            state,
            settings,
            memory,
            changing: tokio::sync::Mutex::new(()),
            desired: Mutex::new(DesiredState::default()),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// The `read_only_dirs` of the route `name`'s current and previous versions: the folders
    /// the node's config gave it, which the admin API may restate but not change.
    pub fn read_only_dirs_of(&self, name: &str) -> Vec<BTreeMap<String, PathBuf>> {
        let desired = self.desired.lock().unwrap();
        let record = desired.routes.get(name);
        let versions =
            record.into_iter().flat_map(|record| [Some(&record.current), record.previous.as_ref()]);
        versions.flatten().map(|version| version.read_only_dirs.clone()).collect()
    }

    /// The main listener's scheme and port.
    pub fn public_listener(&self) -> (&'static str, u16) {
        self.settings.public_listener
    }

    /// The state folder (uploads go straight to it).
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Largest artifact accepted, in bytes.
    pub fn max_artifact_bytes(&self) -> u64 {
        self.settings.max_artifact_bytes
    }

    /// Whether the main listener takes model repository changes.
    pub fn repository_changes_on_main_listener(&self) -> bool {
        self.settings.repository_changes_on_main_listener
    }

    /// The models unloaded through the repository API, which a load by name brings back.
    pub fn unloaded_models(&self) -> Vec<String> {
        self.desired.lock().unwrap().unloaded.keys().cloned().collect()
    }

    /// Whether the gRPC listener takes model repository changes.
    pub fn repository_changes_on_grpc_listener(&self) -> bool {
        self.settings.repository_changes_on_grpc_listener
    }

    /// Whether `presented` is the admin token, compared in constant time.
    pub fn is_admin_token(&self, presented: &[u8]) -> bool {
        let expected = self.settings.admin_token.as_bytes();
        presented.len() == expected.len()
            && presented.iter().zip(expected).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
    }

    /// Builds the runtime `desired` describes, reusing from `serving` every model and route
    /// whose settings (and, for a route, models) are unchanged.
    async fn build(&self, desired: &DesiredState, serving: Option<&Runtime>) -> Result<Runtime, DeployError> {
        let mut models = Models::default();
        for (name, spec) in &desired.models {
            let reused = serving.and_then(|s| s.models.loaded(name)).filter(|loaded| loaded.spec == *spec);
            let loaded = match reused {
                Some(loaded) => loaded.clone(),
                None => {
                    spec.validate()
                        .map_err(|e| DeployError::Invalid(e.context(format!("model {name:?}"))))?;
                    let bytes = self.state.read(&spec.file)?;
                    tokio::task::block_in_place(|| Models::load(name, spec, bytes))
                        .map_err(DeployError::Rejected)?
                }
            };
            models.insert(name.clone(), loaded);
        }
        for (name, config) in &desired.ensembles {
            if models.get(name).is_some() {
                return Err(DeployError::Conflict(format!("ensemble {name:?} has the name of a model")));
            }
            // Unchanged, over the very models it was made on: kept, so the routes granted it
            // are kept too.
            let reused = serving.and_then(|s| s.models.loaded_ensemble(name)).filter(|ensemble| {
                ensemble.config == *config
                    && config.steps.iter().all(|step| {
                        let (old, new) =
                            (serving.and_then(|s| s.models.get(&step.model)), models.get(&step.model));
                        old.zip(new).is_some_and(|(old, new)| old.is(new))
                    })
            });
            let ensemble = match reused {
                Some(ensemble) => ensemble.clone(),
                None => models
                    .ensemble(name, config)
                    .map_err(|e| DeployError::Invalid(e.context(format!("ensemble {name:?}"))))?,
            };
            models.insert_ensemble(name.clone(), ensemble);
        }
        let mut routes = Vec::with_capacity(desired.routes.len());
        let mut paths: HashMap<&str, &str> = HashMap::new();
        for (name, record) in &desired.routes {
            let spec = &record.current;
            spec.validate(|model| models.get(model).is_some())
                .map_err(|e| DeployError::Invalid(e.context(format!("route {name:?}"))))?;
            if let Some(other) = paths.insert(&spec.path, name) {
                return Err(DeployError::Conflict(format!(
                    "routes {other:?} and {name:?} would both serve {}",
                    spec.path
                )));
            }
            let previous = serving.and_then(|s| s.route_named(name));
            let unchanged = previous.filter(|route| {
                route.spec == *spec
                    && route
                        .guest
                        .grant()
                        .models
                        .iter()
                        .all(|(model, old)| models.get(model).is_some_and(|m| m.is(old)))
            });
            if let Some(route) = unchanged {
                routes.push(route.clone());
                continue;
            }
            let same_limits = |route: &&Arc<Route>| {
                route.spec.max_concurrency == spec.max_concurrency && route.spec.max_queue == spec.max_queue
            };
            let admission = previous.filter(same_limits).map(|route| route.admission.clone());
            let component = self.state.read(&spec.component)?;
            let route = load_route(
                name,
                spec,
                &component,
                &models,
                admission,
                self.settings.compilation_cache,
                &self.memory,
            )
            .await
            .with_context(|| format!("route {name:?} ({})", spec.path))
            .map_err(DeployError::Rejected)?;
            routes.push(Arc::new(route));
        }
        Ok(Runtime { routes, models, oip_metrics: RouteMetrics::new("/v2") })
    }

    /// Every route now serving, with what it is doing.
    pub fn route_statuses(&self, runtime: &Runtime) -> Vec<RouteStatus> {
        let mut retired = self.retired.lock().unwrap();
        retired.retain(|route| route.strong_count() > 0);
        let draining: Vec<Arc<Route>> = retired.iter().filter_map(Weak::upgrade).collect();
        drop(retired);
        let desired = self.desired.lock().unwrap().clone();
        let source = |digest: &Digest| desired.sources.get(digest).cloned();
        let previous = |name: &str| {
            desired.routes.get(name).and_then(|r| r.previous.as_ref().map(|p| p.component.clone()))
        };
        let status = |route: &Arc<Route>, state, draining_versions| RouteStatus {
            name: route.name.clone(),
            state,
            component: route.spec.component.clone(),
            source: source(&route.spec.component),
            previous_component: previous(&route.name),
            settings: route.spec.clone(),
            in_flight: route.admission.in_use(),
            waiting: route.admission.waiting(),
            draining_versions,
        };
        let mut statuses: Vec<RouteStatus> = runtime
            .routes()
            .iter()
            .map(|route| {
                let versions = draining.iter().filter(|old| old.name == route.name).count();
                status(route, "serving", versions)
            })
            .collect();
        // A version of a route that is gone (deleted) but still finishing requests.
        for old in &draining {
            if runtime.route_named(&old.name).is_none() {
                statuses.push(status(old, "draining", 0));
            }
        }
        statuses
    }
}

impl Node {
    /// Loads what the node serves at start-up: the state folder's desired state, with the
    /// config file's changes applied.
    /// If the file cannot be applied to a saved state, the saved state is served as it is
    /// (and the error logged): a node that has served once never starts with nothing.
    pub async fn start(&self, config: &Config) -> anyhow::Result<()> {
        if let Some(library) = &config.server.onnxruntime_library {
            if !library.is_file() {
                warn!(library = %library.display(), "server.onnxruntime_library is not a file: models will not run on ONNX Runtime unless ORT_DYLIB_PATH names it");
            }
            backend::use_onnxruntime_library(library);
        }
        let saved = self.control.state.load()?;
        let first_start = saved == DesiredState::default();
        // What the folder holds is what fetching finds already pulled.
        *self.control.desired.lock().unwrap() = saved.clone();
        let applied = match self.fetch_config(config).await {
            Ok(file) => {
                self.change_from(Some(saved.clone()), "start-up", |desired| Ok(apply_config(desired, &file)))
                    .await
            }
            Err(error) => Err(error),
        };
        match applied {
            Ok(_) => Ok(()),
            Err(error) if first_start => Err(error.into()),
            Err(error) => {
                error!("the config file was not applied; serving what the state folder holds: {error}");
                self.change_from(Some(saved), "start-up (state folder)", |_| Ok(Outcome::Unchanged)).await?;
                Ok(())
            }
        }
    }

    /// Applies the config file's routes and models (on SIGHUP).
    pub async fn apply_config(&self, config: &Config) -> Result<Outcome, DeployError> {
        let file = self.fetch_config(config).await?;
        self.change("config file", |desired| Ok(apply_config(desired, &file))).await
    }

    /// Brings the artifact `source` names into the state folder: a file is copied; an OCI
    /// artifact is pulled (and checked to be `kind`), unless the reference pins a digest
    /// already pulled.
    pub async fn fetch(&self, source: &Source, kind: ArtifactKind) -> Result<Fetched, DeployError> {
        let state = &self.control.state;
        let stored = |digest: &Digest| Fetched { digest: digest.clone(), pinned: None };
        match source {
            Source::File(path) => Ok(stored(&tokio::task::block_in_place(|| state.import(path))?)),
            Source::Stored(digest) if state.claim(digest) => Ok(stored(digest)),
            Source::Stored(digest) => Err(StateError::UnknownArtifact(digest.clone()).into()),
            Source::Oci(reference) => {
                if let Some(manifest) = reference.digest() {
                    let pinned = reference.pinned(&manifest);
                    let desired = self.control.desired.lock().unwrap();
                    let pulled = desired.sources.iter().find(|(_, source)| **source == pinned);
                    if let Some((digest, _)) = pulled.filter(|(digest, _)| state.claim(digest)) {
                        return Ok(Fetched { digest: digest.clone(), pinned: Some(pinned) });
                    }
                }
                let limit = self.control.settings.max_artifact_bytes;
                let mut upload = state.upload(limit)?;
                let pinned =
                    self.control.settings.registries.pull(reference, kind, limit, &mut upload).await?;
                let digest = tokio::task::block_in_place(|| upload.finish())?;
                info!(%reference, %pinned, %digest, "pulled");
                Ok(Fetched { digest, pinned: Some(pinned) })
            }
        }
    }

    /// Fetches every file the config names, and returns its entries with the files named by
    /// digest.
    async fn fetch_config(&self, config: &Config) -> Result<FileEntries, DeployError> {
        let in_entry = |error: DeployError, entry: String| {
            DeployError::Invalid(anyhow::Error::new(error).context(entry))
        };
        let mut file = FileEntries::default();
        for (name, model) in &config.models {
            let fetched = self
                .fetch(&model.file, ArtifactKind::Model)
                .await
                .map_err(|e| in_entry(e, format!("model {name:?}")))?;
            file.models.insert(name.clone(), model.clone().with_file(fetched.keep_source(&mut file.sources)));
        }
        for route in &config.routes {
            let name = route.name();
            let fetched = self
                .fetch(&route.component, ArtifactKind::Component)
                .await
                .map_err(|e| in_entry(e, format!("route {name:?}")))?;
            let component = fetched.keep_source(&mut file.sources);
            file.routes.insert(name, RouteSpec { name: None, ..route.clone().with_component(component) });
        }
        file.ensembles = config.ensembles.clone();
        Ok(file)
    }

    /// Deploys `route` as the route `name`, with the `models` it brings (loaded or replaced),
    /// in one change: created, or replacing the version serving, which becomes the one to roll
    /// back to.
    pub async fn put_route(
        &self,
        name: &str,
        route: RouteConfig,
        models: BTreeMap<String, ModelConfig>,
    ) -> Result<Outcome, DeployError> {
        check_route_name(name).map_err(DeployError::Invalid)?;
        if route.name.as_ref().is_some_and(|named| named != name) {
            return Err(DeployError::Invalid(anyhow::anyhow!("the settings name another route")));
        }
        let mut model_specs = BTreeMap::new();
        let mut sources = BTreeMap::new();
        for (model, settings) in models {
            check_model_name(&model).map_err(DeployError::Invalid)?;
            let fetched = self.fetch(&settings.file, ArtifactKind::Model).await?;
            model_specs.insert(model, settings.with_file(fetched.keep_source(&mut sources)));
        }
        let fetched = self.fetch(&route.component, ArtifactKind::Component).await?;
        let spec = RouteSpec { name: None, ..route.with_component(fetched.keep_source(&mut sources)) };
        self.change(&format!("route {name}"), |desired| {
            desired.sources.extend(sources);
            let mut models_changed = false;
            for (model, spec) in model_specs {
                models_changed |= desired.models.get(&model) != Some(&spec);
                desired.models.insert(model, spec);
            }
            Ok(match desired.routes.get_mut(name) {
                Some(record) if record.current == spec && !models_changed => Outcome::Unchanged,
                Some(record) if record.current == spec => Outcome::Replaced,
                Some(record) => {
                    record.previous = Some(std::mem::replace(&mut record.current, spec));
                    Outcome::Replaced
                }
                None => {
                    desired.routes.insert(name.to_string(), RouteRecord { current: spec, previous: None });
                    Outcome::Created
                }
            })
        })
        .await
    }

    /// Stops serving the route `name`; its requests in flight finish.
    pub async fn delete_route(&self, name: &str) -> Result<Outcome, DeployError> {
        self.change(&format!("route {name}"), |desired| match desired.routes.remove(name) {
            Some(_) => Ok(Outcome::Deleted),
            None => Err(DeployError::NotFound(format!("no route named {name:?}"))),
        })
        .await
    }

    /// Serves the route's previous version again (and keeps the current one as the version
    /// to roll back to).
    pub async fn rollback_route(&self, name: &str) -> Result<Outcome, DeployError> {
        self.change(&format!("route {name}"), |desired| {
            let record = desired
                .routes
                .get_mut(name)
                .ok_or_else(|| DeployError::NotFound(format!("no route named {name:?}")))?;
            let previous = record
                .previous
                .take()
                .ok_or_else(|| DeployError::Conflict(format!("route {name:?} has no previous version")))?;
            record.previous = Some(std::mem::replace(&mut record.current, previous));
            Ok(Outcome::RolledBack)
        })
        .await
    }

    /// Loads the model `name` as `spec` says (replacing the version serving), or, with no
    /// `spec`, checks that it is loaded.
    pub async fn load_model(&self, name: &str, spec: Option<ModelSpec>) -> Result<Outcome, DeployError> {
        if let Some(spec) = &spec
            && !self.control.state.claim(&spec.file)
        {
            return Err(StateError::UnknownArtifact(spec.file.clone()).into());
        }
        self.set_model(name, spec, BTreeMap::new()).await
    }

    /// Loads the model `name` with `settings` (replacing the version serving), its file
    /// fetched first.
    pub async fn put_model(&self, name: &str, settings: ModelConfig) -> Result<Outcome, DeployError> {
        check_model_name(name).map_err(DeployError::Invalid)?;
        let mut sources = BTreeMap::new();
        let file = self.fetch(&settings.file, ArtifactKind::Model).await?.keep_source(&mut sources);
        self.set_model(name, Some(settings.with_file(file)), sources).await
    }

    /// Loads, replaces or (with no `spec`) checks the model `name`; `sources` says where its
    /// file was pulled from.
    async fn set_model(
        &self,
        name: &str,
        spec: Option<ModelSpec>,
        sources: BTreeMap<Digest, OciReference>,
    ) -> Result<Outcome, DeployError> {
        check_model_name(name).map_err(DeployError::Invalid)?;
        self.change(&format!("model {name}"), |desired| {
            if desired.ensembles.contains_key(name) {
                return Err(ensemble_named(name));
            }
            desired.sources.extend(sources);
            // Loading a model unloaded through the repository brings it back, as it was unless
            // new settings come with the load.
            let unloaded = desired.unloaded.remove(name);
            let spec = spec.or(unloaded);
            match (desired.models.get_mut(name), spec) {
                (Some(current), Some(spec)) if *current == spec => Ok(Outcome::Unchanged),
                (Some(current), Some(spec)) => {
                    *current = spec;
                    Ok(Outcome::Replaced)
                }
                (Some(_), None) => Ok(Outcome::Unchanged),
                (None, Some(spec)) => {
                    desired.models.insert(name.to_string(), spec);
                    Ok(Outcome::Created)
                }
                (None, None) => Err(DeployError::NotFound(format!(
                    "model {name:?} is not in the repository: send its file (and config) to load it"
                ))),
            }
        })
        .await
    }

    /// Deletes the model `name` (the admin API's `DELETE`), unless a route uses it; one
    /// unloaded through the repository is forgotten.
    pub async fn unload_model(&self, name: &str) -> Result<Outcome, DeployError> {
        self.remove_model(name, false).await
    }

    /// Unloads the model `name` as Triton's repository API does, unless a route uses it: it
    /// is no longer served, but it stays in the repository (`UNAVAILABLE` in its index) and a
    /// load by name brings it back.
    pub async fn unload_from_repository(&self, name: &str) -> Result<Outcome, DeployError> {
        self.remove_model(name, true).await
    }

    /// Stops serving the model `name`, keeping it loadable again if `keep_loadable`.
    async fn remove_model(&self, name: &str, keep_loadable: bool) -> Result<Outcome, DeployError> {
        self.change(&format!("model {name}"), |desired| {
            if desired.ensembles.contains_key(name) {
                return Err(ensemble_named(name));
            }
            if !desired.models.contains_key(name) {
                if !keep_loadable && desired.unloaded.remove(name).is_some() {
                    return Ok(Outcome::Deleted);
                }
                return Err(DeployError::NotFound(format!("no model named {name:?} is loaded")));
            }
            let users: Vec<&str> = desired
                .routes
                .iter()
                .filter(|(_, record)| record.current.models.iter().any(|model| model == name))
                .map(|(route, _)| route.as_str())
                .collect();
            if !users.is_empty() {
                return Err(DeployError::Conflict(format!(
                    "model {name:?} is used by route(s) {users:?}: change or delete them first"
                )));
            }
            let ensembles: Vec<&str> = desired
                .ensembles
                .iter()
                .filter(|(_, ensemble)| ensemble.steps.iter().any(|step| step.model == name))
                .map(|(ensemble, _)| ensemble.as_str())
                .collect();
            if !ensembles.is_empty() {
                return Err(DeployError::Conflict(format!(
                    "model {name:?} is a step of ensemble(s) {ensembles:?}: change the config file first"
                )));
            }
            let spec = desired.models.remove(name).expect("checked above");
            if keep_loadable {
                desired.unloaded.insert(name.to_string(), spec);
            }
            Ok(Outcome::Deleted)
        })
        .await
    }

    /// Makes one change: edits a copy of the desired state, builds it, saves it, swaps it in.
    async fn change(
        &self,
        what: &str,
        edit: impl FnOnce(&mut DesiredState) -> Result<Outcome, DeployError>,
    ) -> Result<Outcome, DeployError> {
        self.change_from(None, what, edit).await
    }

    /// [`Node::change`], starting from `base` instead of the desired state when given;
    /// counted in the metrics.
    async fn change_from(
        &self,
        base: Option<DesiredState>,
        what: &str,
        edit: impl FnOnce(&mut DesiredState) -> Result<Outcome, DeployError>,
    ) -> Result<Outcome, DeployError> {
        let result = self.make_change(base, what, edit).await;
        metrics::deploy(match &result {
            Ok(Outcome::Unchanged) => "unchanged",
            Ok(_) => "applied",
            Err(_) => "refused",
        });
        result
    }

    async fn make_change(
        &self,
        base: Option<DesiredState>,
        what: &str,
        edit: impl FnOnce(&mut DesiredState) -> Result<Outcome, DeployError>,
    ) -> Result<Outcome, DeployError> {
        let control = &self.control;
        let _turn = control.changing.lock().await;
        // Before start-up has loaded the saved state, there is nothing to change yet.
        if base.is_none() && self.runtime().is_none() {
            return Err(DeployError::Loading);
        }
        let saved = control.desired.lock().unwrap().clone();
        let mut next = base.unwrap_or_else(|| saved.clone());
        let outcome = edit(&mut next)?;
        // Where the artifacts still named were pulled from.
        let artifacts = next.artifacts();
        next.sources.retain(|digest, _| artifacts.contains(digest));
        let serving = self.runtime();
        if next == saved && serving.is_some() {
            return Ok(Outcome::Unchanged);
        }
        let runtime = control.build(&next, serving.as_deref()).await?;
        info!(change = what, "deploy built");
        let after_start_up = serving.is_some();
        crash_point(after_start_up, "built");
        control.state.save(&next)?;
        info!(change = what, "deploy saved");
        crash_point(after_start_up, "saved");
        if let Some(serving) = &serving {
            let mut retired = control.retired.lock().unwrap();
            retired.retain(|route| route.strong_count() > 0);
            for route in serving.routes() {
                if !runtime.routes.iter().any(|kept| Arc::ptr_eq(kept, route)) {
                    retired.push(Arc::downgrade(route));
                }
            }
        }
        drop(serving);
        self.swap(runtime);
        control.state.release(saved.artifacts().difference(&artifacts).cloned());
        control.state.collect_garbage(&artifacts);
        *control.desired.lock().unwrap() = next;
        info!(change = what, ?outcome, "deploy serving");
        crash_point(after_start_up, "serving");
        Ok(outcome)
    }
}

/// The refusal of an API change to the ensemble `name`: ensembles are the config file's.
fn ensemble_named(name: &str) -> DeployError {
    DeployError::Conflict(format!(
        "{name:?} is an ensemble: ensembles come from the config file; change it there"
    ))
}

/// For testing crash safety: with `EDGE_INFER_CRASH_AT` set to `built`, `saved` or
/// `serving`, the process aborts (no clean-up at all, as under `kill -9`) right after that
/// step of a change made after start-up.
fn crash_point(after_start_up: bool, step: &str) {
    static CRASH_AT: LazyLock<Option<String>> = LazyLock::new(|| std::env::var("EDGE_INFER_CRASH_AT").ok());
    if after_start_up && CRASH_AT.as_deref() == Some(step) {
        // Straight to stderr: the log's writer thread would not write the line before the abort.
        eprintln!("EDGE_INFER_CRASH_AT={step}: aborting");
        std::process::abort();
    }
}

/// The config file's routes and models, their files fetched into the state folder.
#[derive(Default)]
struct FileEntries {
    models: BTreeMap<String, ModelSpec>,
    routes: BTreeMap<String, RouteSpec>,
    ensembles: BTreeMap<String, EnsembleConfig>,
    /// Where the files pulled from registries came from.
    sources: BTreeMap<Digest, OciReference>,
}

/// An artifact brought into the state folder.
pub struct Fetched {
    pub digest: Digest,
    /// The reference it was pulled from, pinned by digest (none for a file or an upload).
    pub pinned: Option<OciReference>,
}

impl Fetched {
    /// The digest, noting in `sources` where it was pulled from.
    fn keep_source(self, sources: &mut BTreeMap<Digest, OciReference>) -> Digest {
        if let Some(pinned) = self.pinned {
            sources.insert(self.digest.clone(), pinned);
        }
        self.digest
    }
}

/// Applies the config file to `desired`: each route and model whose entry in the file
/// changed since the file was last applied is deployed as the file says; those the file
/// dropped are removed, unless the API has replaced them since. An entry the file still
/// gives unchanged is left as the API made it (replaced, or deleted).
fn apply_config(desired: &mut DesiredState, file: &FileEntries) -> Outcome {
    let before = desired.clone();
    let applied = &mut desired.config_applied;
    for (name, spec) in changed_entries(&mut applied.models, &file.models, &mut desired.models, |model| model)
    {
        desired.unloaded.remove(&name);
        desired.models.insert(name, spec);
    }
    for (name, ensemble) in
        changed_entries(&mut applied.ensembles, &file.ensembles, &mut desired.ensembles, |ensemble| ensemble)
    {
        desired.ensembles.insert(name, ensemble);
    }
    for (name, spec) in
        changed_entries(&mut applied.routes, &file.routes, &mut desired.routes, |r| &r.current)
    {
        match desired.routes.get_mut(&name) {
            Some(record) if record.current == spec => {}
            Some(record) => record.previous = Some(std::mem::replace(&mut record.current, spec)),
            None => drop(desired.routes.insert(name, RouteRecord { current: spec, previous: None })),
        }
    }
    let outcome = if *desired == before { Outcome::Unchanged } else { Outcome::Replaced };
    desired.sources.extend(file.sources.clone());
    outcome
}

/// Compares the file's entries with what the file said when it was last applied
/// (`applied`, updated to the file): returns the entries that are new or changed in the
/// file, and removes from `deployed` the entries the file dropped that are still as the file
/// gave them (`version` finds an entry's settings).
fn changed_entries<S: Serialize + Clone, R>(
    applied: &mut BTreeMap<String, Digest>,
    file: &BTreeMap<String, S>,
    deployed: &mut BTreeMap<String, R>,
    version: impl Fn(&R) -> &S,
) -> Vec<(String, S)> {
    let dropped: Vec<(String, Digest)> = applied
        .iter()
        .filter(|(name, _)| !file.contains_key(*name))
        .map(|(n, d)| (n.clone(), d.clone()))
        .collect();
    for (name, digest) in dropped {
        applied.remove(&name);
        if deployed.get(&name).is_some_and(|entry| digest_of(version(entry)) == digest) {
            deployed.remove(&name);
        }
    }
    let mut changed = Vec::new();
    for (name, spec) in file {
        let digest = digest_of(spec);
        if applied.get(name) != Some(&digest) {
            applied.insert(name.clone(), digest);
            changed.push((name.clone(), spec.clone()));
        }
    }
    changed
}

/// The digest of a setting's canonical JSON.
fn digest_of<T: Serialize>(value: &T) -> Digest {
    Digest::of(&serde_json::to_vec(value).expect("settings serialize"))
}

/// The admin token's file in the state folder, when the node makes it.
const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Shortest admin token accepted.
const MIN_TOKEN_CHARS: usize = 16;

/// The admin token: read from `file` if given, else the one in the state folder, else made at
/// random and written there (owner-only). Returns the token and, when made, where it was
/// written.
pub fn admin_token(file: Option<&Path>, state: &StateDir) -> anyhow::Result<(String, Option<PathBuf>)> {
    let read = |file: &Path| -> anyhow::Result<String> {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("reading the admin token file {}", file.display()))?
            .trim()
            .to_string();
        anyhow::ensure!(
            token.len() >= MIN_TOKEN_CHARS,
            "the admin token in {} is shorter than {MIN_TOKEN_CHARS} characters",
            file.display()
        );
        Ok(token)
    };
    if let Some(file) = file {
        return Ok((read(file)?, None));
    }
    let kept = state.root().join(ADMIN_TOKEN_FILE);
    if kept.is_file() {
        return Ok((read(&kept)?, None));
    }
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut source| std::io::Read::read_exact(&mut source, &mut random))
        .context("reading /dev/urandom for an admin token")?;
    let token: String = random.iter().map(|byte| format!("{byte:02x}")).collect();
    let path = state.write_private(ADMIN_TOKEN_FILE, token.as_bytes())?;
    Ok((token, Some(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config file with route `a` (capped at `a_cap`) and, if `with_b`, route `b`, its
    /// files imported into `state`.
    fn file(folder: &Path, state: &StateDir, a_cap: usize, with_b: bool) -> FileEntries {
        std::fs::write(folder.join("a.wasm"), b"component a").unwrap();
        std::fs::write(folder.join("b.wasm"), b"component b").unwrap();
        let mut text =
            format!("[[routes]]\npath = \"/a\"\ncomponent = \"a.wasm\"\nmax_concurrency = {a_cap}\n");
        if with_b {
            text.push_str("[[routes]]\npath = \"/b\"\ncomponent = \"b.wasm\"\n");
        }
        entries(Config::from_toml(&text, folder).unwrap(), state)
    }

    fn entries(config: Config, state: &StateDir) -> FileEntries {
        let import = |source: &Source| match source {
            Source::File(path) => state.import(path).unwrap(),
            _ => unreachable!("the test files name paths"),
        };
        FileEntries {
            models: config
                .models
                .into_iter()
                .map(|(n, m)| (n, m.clone().with_file(import(&m.file))))
                .collect(),
            routes: config
                .routes
                .iter()
                .map(|r| {
                    (r.name(), RouteSpec { name: None, ..r.clone().with_component(import(&r.component)) })
                })
                .collect(),
            ensembles: config.ensembles,
            sources: BTreeMap::new(),
        }
    }

    #[test]
    fn the_last_word_wins_between_the_file_and_the_api() {
        let folder = tempfile::tempdir().unwrap();
        let state = StateDir::open(&folder.path().join("state")).unwrap();
        let mut desired = DesiredState::default();
        let apply = |desired: &mut DesiredState, file: &FileEntries| apply_config(desired, file);

        assert_eq!(apply(&mut desired, &file(folder.path(), &state, 1, true)), Outcome::Replaced);
        assert_eq!(desired.routes.keys().collect::<Vec<_>>(), ["a", "b"]);

        // The API deletes a and changes b; the same file again undoes neither.
        desired.routes.remove("a");
        desired.routes.get_mut("b").unwrap().current.max_concurrency = 9;
        assert_eq!(apply(&mut desired, &file(folder.path(), &state, 1, true)), Outcome::Unchanged);
        assert!(!desired.routes.contains_key("a"));
        assert_eq!(desired.routes["b"].current.max_concurrency, 9);

        // The file's entry for a changes: the file's new word brings it back.
        apply(&mut desired, &file(folder.path(), &state, 2, true));
        assert_eq!(desired.routes["a"].current.max_concurrency, 2);

        // The file drops b, which the API changed since: it stays. Then the file drops a,
        // still as the file gave it: it goes.
        apply(&mut desired, &file(folder.path(), &state, 2, false));
        assert_eq!(desired.routes["b"].current.max_concurrency, 9);
        apply(&mut desired, &FileEntries::default());
        assert_eq!(desired.routes.keys().collect::<Vec<_>>(), ["b"]);
        assert!(desired.config_applied.routes.is_empty());
    }

    #[test]
    fn a_changed_file_entry_keeps_the_version_it_replaces_for_rollback() {
        let folder = tempfile::tempdir().unwrap();
        let state = StateDir::open(&folder.path().join("state")).unwrap();
        let mut desired = DesiredState::default();
        apply_config(&mut desired, &file(folder.path(), &state, 1, false));
        apply_config(&mut desired, &file(folder.path(), &state, 5, false));
        let record = &desired.routes["a"];
        assert_eq!(
            (record.current.max_concurrency, record.previous.as_ref().unwrap().max_concurrency),
            (5, 1)
        );
    }
}
