//! Serving a node from the library: given its configuration, its state folder and three bound
//! listeners, [`start`] opens the listeners (health probes are answered, live but not ready,
//! while loading), loads what the node serves, and returns once it is ready; the node then
//! serves until the shutdown future completes, and drains. [`serve`] does both in one call.
//!
//! The binary adds only its flags, logging, signals and the lines it prints once ready;
//! tests and programs that embed edge-infer call this directly:
//!
//! ```no_run
//! use edge_infer::node::config::Config;
//! use edge_infer::node::state::StateDir;
//! use edge_infer::serving::Listeners;
//! use tokio::net::TcpListener;
//!
//! # async fn run() -> anyhow::Result<()> {
//! let config = Config::from_file("edge-infer.toml".as_ref())?;
//! let listeners = Listeners {
//!     public: TcpListener::bind("127.0.0.1:8080").await?,
//!     admin: TcpListener::bind("127.0.0.1:9091").await?,
//!     grpc: TcpListener::bind("127.0.0.1:8001").await?,
//! };
//! let state = StateDir::open("/var/lib/edge-infer".as_ref())?;
//! let serving = edge_infer::start(&config, listeners, state, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! println!("ready on {}", serving.addresses().public);
//! serving.finished().await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::http::server::{self, ListenerPolicy, Service};
use crate::http::tls;
use crate::inference::measurements::Measurements;
use crate::inference::residency::ModelMemory;
use crate::node::config::Config;
use crate::node::control::{self, ControlSettings};
use crate::node::models::LoadContext;
use crate::node::oci::Registries;
use crate::node::state::StateDir;
use crate::node::{Node, NodeLimits};
use crate::request::memory::MemoryBudget;
use crate::request::tenant::TenantDirectory;

/// Open files kept for what is not a connection (models, the state folder, the log, pipes),
/// beside the listeners' `max_connections`.
const RESERVED_DESCRIPTORS: u64 = 1024;

/// The three listeners of a node, bound by the caller (to port 0 for an ephemeral port).
pub struct Listeners {
    /// Guest routes, health, metrics, the Open Inference Protocol over REST, the front page.
    pub public: TcpListener,
    /// The admin API (deploys, rollbacks, uploads), behind its bearer token.
    pub admin: TcpListener,
    /// The Open Inference Protocol over gRPC.
    pub grpc: TcpListener,
}

/// Where a started node listens.
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
    /// Whether the listeners speak TLS (`https`, `grpcs`).
    pub tls: bool,
}

