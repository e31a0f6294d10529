//! Building a new [`Runtime`] beside the serving one: the models, ensembles and routes the
//! desired state describes, each reused from the serving runtime when it is unchanged, and
//! loaded (a model calibrated, a component compiled, its imports checked, its first instance
//! made) when it is new.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use super::{ControlPlane, DeployError};
use crate::node::models::Models;
use crate::node::state::{DesiredState, RouteSpec};
use crate::node::{Route, Runtime};
use crate::request::memory::MemoryBudget;
use crate::sandbox::InstanceLimits;
use crate::sandbox::abi;
use crate::sandbox::admission::Admission;
use crate::sandbox::capabilities::Capabilities;
use crate::sandbox::component::{GuestComponent, GuestSpec};
use crate::sandbox::engine::{EngineLimits, memory_keep_resident, new_engine};
use crate::sandbox::imports::ImportPolicy;
use crate::sandbox::nn::NnGrant;
use crate::telemetry::metrics::RouteMetrics;

/// Bytes in a MiB, for the `memory_mib` settings.
const MIB: usize = 1 << 20;

impl ControlPlane {
    /// Builds the runtime `desired` describes, reusing from `serving` every model and route
    /// whose settings (and, for a route, models) are unchanged.
    pub(super) async fn build(
        &self,
        desired: &DesiredState,
        serving: Option<&Runtime>,
    ) -> Result<Runtime, DeployError> {
        let mut models = Models::default();
        for (name, spec) in &desired.models {
            let reused = serving.and_then(|s| s.models.loaded(name)).filter(|loaded| loaded.spec == *spec);
            let loaded = match reused {
                Some(loaded) => loaded.clone(),
                None => {
                    spec.settings
                        .validate()
                        .map_err(|e| DeployError::Invalid(e.context(format!("model {name:?}"))))?;
                    let reader = self.state.reader(&spec.file);
                    reader.size()?;
                    let context = &self.settings.models;
                    tokio::task::block_in_place(|| Models::load(name, spec, reader, context))
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
                route.spec.settings.max_concurrency == spec.settings.max_concurrency
                    && route.spec.settings.max_queue == spec.settings.max_queue
                    && route.spec.settings.max_queue_wait_ms == spec.settings.max_queue_wait_ms
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
}

/// Builds one version of the route `name` from its settings, its component's bytes and
/// the models it may use: its own engine (a pool sized to its cap and the instances made
/// ahead), the component compiled, its imports checked, and its first instance made. It shares `admission`
/// (its previous version's) when given.
async fn load_route(
    name: &str,
    spec: &RouteSpec,
    component: &[u8],
    models: &Models,
    admission: Option<Arc<Admission>>,
    compilation_cache: bool,
    memory: &Arc<MemoryBudget>,
) -> anyhow::Result<Route> {
    let settings = &spec.settings;
    let granted = spec
        .models
        .iter()
        .map(|model| {
            let loaded = models.get(model).with_context(|| format!("model {model:?} is not loaded"))?;
            Ok((model.clone(), loaded.clone()))
        })
        .collect::<anyhow::Result<HashMap<_, _>>>()?;
    let grant = Arc::new(NnGrant { models: granted, allow_model_load: settings.allow_model_load });
    let metrics = RouteMetrics::new(&spec.path);
    let guest_abi =
        abi::detect(component).with_context(|| format!("compiling the component {}", spec.component))?;
    let engine = new_engine(EngineLimits {
        instances: u32::try_from(settings.max_concurrency.saturating_add(settings.ready_instances))
            .unwrap_or(u32::MAX),
        max_memory_bytes: settings.memory_mib as usize * MIB,
        memory_keep_resident_bytes: memory_keep_resident(component.len(), settings.memory_mib as usize * MIB),
        compilation_cache,
        guest_abi,
    })?;
    let label = spec.component.to_string();
    let guest_spec = GuestSpec {
        component,
        label: &label,
        route_path: &spec.path,
        imports: match settings.strict_imports {
            true => ImportPolicy::Strict { grants: &settings.grant },
            false => ImportPolicy::AnyWasi,
        },
        capabilities: Capabilities::new(&settings.outbound_http, settings.read_only_dirs.clone()),
        limits: InstanceLimits {
            memory_bytes: settings.memory_mib as usize * MIB,
            host_memory_bytes: settings.host_memory_mib.unwrap_or(settings.memory_mib) as usize * MIB,
            max_host_resources: settings.max_host_resources,
            max_response_bytes: settings.max_response_bytes,
        },
        ready_instances: settings.ready_instances,
        timeout: Duration::from_millis(settings.timeout_ms),
        memory: memory.clone(),
        abi: guest_abi,
    };
    if !settings.strict_imports && !settings.grant.is_empty() {
        warn!(route = %spec.path, "`grant` has no effect without `strict_imports = true`: every WASI package links, its capabilities closed");
    }
    let guest = GuestComponent::load(&engine, guest_spec, grant, &metrics).await?;
    info!(route = %name, path = %spec.path, component = %label, abi = guest_abi.label(), "route ready");
    Ok(Route {
        name: name.to_string(),
        path: spec.path.clone(),
        admission: admission.unwrap_or_else(|| {
            let max_wait = settings.max_queue_wait_ms.map(Duration::from_millis);
            Arc::new(Admission::new(settings.max_concurrency, settings.max_queue, max_wait))
        }),
        guest,
        spec: spec.clone(),
        timeout: Duration::from_millis(settings.timeout_ms),
        max_body_bytes: settings.max_body_bytes,
        metrics,
    })
}
