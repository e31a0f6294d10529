//! The desired-state changes: a route deployed, deleted or rolled back, a model loaded or
//! unloaded, the config file applied at start-up or on SIGHUP. Each edits a copy of the
//! desired state and goes through `Node::change`, one at a time: built, saved, swapped in.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use tracing::{error, info, warn};

use super::config_file::apply_config;
use super::{DeployError, Outcome};
use crate::inference::backend;
use crate::node::Node;
use crate::node::config::{Config, ModelConfig, RouteConfig, check_model_name, check_route_name};
use crate::node::digest::Digest;
use crate::node::oci::{ArtifactKind, OciReference};
use crate::node::state::{DesiredState, ModelSpec, RouteRecord, RouteSpec, StateError};
use crate::telemetry::metrics;

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
        let applied = match self.control.fetch_config(config).await {
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
        let file = self.control.fetch_config(config).await?;
        self.change("config file", |desired| Ok(apply_config(desired, &file))).await
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
            let fetched = self.control.fetch(&settings.file, ArtifactKind::Model).await?;
            model_specs.insert(model, settings.with_file(fetched.keep_source(&mut sources)));
        }
        let fetched = self.control.fetch(&route.component, ArtifactKind::Component).await?;
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
        let file = self.control.fetch(&settings.file, ArtifactKind::Model).await?.keep_source(&mut sources);
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
        // Models left unloaded (measured on an earlier start, not pinned) load now, as
        // they fit.
        let models = runtime.models.clone();
        self.swap(runtime);
        models.load_in_background();
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