/// Why a node did not start, or stopped serving with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "the admin API would listen on {0}, beyond this machine, without a token: set server.admin_token_file"
    )]
    AdminWithoutToken(SocketAddr),
    #[error("reading a listener's address: {0}")]
    Listener(#[source] std::io::Error),
    /// The admin token, the registries' credentials or the TLS certificate could not be read.
    #[error(transparent)]
    Setup(anyhow::Error),
    /// What the node is to serve could not be loaded.
    #[error(transparent)]
    Load(anyhow::Error),
    #[error("a listener's task failed: {0}")]
    Listening(#[source] tokio::task::JoinError),
}

/// A node that has started: it serves until the shutdown future given to [`start`]
/// completes.
pub struct Serving {
    node: Arc<Node>,
    addresses: Addresses,
    listeners: Vec<JoinHandle<()>>,
}

impl Serving {
    /// The node: its routes, models and control plane (to apply a new config, say).
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Where it listens.
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// Completes once every listener has shut down and drained.
    pub async fn finished(self) -> Result<(), ServeError> {
        for listener in self.listeners {
            listener.await.map_err(ServeError::Listening)?;
        }
        Ok(())
    }
}

/// Starts a node serving `config` on `listeners`, keeping its deploys in `state`: returns
/// once it is ready. It serves until `shutdown` completes, then drains (see [`Serving`]).
pub async fn start(
    config: &Config,
    listeners: Listeners,
    state: StateDir,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Serving, ServeError> {
    let server = &config.server;
    let address = |listener: &TcpListener| listener.local_addr().map_err(ServeError::Listener);
    let (public, admin, grpc) =
        (address(&listeners.public)?, address(&listeners.admin)?, address(&listeners.grpc)?);
    if !admin.ip().is_loopback() && server.admin_token_file.is_none() {
        return Err(ServeError::AdminWithoutToken(admin));
    }
    let (admin_token, token_file) =
        control::admin_token(server.admin_token_file.as_deref(), &state).map_err(ServeError::Setup)?;
    if let Some(file) = token_file {
        info!(file = %file.display(), "admin token made");
    }
    let registries =
        Registries::load(server.registry_credentials.as_deref(), server.insecure_registries.clone())
            .map_err(|e| ServeError::Setup(e.into()))?;
    let tls = match (&server.tls_cert, &server.tls_key) {
        (Some(cert), Some(key)) => Some(
            tls::acceptor(cert, key, server.tls_client_ca.as_deref())
                .map_err(|e| ServeError::Setup(e.into()))?,
        ),
        _ => None,
    };
    let addresses = Addresses { public, admin, grpc, tls: tls.is_some() };
    let settings = ControlSettings {
        compilation_cache: server.compilation_cache,
        admin_token,
        max_artifact_bytes: server.max_artifact_bytes,
        repository_changes_on_main_listener: public.ip().is_loopback() || server.admin_token_file.is_some(),
        repository_changes_on_grpc_listener: grpc.ip().is_loopback() || server.admin_token_file.is_some(),
        registries,
        public_listener: (if addresses.tls { "https" } else { "http" }, public.port()),
        models: LoadContext {
            memory: ModelMemory::new(server.model_memory_mib.map(|mib| mib << 20)),
            measurements: Arc::new(measurements(server.remember_measurements, &state)),
        },
    };
    let limits = NodeLimits {
        memory: MemoryBudget::new(usize::try_from(server.memory_budget_mib << 20).unwrap_or(usize::MAX)),
        tenants: TenantDirectory::new(config.tenant_policies(), server.require_credentials),
        max_infer_request_bytes: server.max_infer_request_bytes,
    };
    let node = Arc::new(Node::new(state, settings, limits));

    let mut policies = [Service::Public, Service::Admin, Service::Grpc]
        .map(|service| (service, ListenerPolicy::for_listener(server, service)));
    server::fit_to_descriptor_limit(&mut policies.each_mut().map(|(_, policy)| policy), RESERVED_DESCRIPTORS);
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let stopped = |mut stopping: watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let bound = [listeners.public, listeners.admin, listeners.grpc];
    let tasks = bound
        .into_iter()
        .zip(policies)
        .map(|(listener, (service, policy))| {
            let served = server::serve(
                service,
                listener,
                node.clone(),
                stopped(stopping.clone()),
                policy,
                tls.clone(),
            );
            tokio::spawn(served)
        })
        .collect();
    let serving = Serving { node, addresses, listeners: tasks };
    if let Err(error) = serving.node.start(config).await {
        // Nothing is served: the listeners close before the error is returned.
        serving.listeners.iter().for_each(JoinHandle::abort);
        return Err(ServeError::Load(error));
    }
    Ok(serving)
}

/// Serves `config` on `listeners` until `shutdown` completes, then drains: [`start`], then
/// [`Serving::finished`].
pub async fn serve(
    config: &Config,
    listeners: Listeners,
    state: StateDir,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    start(config, listeners, state, shutdown).await?.finished().await
}

/// Where the node remembers what loading its models measured: `measurements.json` in the
/// state folder, or (with a temporary one) in the user's cache folder; nowhere if
/// `remember` is off or there is no home to keep it in.
fn measurements(remember: bool, state: &StateDir) -> Measurements {
    const FILE: &str = "measurements.json";
    if !remember {
        return Measurements::forgetful();
    }
    if !state.is_temporary() {
        return Measurements::open(state.root().join(FILE));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|folder| !folder.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".cache")));
    match cache {
        Some(folder) => Measurements::open(folder.join("edge-infer").join(FILE)),
        None => Measurements::forgetful(),
    }
}
