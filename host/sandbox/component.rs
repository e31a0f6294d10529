//! A route's guest component: compiled, its imports checked against its route's policy, and
//! pre-instantiated once; then a fresh instance for every request, dropped when the request
//! ends so nothing leaks between requests.
//!
//! Instances can be made ahead of requests (`ready_instances`): each is still used by one
//! request only, but its instantiation is off that request's path. A request takes one made
//! ahead if there is one, else makes its own, and every request starts making another ahead
//! while fewer than wanted are made or being made.
//!
//! [`GuestComponent::handle`] runs one request to its deadline. The guest runs in a task of
//! its own so it can keep streaming the body after it has sent the response head; the task
//! owns the instance and the route's admission permit, and both go when it ends. If the
//! caller goes away before the response head (the client disconnected), the task is aborted:
//! the instance is dropped, and so is any inference it still had queued.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use prometheus::{Histogram, IntCounter};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tracing::{debug, warn};
use wasmtime::component::Component;
use wasmtime::error::Context as _;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::handler::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{p2, p3};

use crate::request::RequestContext;
use crate::request::memory::MemoryBudget;
use crate::sandbox::abi::GuestAbi;
use crate::sandbox::admission::Permit;
use crate::sandbox::body::{BodyLimits, GuestEnd, HonestBody};
use crate::sandbox::capabilities::Capabilities;
use crate::sandbox::failure::GuestFailure;
use crate::sandbox::guest_log::{GuestStderr, LogBudget};
use crate::sandbox::handler::{self, Answer};
use crate::sandbox::imports::{self, ImportPolicy};
use crate::sandbox::nn::NnGrant;
use crate::sandbox::{self, GuestState, InstanceLimits};
use crate::telemetry::metrics::RouteMetrics;

/// A compiled, pre-instantiated guest and what its instances may use.
pub struct GuestComponent {
    maker: Arc<InstanceMaker>,
    /// The route's path, for log lines.
    route: Arc<str>,
}

/// Makes a route's instances, when a request arrives or ahead of it, and keeps those made
/// ahead until a request takes one.
struct InstanceMaker {
    engine: Engine,
    pre: ProxyPre<GuestState>,
    grant: Arc<NnGrant>,
    limits: InstanceLimits,
    capabilities: Capabilities,
    log_budget: Arc<LogBudget>,
    /// The node's memory budget, which what instances make the host hold is charged to.
    memory: Arc<MemoryBudget>,
    /// Observes how long making each instance takes.
    instantiation: Histogram,
    /// Counts requests that found an instance made ahead of them.
    ready_hits: IntCounter,
    /// How many instances to keep made ahead of requests.
    wanted: usize,
    /// Longest time making one ahead may take: the route's timeout.
    make_timeout: Duration,
    ready: Mutex<ReadyInstances>,
}

/// Instances made ahead of requests, and how many are being made.
#[derive(Default)]
struct ReadyInstances {
    made: Vec<ReadyInstance>,
    being_made: usize,
}

/// Counts one instance as being made while it lives.
struct BeingMade<'a>(&'a Mutex<ReadyInstances>);

impl Drop for BeingMade<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).being_made -= 1;
    }
}

/// An instance made ahead of its request: instantiated, never called.
struct ReadyInstance {
    store: Store<GuestState>,
    proxy: Proxy,
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
    /// Instances to keep made ahead of requests (the engine's pool must have room for them
    /// beside the route's cap).
    pub ready_instances: usize,
    /// The route's timeout, which also bounds making an instance ahead, and the first.
    pub timeout: Duration,
    /// The node's memory budget.
    pub memory: Arc<MemoryBudget>,
    /// The `wasi:http` the component serves (its engine is configured for it).
    pub abi: GuestAbi,
}

