//! A node, assembled from its configuration: the loaded models, the engine, and one
//! [`Route`] per configured guest route. Built once at start-up; read-only afterwards.
//! [`Node`] is what the server holds: the runtime once it has loaded, and whether the node
//! is ready (loaded and not shutting down).
//!
//! `config` reads and checks the configuration; `models` loads every model behind its
//! scheduler.

pub mod config;
pub mod models;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{info, warn};

use crate::node::config::{Config, RouteConfig, path_matches};
use crate::node::models::Models;
use crate::sandbox::InstanceLimits;
use crate::sandbox::admission::Admission;
use crate::sandbox::capabilities::Capabilities;
use crate::sandbox::component::{GuestComponent, GuestSpec};
use crate::sandbox::engine::{EngineLimits, new_engine};
use crate::sandbox::imports::ImportPolicy;
use crate::sandbox::nn::NnGrant;
use crate::telemetry::metrics::RouteMetrics;

/// Bytes in a MiB, for the `memory_mib` settings.
const MIB: usize = 1 << 20;

/// A guest route, ready to serve.
pub struct Route {
    /// The path it serves (and everything below it).
    pub path: String,
    /// Its concurrency cap and waiting queue.
    pub admission: Admission,
    /// Its pre-instantiated component.
    pub guest: GuestComponent,
    /// The component's file name, for people.
    pub component: String,
    /// The models its guests may load by name.
    pub models: Vec<String>,
    /// Deadline of one request, from arrival.
    pub timeout: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Its labelled metric series.
    pub metrics: RouteMetrics,
}

/// Everything a node serves.
pub struct Runtime {
    routes: Vec<Route>,
    models: Models,
    /// The series of the Open Inference Protocol endpoints.
    pub oip_metrics: RouteMetrics,
}

/// The server's view of the node: loading, serving, or draining.
#[derive(Default)]
pub struct Node {
    runtime: OnceLock<Runtime>,
    draining: AtomicBool,
}

impl Node {
    /// The runtime, once loaded.
    pub fn runtime(&self) -> Option<&Runtime> {
        self.runtime.get()
    }

    /// Marks the node loaded: from now on it serves.
    pub fn loaded(&self, runtime: Runtime) {
        let _ = self.runtime.set(runtime);
    }

    /// Marks the node as shutting down: it finishes what it has but is no longer ready.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether load balancers should send it requests.
    pub fn is_ready(&self) -> bool {
        self.runtime.get().is_some() && !self.draining.load(Ordering::Relaxed)
    }
}

impl Runtime {
    /// Loads every model and component of `config`. Any failure names what failed to load.
    pub async fn load(config: &Config) -> anyhow::Result<Runtime> {
        let started = Instant::now();
        let models = Models::load(&config.models)?;
        let limits = EngineLimits {
            instances: config.routes.iter().map(|r| r.max_concurrency as u32).sum(),
            max_memory_bytes: config.routes.iter().map(|r| r.memory_mib as usize * MIB).max().unwrap_or(MIB),
            compilation_cache: config.server.compilation_cache,
        };
        let engine = new_engine(limits)?;
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            routes.push(load_route(&engine, route, &models).await?);
        }
        info!(routes = routes.len(), load_ms = started.elapsed().as_millis() as u64, "runtime loaded");
        Ok(Runtime { routes, models, oip_metrics: RouteMetrics::new("/v2") })
    }

    /// Sets the gauges that are read off live state (instances in use, queue depths).
    pub fn refresh_gauges(&self) {
        #[cfg(feature = "gpu")]
        crate::telemetry::gpu::refresh_memory_gauges();
        for route in &self.routes {
            route.metrics.instances_in_use.set(route.admission.in_use() as i64);
            route.metrics.instances_capacity.set(route.admission.capacity() as i64);
            route.metrics.queue_depth.set(route.admission.waiting() as i64);
        }
    }

    /// The loaded models.
    pub fn models(&self) -> &Models {
        &self.models
    }

    /// Every route, in the configuration's order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route serving `path`: the one with the longest matching path.
    pub fn route_for(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|route| path_matches(path, &route.path))
            .max_by_key(|route| route.path.len())
    }
}

async fn load_route(
    engine: &wasmtime::Engine,
    config: &RouteConfig,
    models: &Models,
) -> anyhow::Result<Route> {
    let granted = config
        .models
        .iter()
        .map(|name| {
            let model = models.get(name).with_context(|| format!("model {name:?} is not loaded"))?;
            Ok((name.clone(), model.clone()))
        })
        .collect::<anyhow::Result<HashMap<_, _>>>()?;
    let grant = Arc::new(NnGrant { models: granted, allow_model_load: config.allow_model_load });
    let metrics = RouteMetrics::new(&config.path);
    let spec = GuestSpec {
        file: &config.component,
        route_path: &config.path,
        imports: match config.strict_imports {
            true => ImportPolicy::Strict { grants: &config.grant },
            false => ImportPolicy::AnyWasi,
        },
        capabilities: Capabilities::new(&config.outbound_http, config.read_only_dirs.clone()),
        limits: InstanceLimits {
            memory_bytes: config.memory_mib as usize * MIB,
            host_memory_bytes: config.host_memory_mib.unwrap_or(config.memory_mib) as usize * MIB,
            max_host_resources: config.max_host_resources,
            max_response_bytes: config.max_response_bytes,
        },
    };
    if !config.strict_imports && !config.grant.is_empty() {
        warn!(route = %config.path, "`grant` has no effect without `strict_imports = true`: every WASI package links, its capabilities closed");
    }
    let guest = GuestComponent::load(engine, spec, grant, &metrics)
        .await
        .with_context(|| format!("route {}", config.path))?;
    info!(route = %config.path, component = %config.component.display(), "route ready");
    Ok(Route {
        path: config.path.clone(),
        admission: Admission::new(config.max_concurrency, config.max_queue),
        guest,
        component: config
            .component
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
        models: config.models.clone(),
        timeout: Duration::from_millis(config.timeout_ms),
        max_body_bytes: config.max_body_bytes,
        metrics,
    })
}
