//! A route's guest component: compiled, its imports checked against its route's policy, and
//! pre-instantiated once; then a fresh instance for every request, dropped when the request
//! ends so nothing leaks between requests.
//!
//! [`GuestComponent::handle`] runs one request to its deadline. The guest runs in a task of
//! its own so it can keep streaming the body after it has sent the response head; the task
//! owns the instance and the route's admission permit, and both go when it ends. If the
//! caller goes away before the response head (the client disconnected), the task is aborted:
//! the instance is dropped, and so is any inference it still had queued.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use prometheus::Histogram;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tracing::{debug, warn};
use wasmtime::component::{Component, Resource, ResourceTableError};
use wasmtime::error::Context as _;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use crate::inference::scheduler::ComputeError;
use crate::request::RequestContext;
use crate::sandbox::admission::Permit;
use crate::sandbox::body::{BodyLimits, GuestEnd, HonestBody};
use crate::sandbox::capabilities::Capabilities;
use crate::sandbox::guest_log::{GuestStderr, LogBudget};
use crate::sandbox::imports::{self, ImportPolicy};
use crate::sandbox::nn::NnGrant;
use crate::sandbox::{self, GuestState, InstanceLimits};
use crate::telemetry::metrics::RouteMetrics;

/// Why a guest produced no response.
#[derive(Debug, thiserror::Error)]
pub enum GuestFailure {
    /// The request's deadline passed before the guest answered.
    #[error("the guest did not answer within its deadline")]
    DeadlineExceeded,
    /// No instance could be made (e.g. the instance pool is exhausted).
    #[error("no guest instance available: {0:#}")]
    NoInstance(wasmtime::Error),
    /// A model the guest called was overloaded (a [`ComputeError::Overloaded`]).
    #[error(transparent)]
    ModelOverloaded(ComputeError),
    /// The guest trapped (panic, stack overflow, out of memory, over its host budget, ...).
    #[error("the guest trapped: {}", trap_reason(.0))]
    Trapped(wasmtime::Error),
    /// The task running the guest panicked or was cancelled.
    #[error("the guest task failed: {0}")]
    TaskFailed(tokio::task::JoinError),
    /// The guest returned without setting a response.
    #[error("the guest gave no response")]
    NoResponse,
    /// The guest set an HTTP error code instead of a response.
    #[error("the guest gave no response: it answered with {0:?}")]
    AnsweredWithError(ErrorCode),
    /// The request could not be handed to the guest.
    #[error("the request cannot be passed to the guest: {0:#}")]
    BadRequest(wasmtime::Error),
}

/// Why a guest trapped, in one line: the WebAssembly trap (stack overflow, `unreachable`
/// after a panic, out-of-bounds access, ...) or the host error that stopped it. The whole
/// chain, with the wasm backtrace, is in the error's `Debug` form.
fn trap_reason(error: &wasmtime::Error) -> String {
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        return trap.to_string();
    }
    if let Some(ResourceTableError::Full) = error.downcast_ref::<ResourceTableError>() {
        return "it holds as many resource handles as its route allows (max_host_resources)".into();
    }
    error.root_cause().to_string()
}

/// A compiled, pre-instantiated guest and what its instances may use.
pub struct GuestComponent {
    pre: ProxyPre<GuestState>,
    grant: Arc<NnGrant>,
    limits: InstanceLimits,
    capabilities: Capabilities,
    log_budget: Arc<LogBudget>,
    /// The route's path, for log lines.
    route: Arc<str>,
    /// Observes how long making each instance takes.
    instantiation: Histogram,
}

/// What a route says about its guest component.
pub struct GuestSpec<'a> {
    /// The component's bytes (a `.wasm` file).
    pub component: &'a [u8],
    /// What messages call it (its digest).
    pub label: &'a str,
    /// The route's path, which tags the guest's log lines.
    pub route_path: &'a str,
    /// WASI packages the component may import beyond the guest world.
    pub imports: ImportPolicy<'a>,
    /// What one instance may use.
    pub limits: InstanceLimits,
    /// What the route opens to its guests.
    pub capabilities: Capabilities,
}

