//! The `[server]` section: the listeners, their connection limits, TLS, the memory budget,
//! the state folder and the registries: everything process-wide.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Deserialize;

use super::MAX_MIB;

/// The smallest `server.max_header_bytes`.
const MIN_HEADER_BYTES: usize = 8192;

/// Listener and process-wide settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on; `--listen` overrides it.
    pub listen: SocketAddr,
    /// On SIGINT/SIGTERM, how long in-flight requests may run before the process exits.
    pub shutdown_grace_ms: u64,
    /// Keep compiled components in wasmtime's on-disk cache, so a restart skips compilation.
    pub compilation_cache: bool,
    /// Open connections at most; when full, the listener stops accepting until one closes.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers: the first request on a new
    /// connection (HTTP/1.1 or HTTP/2), each next one on an HTTP/1.1 connection (so it is the
    /// idle keep-alive timeout too). Beyond it, the connection is closed.
    pub header_read_timeout_ms: u64,
    /// Largest request head (request line and headers) accepted; larger gets 431 (HTTP/1.1)
    /// or a stream reset (HTTP/2).
    pub max_header_bytes: usize,
    /// Requests one HTTP/2 connection may have in flight at once.
    pub http2_max_concurrent_streams: u32,
    /// Open connections from one client address (an IPv6 client's /64) at most; beyond,
    /// new ones are closed at once. Behind a proxy every client has its address: raise it.
    pub max_connections_per_ip: usize,
    /// How long a response may make no progress because the client does not take it (a
    /// full TCP window, an HTTP/2 window kept at zero); then its connection is closed.
    pub send_timeout_ms: u64,
    /// How often an HTTP/2 connection is pinged (0: never).
    pub http2_keepalive_interval_ms: u64,
    /// How long a ping may go unanswered before the connection is closed.
    pub http2_keepalive_timeout_ms: u64,
    /// The node's memory budget for requests: bodies, decoded tensors, outputs and what
    /// guests make the host hold, together (see `request::memory`).
    pub memory_budget_mib: u64,
    /// Largest Open Inference Protocol infer request: a REST body or a gRPC message.
    pub max_infer_request_bytes: usize,
    /// The memory the loaded models may hold together, in MiB (weights, sessions, arenas, as
    /// measured when each loads). Models load on first use, and the least recently used idle
    /// one is evicted to make room; pinned models never are. Default: no limit.
    pub model_memory_mib: Option<u64>,
    /// Remember what loading each model measured (its engine, batching, memory), so that the
    /// next start decides the same at once: in the state folder, or without one in
    /// `$XDG_CACHE_HOME/edge-infer/` (else `~/.cache/edge-infer/`).
    pub remember_measurements: bool,
    /// Requests without credentials are refused (401) instead of served as the anonymous
    /// tenant.
    pub require_credentials: bool,
    /// Serve HTTPS with this certificate chain (PEM); needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Ask clients for certificates signed by these CAs (PEM) (mTLS); a certificate listed in a
    /// tenant's `client_cert_sha256` names that tenant. Clients without one are still served,
    /// as credentials allow.
    pub tls_client_ca: Option<PathBuf>,
    /// The gRPC listener's own connection limits, where they differ from the ones above.
    pub grpc: ListenerSettings,
    /// The admin listener's own connection limits [default: `max_connections = 64`].
    pub admin: ListenerSettings,
    /// Address of the Open Inference Protocol over gRPC; `--grpc-listen` overrides it.
    pub grpc_listen: SocketAddr,
    /// Address of the admin API (deploys, rollbacks, model loads); `--admin-listen`
    /// overrides it. Off the loopback interface it needs `admin_token_file`.
    pub admin_listen: SocketAddr,
    /// A file holding the admin API's bearer token. Without it, the token is `admin-token`
    /// in the state folder, made at random (owner-only) at the first start on the folder.
    pub admin_token_file: Option<PathBuf>,
    /// The state folder: what was deployed (routes, models, and their files by sha256), so a
    /// restart serves it again; `--state-dir` overrides it. Without one, deploys last until
    /// the process exits.
    pub state_dir: Option<PathBuf>,
    /// Largest file accepted by `PUT /admin/artifacts` and repository loads, in bytes.
    pub max_artifact_bytes: u64,
    /// Credentials for OCI registries, in the Docker config format. Without it, the Docker
    /// config (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`) if there is one.
    pub registry_credentials: Option<PathBuf>,
    /// Registries (`HOST:PORT`) spoken to in plain HTTP; those on loopback always are.
    pub insecure_registries: Vec<String>,
    /// The ONNX Runtime library (`libonnxruntime.so`) to load when `ORT_DYLIB_PATH` is not
    /// set; without either, `libonnxruntime.so` on the library path.
    pub onnxruntime_library: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shutdown_grace_ms: 10_000,
            compilation_cache: true,
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 64 << 10,
            http2_max_concurrent_streams: 256,
            max_connections_per_ip: 256,
            send_timeout_ms: 15_000,
            http2_keepalive_interval_ms: 20_000,
            http2_keepalive_timeout_ms: 10_000,
            memory_budget_mib: 256,
            max_infer_request_bytes: 64 << 20,
            model_memory_mib: None,
            remember_measurements: true,
            require_credentials: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            grpc: ListenerSettings::default(),
            admin: ListenerSettings::default(),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 8001)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            admin_token_file: None,
            state_dir: None,
            max_artifact_bytes: 2 << 30,
            registry_credentials: None,
            insecure_registries: Vec::new(),
            onnxruntime_library: None,
        }
    }
}