impl GuestComponent {
    /// Compiles the component (or takes it from the compilation cache), links it against
    /// the sandbox, checks that one instance can be made, and keeps it (and makes the rest)
    /// as the instances made ahead of requests.
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
        let linker = sandbox::linker(engine, spec.abi)?;
        let instance_pre =
            linker.instantiate_pre(&component).with_context(|| format!("linking the component {file}"))?;
        let pre = match spec.abi {
            GuestAbi::P2 => p2::bindings::ProxyPre::new(instance_pre).map(ProxyPre::P2),
            GuestAbi::P3 => p3::bindings::ServicePre::new(instance_pre).map(ProxyPre::P3),
        }
        .with_context(|| {
            format!("{file} does not export a {} handler wasmtime can call", spec.abi.label())
        })?;
        let maker = Arc::new(InstanceMaker {
            engine: engine.clone(),
            pre,
            grant,
            limits: spec.limits,
            capabilities: spec.capabilities,
            log_budget: Arc::new(LogBudget::new(spec.route_path, metrics.log_lines_dropped.clone())),
            memory: spec.memory,
            instantiation: metrics.instantiation.clone(),
            ready_hits: metrics.ready_instance_hits.clone(),
            wanted: spec.ready_instances,
            make_timeout: spec.timeout,
            ready: Mutex::default(),
        });
        // The first instance also makes the memory images every later one maps. Its start
        // functions run as any instance's do: within the route's timeout, so a guest that loops
        // there fails its deploy instead of holding the control plane.
        let mut attempt = 1;
        let first = loop {
            let made = tokio::time::timeout(maker.make_timeout, maker.make_ahead()).await.unwrap_or_else(|_| {
                Err(wasmtime::format_err!(
                    "its first instance was not made within the route's timeout ({} ms): does a start function loop?",
                    maker.make_timeout.as_millis()
                ))
            });
            match made {
                Ok(first) => break first,
                Err(error) if attempt < IMAGE_ATTEMPTS && kernel_busy(&error) => {
                    warn!(component = %file, attempt, "the kernel was busy sealing a memory image: {error:#}; trying again");
                    attempt += 1;
                }
                Err(error) => {
                    return Err(error.context(format!("instantiating the component {file}")).into());
                }
            }
        };
        if maker.wanted > 0 {
            maker.ready.lock().unwrap().made.push(first);
            maker.replenish();
        }
        debug!(component = %file, compile_ms = compiled.as_millis() as u64, "component ready");
        Ok(GuestComponent { maker, route: spec.route_path.into() })
    }

    /// The models its instances may use.
    pub fn grant(&self) -> &NnGrant {
        &self.maker.grant
    }

    /// Runs one request on a fresh instance: one made ahead if there is one, else one made
    /// now. `permit` is the route's admission permit; it is released when the instance is
    /// gone.
    pub async fn handle(
        &self,
        request: http::Request<Full<Bytes>>,
        context: RequestContext,
        permit: Permit,
    ) -> Result<http::Response<HyperOutgoingBody>, GuestFailure> {
        let deadline = tokio::time::Instant::from_std(context.deadline);
        let request_id = context.id.clone();
        let (store, made_ahead) = self.maker.instance_for(context).map_err(GuestFailure::NoInstance)?;
        let (sender, receiver) = oneshot::channel::<Answer>();
        let maker = self.maker.clone();
        // How the guest's work ended, for the body: it ends cleanly only after a clean end.
        let (ended_sender, ended) = oneshot::channel::<GuestEnd>();
        let task = tokio::spawn(async move {
            // However the task ends (an answer, a trap, the deadline, an abort), the instance
            // is freed before the route's slot is released.
            let mut instance = Instance { store, _permit: permit };
            let run = run_guest(&mut instance.store, &maker, made_ahead, request, sender);
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
                    max_bytes: self.maker.limits.max_response_bytes,
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
}

impl InstanceMaker {
    /// A store for the request of `context`, with its instance if one was made ahead (and
    /// then another is started in its place); without, the caller instantiates it.
    fn instance_for(
        self: &Arc<Self>,
        context: RequestContext,
    ) -> wasmtime::Result<(Store<GuestState>, Option<Proxy>)> {
        let taken = self.ready.lock().unwrap_or_else(PoisonError::into_inner).made.pop();
        self.replenish();
        match taken {
            Some(ReadyInstance { mut store, proxy }) => {
                self.ready_hits.inc();
                store.data_mut().serve(context);
                // Its time slice starts now, not when it was made.
                store.set_epoch_deadline(1);
                Ok((store, Some(proxy)))
            }
            None => Ok((self.new_store(Some(context))?, None)),
        }
    }

    /// Starts making instances ahead until as many as wanted are made or being made. Every
    /// request calls it, so a failed attempt is tried again by the next request.
    fn replenish(self: &Arc<Self>) {
        let missing = {
            let mut ready = self.ready.lock().unwrap_or_else(PoisonError::into_inner);
            let missing = self.wanted.saturating_sub(ready.made.len() + ready.being_made);
            ready.being_made += missing;
            missing
        };
        for _ in 0..missing {
            let maker = self.clone();
            tokio::spawn(async move {
                // However the task ends (made, failed, panicked, dropped), it is no longer
                // being made.
                let making = BeingMade(&maker.ready);
                let started = Instant::now();
                let made = tokio::time::timeout(maker.make_timeout, maker.make_ahead()).await;
                match made {
                    Ok(Ok(instance)) => {
                        maker.instantiation.observe(started.elapsed().as_secs_f64());
                        making.0.lock().unwrap_or_else(PoisonError::into_inner).made.push(instance);
                    }
                    // The request that next makes its own instance meets the same failure and
                    // reports it.
                    Ok(Err(error)) => debug!("making an instance ahead failed: {error:#}"),
                    Err(_elapsed) => debug!("making an instance ahead took longer than the route's timeout"),
                }
            });
        }
    }

    /// An instance made before any request, for the next one to take.
    async fn make_ahead(&self) -> wasmtime::Result<ReadyInstance> {
        let mut store = self.new_store(None)?;
        let proxy = self.pre.instantiate_async(&mut store).await?;
        Ok(ReadyInstance { store, proxy })
    }

    /// A store for one instance: fresh state, memory cap, and the epoch settings that make
    /// the guest yield to tokio at every tick. For `request`'s context, or, with none, for
    /// an instance made ahead (the request that takes it brings its own: `GuestState::serve`).
    /// The wall-clock deadline itself is the `timeout_at` around the guest's task.
    fn new_store(&self, request: Option<RequestContext>) -> wasmtime::Result<Store<GuestState>> {
        let stderr = GuestStderr::new(self.log_budget.clone());
        let context = match request {
            Some(context) => {
                stderr.tag(context.id.clone());
                context
            }
            None => RequestContext::new(Instant::now() + self.make_timeout, Default::default()),
        };
        let state = GuestState::new(
            self.grant.clone(),
            self.limits,
            &self.capabilities,
            context,
            stderr,
            &self.memory,
        )?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        Ok(store)
    }
}

/// Runs the guest's handler on `request` in `store`, instantiating it first unless it was
/// made ahead; the answer goes to `answer`.
async fn run_guest(
    store: &mut Store<GuestState>,
    maker: &InstanceMaker,
    made_ahead: Option<Proxy>,
    request: http::Request<Full<Bytes>>,
    answer: oneshot::Sender<Answer>,
) -> Result<(), GuestFailure> {
    let proxy = match made_ahead {
        Some(proxy) => proxy,
        None => {
            let started = Instant::now();
            let proxy = maker.pre.instantiate_async(&mut *store).await.map_err(GuestFailure::NoInstance)?;
            maker.instantiation.observe(started.elapsed().as_secs_f64());
            proxy
        }
    };
    handler::call(store, &proxy, request, answer).await
}

/// One request's instance and the route slot it occupies. Fields drop in order: the store
/// (and with it the instance's slot in the engine's pool) first, then the admission permit,
/// so a request admitted next always finds a free slot in a pool sized to the route's cap and
/// the instances it makes ahead.
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
