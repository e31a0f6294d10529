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
//! The config file and the admin API both edit the desired state; the last word wins. The
//! file's entry for a route or model is applied when it differs from what the file said the
//! last time it was applied, so a restart with the same file keeps what the API deployed,
//! and an edited file (at restart or SIGHUP) deploys what it now says.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use anyhow::Context;
use serde::Serialize;
use tracing::info;

use crate::node::config::{Config, check_model_name, check_route_name};
use crate::node::models::Models;
use crate::node::state::{
    DesiredState, Digest, ModelRecord, ModelSpec, RouteRecord, RouteSpec, StateDir, StateError,
};
use crate::node::{Node, Route, Runtime, load_route};
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
}

/// The node's desired state and the folder that keeps it.
pub struct ControlPlane {
    state: StateDir,
    settings: ControlSettings,
    /// Held for the whole of a change: one at a time.
    changing: tokio::sync::Mutex<()>,
    /// The desired state as last saved.
    desired: Mutex<DesiredState>,
    /// Route versions replaced by a change, until their last request ends.
    retired: Mutex<Vec<Weak<Route>>>,
}

impl ControlPlane {
    pub(super) fn new(state: StateDir, settings: ControlSettings) -> ControlPlane {
        ControlPlane {
            state,
            settings,
            changing: tokio::sync::Mutex::new(()),
            desired: Mutex::new(DesiredState::default()),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// The state folder (uploads go straight to it).
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Largest artifact accepted, in bytes.
    pub fn max_artifact_bytes(&self) -> u64 {
        self.settings.max_artifact_bytes
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
        for (name, record) in &desired.models {
            let spec = &record.current;
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
                        .granted
                        .iter()
                        .all(|(model, old)| models.get(model).is_some_and(|m| Arc::ptr_eq(m, old)))
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
            let route =
                load_route(name, spec, &component, &models, admission, self.settings.compilation_cache)
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
        let previous = |name: &str| {
            desired.routes.get(name).and_then(|r| r.previous.as_ref().map(|p| p.component.clone()))
        };
        let status = |route: &Arc<Route>, state, draining_versions| RouteStatus {
            name: route.name.clone(),
            state,
            component: route.spec.component.clone(),
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
    pub async fn start(&self, config: &Config) -> anyhow::Result<()> {
        let saved = self.control.state.load()?;
        self.change_from(Some(saved), "start-up", |desired, state| apply_config(desired, config, state))
            .await?;
        Ok(())
    }

    /// Applies the config file's routes and models (on SIGHUP).
    pub async fn apply_config(&self, config: &Config) -> Result<Outcome, DeployError> {
        self.change("config file", |desired, state| apply_config(desired, config, state)).await
    }

    /// Deploys `spec` as the route `name`: created, or replacing the version serving, which
    /// becomes the one to roll back to.
    pub async fn put_route(&self, name: &str, spec: RouteSpec) -> Result<Outcome, DeployError> {
        check_route_name(name).map_err(DeployError::Invalid)?;
        if spec.name.as_ref().is_some_and(|named| named != name) {
            return Err(DeployError::Invalid(anyhow::anyhow!("the settings name another route")));
        }
        let spec = RouteSpec { name: None, ..spec };
        if !self.control.state.has(&spec.component) {
            return Err(StateError::UnknownArtifact(spec.component).into());
        }
        self.change(&format!("route {name}"), |desired, _| {
            Ok(match desired.routes.get_mut(name) {
                Some(record) if record.current == spec => Outcome::Unchanged,
                Some(record) => {
                    record.previous = Some(std::mem::replace(&mut record.current, spec));
                    Outcome::Replaced
                }
                None => {
                    desired.routes.insert(
                        name.to_string(),
                        RouteRecord { current: spec, previous: None, from_config: None },
                    );
                    Outcome::Created
                }
            })
        })
        .await
    }

    /// Stops serving the route `name`; its requests in flight finish.
    pub async fn delete_route(&self, name: &str) -> Result<Outcome, DeployError> {
        self.change(&format!("route {name}"), |desired, _| match desired.routes.remove(name) {
            Some(_) => Ok(Outcome::Deleted),
            None => Err(DeployError::NotFound(format!("no route named {name:?}"))),
        })
        .await
    }

    /// Serves the route's previous version again (and keeps the current one as the version
    /// to roll back to).
    pub async fn rollback_route(&self, name: &str) -> Result<Outcome, DeployError> {
        self.change(&format!("route {name}"), |desired, _| {
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
        check_model_name(name).map_err(DeployError::Invalid)?;
        if let Some(spec) = &spec
            && !self.control.state.has(&spec.file)
        {
            return Err(StateError::UnknownArtifact(spec.file.clone()).into());
        }
        self.change(&format!("model {name}"), |desired, _| match (desired.models.get_mut(name), spec) {
            (Some(record), Some(spec)) if record.current == spec => Ok(Outcome::Unchanged),
            (Some(record), Some(spec)) => {
                record.current = spec;
                Ok(Outcome::Replaced)
            }
            (Some(_), None) => Ok(Outcome::Unchanged),
            (None, Some(spec)) => {
                desired.models.insert(name.to_string(), ModelRecord { current: spec, from_config: None });
                Ok(Outcome::Created)
            }
            (None, None) => Err(DeployError::NotFound(format!(
                "model {name:?} is not in the repository: send its file (and config) to load it"
            ))),
        })
        .await
    }

    /// Unloads the model `name`, unless a route uses it.
    pub async fn unload_model(&self, name: &str) -> Result<Outcome, DeployError> {
        self.change(&format!("model {name}"), |desired, _| {
            if !desired.models.contains_key(name) {
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
            desired.models.remove(name);
            Ok(Outcome::Deleted)
        })
        .await
    }

    /// Makes one change: edits a copy of the desired state, builds it, saves it, swaps it in.
    async fn change(
        &self,
        what: &str,
        edit: impl FnOnce(&mut DesiredState, &StateDir) -> Result<Outcome, DeployError>,
    ) -> Result<Outcome, DeployError> {
        self.change_from(None, what, edit).await
    }

    /// [`Node::change`], starting from `base` instead of the desired state when given;
    /// counted in the metrics.
    async fn change_from(
        &self,
        base: Option<DesiredState>,
        what: &str,
        edit: impl FnOnce(&mut DesiredState, &StateDir) -> Result<Outcome, DeployError>,
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
        edit: impl FnOnce(&mut DesiredState, &StateDir) -> Result<Outcome, DeployError>,
    ) -> Result<Outcome, DeployError> {
        let control = &self.control;
        let _turn = control.changing.lock().await;
        let saved = control.desired.lock().unwrap().clone();
        let mut next = base.unwrap_or_else(|| saved.clone());
        let outcome = edit(&mut next, &control.state)?;
        let serving = self.runtime();
        if next == saved && serving.is_some() {
            return Ok(Outcome::Unchanged);
        }
        let runtime = control.build(&next, serving.as_deref()).await?;
        info!(change = what, "deploy built");
        control.state.save(&next)?;
        info!(change = what, "deploy saved");
        if let Some(serving) = &serving {
            let mut retired = control.retired.lock().unwrap();
            for route in serving.routes() {
                if !runtime.routes.iter().any(|kept| Arc::ptr_eq(kept, route)) {
                    retired.push(Arc::downgrade(route));
                }
            }
        }
        drop(serving);
        self.swap(runtime);
        control.state.collect_garbage(&next.artifacts());
        *control.desired.lock().unwrap() = next;
        info!(change = what, ?outcome, "deploy serving");
        Ok(outcome)
    }
}

/// Applies the config file to `desired`: each route and model whose entry in the file
/// changed since the file was last applied is deployed as the file says; those the file
/// dropped are removed, unless the API has replaced them since.
fn apply_config(
    desired: &mut DesiredState,
    config: &Config,
    state: &StateDir,
) -> Result<Outcome, DeployError> {
    let before = desired.clone();
    for (name, model) in &config.models {
        let file = state.import(&model.file).map_err(|e| config_error(e, format!("model {name:?}")))?;
        let spec = model.clone().with_file(file);
        let digest = digest_of(&spec);
        if desired.models.get(name).and_then(|record| record.from_config.as_ref()) != Some(&digest) {
            desired.models.insert(name.clone(), ModelRecord { current: spec, from_config: Some(digest) });
        }
    }
    forget_dropped(&mut desired.models, |name| config.models.contains_key(name));
    for route in &config.routes {
        let name = route.name();
        let component =
            state.import(&route.component).map_err(|e| config_error(e, format!("route {name:?}")))?;
        let spec = RouteSpec { name: None, ..route.clone().with_component(component) };
        let digest = digest_of(&spec);
        match desired.routes.get_mut(&name) {
            Some(record) if record.from_config.as_ref() == Some(&digest) => {}
            Some(record) => {
                if record.current != spec {
                    record.previous = Some(std::mem::replace(&mut record.current, spec));
                }
                record.from_config = Some(digest);
            }
            None => {
                desired
                    .routes
                    .insert(name, RouteRecord { current: spec, previous: None, from_config: Some(digest) });
            }
        }
    }
    let in_file: Vec<String> = config.routes.iter().map(|route| route.name()).collect();
    forget_dropped(&mut desired.routes, |name| in_file.iter().any(|n| n == name));
    Ok(if *desired == before { Outcome::Unchanged } else { Outcome::Replaced })
}

/// A file the config names that cannot be read, as the error of the entry naming it.
fn config_error(error: StateError, entry: String) -> DeployError {
    DeployError::Invalid(anyhow::Error::new(error).context(entry))
}

/// An entry of the desired state that the config file may have given.
trait FromConfig {
    /// The digest of the file's entry when it was last applied.
    fn config_digest(&mut self) -> &mut Option<Digest>;
    /// The digest of the version serving.
    fn current_digest(&self) -> Digest;
}

impl FromConfig for RouteRecord {
    fn config_digest(&mut self) -> &mut Option<Digest> {
        &mut self.from_config
    }
    fn current_digest(&self) -> Digest {
        digest_of(&self.current)
    }
}

impl FromConfig for ModelRecord {
    fn config_digest(&mut self) -> &mut Option<Digest> {
        &mut self.from_config
    }
    fn current_digest(&self) -> Digest {
        digest_of(&self.current)
    }
}

/// Removes the entries the config file gave and no longer gives; an entry the API has
/// replaced since stays, the API's alone from now on.
fn forget_dropped<R: FromConfig>(entries: &mut BTreeMap<String, R>, in_file: impl Fn(&str) -> bool) {
    entries.retain(|name, record| {
        if in_file(name) {
            return true;
        }
        match record.config_digest().take() {
            Some(digest) => digest != record.current_digest(),
            None => true,
        }
    });
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