impl GuestComponent {
    /// Compiles the component (or takes it from the compilation cache), links it against
    /// the sandbox, and checks that one instance can be made.
    pub async fn load(
        engine: &Engine,
        spec: GuestSpec<'_>,
        grant: Arc<NnGrant>,
        metrics: &RouteMetrics,
    ) -> anyhow::Result<GuestComponent> {
        let file = spec.label;
        let started = Instant::now();
        // Compiling takes a CPU for a while: tell tokio, so other tasks move off this thread.
        let component = tokio::task::block_in_place(|| Component::new(engine, spec.component))
            .with_context(|| format!("compiling the component {file} (is it a WebAssembly component?)"))?;
        let compiled = started.elapsed();
        imports::check(engine, &component, spec.imports).with_context(|| file.to_string())?;
        let linker = sandbox::linker(engine)?;
        let instance_pre =
            linker.instantiate_pre(&component).with_context(|| format!("linking the component {file}"))?;
        let pre = ProxyPre::new(instance_pre)
            .with_context(|| format!("{file} is not a wasi:http/proxy component"))?;
        let guest = GuestComponent {
            pre,
            grant,
            limits: spec.limits,
            capabilities: spec.capabilities,
            log_budget: Arc::new(LogBudget::new(spec.route_path, metrics.log_lines_dropped.clone())),
            route: spec.route_path.into(),
            instantiation: metrics.instantiation.clone(),
        };
        // The first instance also makes the memory images every later one maps.
        let mut attempt = 1;
        loop {
            let probe = RequestContext::new(Instant::now() + Duration::from_secs(10), Default::default());
            let mut store = guest.new_store(probe)?;
            match guest.pre.instantiate_async(&mut store).await {
                Ok(_) => break,
                Err(error) if attempt < IMAGE_ATTEMPTS && kernel_busy(&error) => {
                    warn!(component = %file, attempt, "the kernel was busy sealing a memory image: {error:#}; trying again");
                    attempt += 1;
                }
                Err(error) => {
                    return Err(error.context(format!("instantiating the component {file}")).into());
                }
            }
        }
        debug!(component = %file, compile_ms = compiled.as_millis() as u64, "component ready");
        Ok(guest)
    }

    /// The models its instances may use.
    pub fn grant(&self) -> &NnGrant {
        &self.grant
    }

    /// Runs one request on a fresh instance. `permit` is the route's admission permit; it is
    /// released when the instance is gone.
    pub async fn handle(
        &self,
        request: http::Request<Full<Bytes>>,
        context: RequestContext,
        permit: Permit,
    ) -> Result<http::Response<HyperOutgoingBody>, GuestFailure> {
        let deadline = tokio::time::Instant::from_std(context.deadline);
        let request_id = context.id.clone();
        let mut store = self.new_store(context).map_err(GuestFailure::NoInstance)?;
        let (sender, receiver) = oneshot::channel();
        let http = store.data_mut();
        let request =
            http.http().new_incoming_request(Scheme::Http, request).map_err(GuestFailure::BadRequest)?;
        let outparam = http.http().new_response_outparam(sender).map_err(GuestFailure::BadRequest)?;
        let (pre, instantiation) = (self.pre.clone(), self.instantiation.clone());
        // How the guest's work ended, for the body: it ends cleanly only after a clean end.
        let (ended_sender, ended) = oneshot::channel::<GuestEnd>();
        let task = tokio::spawn(async move {
            // However the task ends (an answer, a trap, the deadline, an abort), the instance
            // is freed before the route's slot is released.
            let mut instance = Instance { store, _permit: permit };
            let run = run_guest(&mut instance.store, &pre, &instantiation, request, outparam);
            let outcome = tokio::time::timeout_at(deadline, run).await;
            let _ = ended_sender.send(match &outcome {
                Ok(Ok(())) => Ok(()),
                Ok(Err(failure)) => Err(failure.to_string()),
                Err(_elapsed) => Err(GuestFailure::DeadlineExceeded.to_string()),
            });
            // Resetting the instance's memory for the next request takes a while: give the
            // connection's task, which the outcome has just woken, the chance to finish the
            // response first. The route's slot is freed with the instance, a moment after.
            tokio::task::yield_now().await;
            drop(instance);
            outcome
        });
        let abort_if_abandoned = AbortOnDrop(Some(task.abort_handle()));

        match receiver.await {
            Ok(Ok(response)) => {
                abort_if_abandoned.disarm();
                let limits = BodyLimits {
                    max_bytes: self.limits.max_response_bytes,
                    route: self.route.clone(),
                    request_id: request_id.clone(),
                };
                Ok(response.map(|body| HonestBody::wrap(body, ended, limits)))
            }
            Ok(Err(code)) => Err(GuestFailure::AnsweredWithError(code)),
            // The guest ended (or was stopped) without setting a response: ask its task why.
            Err(_) => match task.await {
                Ok(Ok(Ok(()))) => Err(GuestFailure::NoResponse),
                Ok(Ok(Err(failure))) => Err(failure),
                Ok(Err(_elapsed)) => Err(GuestFailure::DeadlineExceeded),
                Err(join) => Err(GuestFailure::TaskFailed(join)),
            },
        }
    }

