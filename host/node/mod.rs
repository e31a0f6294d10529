//! A node: what it serves (a [`Runtime`]: routes and models), how that changes (`control`:
//! deploys, rollbacks, model loads, the config file re-read), and what survives a restart
//! (`state`).
//!
//! A [`Runtime`] is an immutable snapshot. A change builds a whole new one beside the
//! serving one (reusing every route and model it leaves alone), and swaps it in at once:
//! each request holds the snapshot it started with, so requests in flight finish on the
//! version they started on, and a replaced version is dropped when its last request ends.
//!
//! `config` reads and checks the configuration; `models` loads models behind their
//! schedulers; `digest` names artifacts by their bytes; `oci` pushes and pulls them as OCI
//! artifacts.

pub mod config;
pub mod control;
pub mod digest;
pub mod models;
pub mod oci;
pub mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::node::config::{RESERVED_PATHS, path_matches};
use crate::node::control::{ControlPlane, ControlSettings};
use crate::node::models::Models;
use crate::node::state::{RouteSpec, StateDir};
use crate::request::memory::MemoryBudget;
use crate::request::tenant::TenantDirectory;
use crate::sandbox::admission::Admission;
use crate::sandbox::component::GuestComponent;
use crate::telemetry::metrics::{self, RouteMetrics, TenantMetrics};

/// A guest route, ready to serve: one version of it.
pub struct Route {
    /// Its name in the admin API.
    pub name: String,
    /// The path it serves (and everything below it).
    pub path: String,
    /// Its concurrency cap and waiting queue, shared by its versions while their limits
    /// stay the same (so a version draining and its successor share the cap).
    pub admission: Arc<Admission>,
    /// Its pre-instantiated component.
    pub guest: GuestComponent,
    /// The settings it was deployed with (its component by digest).
    pub spec: RouteSpec,
    /// Deadline of one request, from arrival.
    pub timeout: Duration,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Its labelled metric series.
    pub metrics: RouteMetrics,
}

/// Everything a node serves at one moment.
pub struct Runtime {
    routes: Vec<Arc<Route>>,
    models: Models,
    /// The series of the Open Inference Protocol endpoints.
    pub oip_metrics: RouteMetrics,
}

/// The server's view of the node: loading, serving (the current [`Runtime`]), or draining;
/// the control plane that changes what it serves; and what it allows requests.
pub struct Node {
    runtime: RwLock<Option<Arc<Runtime>>>,
    draining: AtomicBool,
    control: ControlPlane,
    limits: NodeLimits,
    /// Each tenant's series, by tenant index.
    tenant_metrics: Vec<TenantMetrics>,
}

/// What the node allows requests, whatever they ask for.
pub struct NodeLimits {
    /// The memory budget every request's bodies, tensors and outputs are charged to.
    pub memory: Arc<MemoryBudget>,
    /// Who credentials name, and each tenant's limits.
    pub tenants: TenantDirectory,
    /// Largest Open Inference Protocol infer request (REST body, gRPC message).
    pub max_infer_request_bytes: usize,
}

impl Node {
    /// A node that keeps its deploys in `state`, serves requests within `limits`, and has
    /// nothing loaded yet.
    pub fn new(state: StateDir, settings: ControlSettings, limits: NodeLimits) -> Node {
        let tenant_metrics =
            limits.tenants.tenants().map(|tenant| TenantMetrics::new(&tenant.name)).collect();
        Node {
            runtime: RwLock::new(None),
            draining: AtomicBool::new(false),
            control: ControlPlane::new(state, settings, limits.memory.clone()),
            limits,
            tenant_metrics,
        }
    }

    /// The series of the tenant of index `index`.
    pub fn tenant_metrics(&self, index: usize) -> &TenantMetrics {
        &self.tenant_metrics[index]
    }

    /// What the node allows requests.
    pub fn limits(&self) -> &NodeLimits {
        &self.limits
    }

    /// The memory budget of the node's requests.
    pub fn memory(&self) -> &Arc<MemoryBudget> {
        &self.limits.memory
    }

    /// The node's tenants.
    pub fn tenants(&self) -> &TenantDirectory {
        &self.limits.tenants
    }

    /// Sets the gauges read off live state: `runtime`'s, the memory budget's, the tenants'.
    pub fn refresh_gauges(&self, runtime: &Runtime) {
        runtime.refresh_gauges();
        let memory = self.memory();
        metrics::memory_budget(memory.limit(), memory.used(), memory.peak());
        for (index, series) in self.tenant_metrics.iter().enumerate() {
            series.in_flight.set(self.tenants().in_flight(index) as i64);
        }
    }

    /// The runtime serving now, once loaded. A request holds it to its end.
    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.runtime.read().unwrap().clone()
    }

    /// Makes `runtime` the one serving; requests already holding the old one finish on it.
    fn swap(&self, runtime: Runtime) {
        *self.runtime.write().unwrap() = Some(Arc::new(runtime));
    }

    /// What changes what the node serves.
    pub fn control(&self) -> &ControlPlane {
        &self.control
    }

    /// Marks the node as shutting down: it finishes what it has but is no longer ready.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether load balancers should send it requests.
    pub fn is_ready(&self) -> bool {
        self.runtime.read().unwrap().is_some() && !self.draining.load(Ordering::Relaxed)
    }
}

impl Runtime {
    /// Sets the gauges that are read off live state (instances in use, queue depths).
    fn refresh_gauges(&self) {
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

    /// Every route, by name.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route called `name`.
    pub fn route_named(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|route| route.name == name)
    }

    /// The route serving `path`: the one with the longest matching path, the root route last;
    /// none for the host's own paths ([`RESERVED_PATHS`]), which no route takes.
    pub fn route_for(&self, path: &str) -> Option<&Route> {
        if RESERVED_PATHS.iter().any(|reserved| path_matches(path, reserved)) {
            return None;
        }
        self.routes
            .iter()
            .filter(|route| path_matches(path, &route.path))
            .max_by_key(|route| route.path.len())
            .map(Arc::as_ref)
    }
}