/// The admin listener's `max_connections` unless `[server.admin]` sets it.
pub const DEFAULT_ADMIN_CONNECTIONS: usize = 64;

/// One listener's connection limits where they differ from `[server]`'s.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings {
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub header_read_timeout_ms: Option<u64>,
    pub send_timeout_ms: Option<u64>,
    pub http2_max_concurrent_streams: Option<u32>,
}

impl ServerConfig {
    /// Takes the relative paths of its files from `base` (the config file's folder).
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for file in
            [&mut self.tls_cert, &mut self.tls_key, &mut self.tls_client_ca, &mut self.onnxruntime_library]
                .into_iter()
                .flatten()
        {
            *file = base.join(&*file);
        }
    }

    /// Checks the limits the types allow but a listener cannot work with, and that TLS is
    /// given whole. The messages name the field.
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        for (name, value) in [
            ("max_connections", self.max_connections as u64),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("http2_max_concurrent_streams", u64::from(self.http2_max_concurrent_streams)),
            ("max_artifact_bytes", self.max_artifact_bytes),
            ("max_connections_per_ip", self.max_connections_per_ip as u64),
            ("send_timeout_ms", self.send_timeout_ms),
            ("http2_keepalive_timeout_ms", self.http2_keepalive_timeout_ms),
            ("memory_budget_mib", self.memory_budget_mib),
            ("max_infer_request_bytes", self.max_infer_request_bytes as u64),
        ] {
            if value == 0 {
                bail!("field `server.{name}`: must be at least 1");
            }
        }
        for (listener, settings) in [("grpc", &self.grpc), ("admin", &self.admin)] {
            for (name, value) in [
                ("max_connections", settings.max_connections.map(|v| v as u64)),
                ("max_connections_per_ip", settings.max_connections_per_ip.map(|v| v as u64)),
                ("header_read_timeout_ms", settings.header_read_timeout_ms),
                ("send_timeout_ms", settings.send_timeout_ms),
                ("http2_max_concurrent_streams", settings.http2_max_concurrent_streams.map(u64::from)),
            ] {
                if value == Some(0) {
                    bail!("field `server.{listener}.{name}`: must be at least 1");
                }
            }
        }
        for (name, value) in
            [("memory_budget_mib", Some(self.memory_budget_mib)), ("model_memory_mib", self.model_memory_mib)]
        {
            if value.is_some_and(|mib| mib > MAX_MIB) {
                bail!("field `server.{name}`: at most {MAX_MIB}");
            }
        }
        if self.model_memory_mib == Some(0) {
            bail!("field `server.model_memory_mib`: must be at least 1 (leave it out for no limit)");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("fields `server.tls_cert` and `server.tls_key`: give both, or neither");
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            bail!("field `server.tls_client_ca`: needs `tls_cert` and `tls_key` (mTLS is over TLS)");
        }
        // hyper's HTTP/1.1 read buffer cannot be smaller.
        if self.max_header_bytes < MIN_HEADER_BYTES {
            bail!("field `server.max_header_bytes`: must be at least {MIN_HEADER_BYTES}");
        }
        Ok(())
    }
}