    /// A store for one instance: fresh state, memory cap, and the epoch settings that make
    /// the guest yield to tokio at every tick.
    /// The wall-clock deadline itself is the `timeout_at` around the guest's task.
    fn new_store(&self, context: RequestContext) -> wasmtime::Result<Store<GuestState>> {
        let stderr = GuestStderr::new(self.log_budget.clone(), context.id.clone());
        let state = GuestState::new(self.grant.clone(), self.limits, &self.capabilities, context, stderr)?;
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        Ok(store)
    }
}

/// Instantiates the guest in `store` and runs its handler on `request`; the answer goes
/// to `outparam`.
async fn run_guest(
    store: &mut Store<GuestState>,
    pre: &ProxyPre<GuestState>,
    instantiation: &Histogram,
    request: Resource<HostIncomingRequest>,
    outparam: Resource<HostResponseOutparam>,
) -> Result<(), GuestFailure> {
    let instantiating = Instant::now();
    let proxy = pre.instantiate_async(&mut *store).await.map_err(GuestFailure::NoInstance)?;
    instantiation.observe(instantiating.elapsed().as_secs_f64());
    proxy.wasi_http_incoming_handler().call_handle(&mut *store, request, outparam).await.map_err(|e| {
        match e.downcast::<ComputeError>() {
            Ok(overloaded @ ComputeError::Overloaded { .. }) => GuestFailure::ModelOverloaded(overloaded),
            Ok(other) => GuestFailure::Trapped(other.into()),
            Err(trap) => GuestFailure::Trapped(trap),
        }
    })
}

/// One request's instance and the route slot it occupies. Fields drop in order: the store
/// (and with it the instance's slot in the engine's pool) first, then the admission permit,
/// so a request admitted next always finds a free slot in a pool sized to the routes' caps.
struct Instance {
    store: Store<GuestState>,
    _permit: Permit,
}

/// Aborts the guest's task when dropped, unless disarmed: the response head was delivered,
/// and the task now streams the body for as long as it needs.
struct AbortOnDrop(Option<AbortHandle>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Attempts at a component's first instance while the kernel answers EBUSY.
const IMAGE_ATTEMPTS: usize = 3;

/// Whether `error` is the kernel's EBUSY, which Linux answers for a moment when wasmtime seals
/// the memfd of a memory image whose pages are still pinned (seen under memory pressure);
/// a new attempt makes a new memfd.
fn kernel_busy(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ResourceBusy)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kernels_ebusy_is_tried_again() {
        let busy = std::io::Error::from_raw_os_error(16);
        let sealing = wasmtime::Error::from(busy).context("cannot add seals to the memfd");
        assert!(kernel_busy(&sealing.context("instantiating")));
        let trap = wasmtime::Error::msg("wasm trap: unreachable");
        assert!(!kernel_busy(&trap));
        let denied = wasmtime::Error::from(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(!kernel_busy(&denied));
    }
}
