//! The configuration: which models to load, which routes to serve, and the limits of each.
//!
//! It is read from a TOML file (`edge-infer serve --config FILE`), or, with no file, built in
//! code for the bundled examples. Every mistake is reported at start-up with the file and the
//! field it concerns, before anything is loaded. Relative paths in a file are taken from the
//! file's folder.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::inference::backend::BackendKind;
use crate::inference::hints::{self, Declarations, DeclaredSize, TensorDeclaration};
use crate::inference::scheduler::{Batching, DelayPolicy};
use crate::inference::tensor::ElementType;
use crate::node::state::Digest;
use crate::oci::{self, OciReference};
use crate::request::Priority;
use crate::request::tenant::{ANONYMOUS, Rate, TenantPolicy};
use crate::sandbox::capabilities::is_outbound_entry;
use crate::sandbox::imports::GRANTABLE;

/// Resource handles the host itself makes for every request (the request, its response
/// slot, streams): a `max_host_resources` below this could serve nothing.
const MIN_HOST_RESOURCES: u64 = 16;
/// Largest `memory_mib` and `host_memory_mib` (1 TiB): bytes stay far from overflowing.
const MAX_MIB: u64 = 1 << 20;

/// Most executor threads one model may have.
const MAX_EXECUTORS: usize = 1024;

/// The smallest `server.max_header_bytes`.
const MIN_HEADER_BYTES: usize = 8192;

/// Linear memory for the bundled Python and JavaScript guests, whose interpreters need more.
const INTERPRETER_MEMORY_MIB: u64 = 256;

/// Linear memory for the OCR guest: a decoded image, its detection map and a batch of the
/// recognizer's outputs (6 crops × steps × 6,625 classes).
const OCR_MEMORY_MIB: u64 = 256;
/// Largest image the OCR example takes.
const OCR_MAX_BODY_BYTES: usize = 8 << 20;

/// Where `models/onnxruntime/fetch.py` puts the ONNX Runtime library, under `models/`.
const ONNXRUNTIME_LIBRARY: &str = "onnxruntime/libonnxruntime.so.1.31.1";

/// The host's liveness path (also `/v2/health/live`).
pub const HEALTH_PATH: &str = "/healthz";
/// The host's Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";
/// The Open Inference Protocol, under this prefix.
pub const OIP_PREFIX: &str = "/v2";
/// Paths that the host answers itself; no route may take them.
const RESERVED_PATHS: [&str; 3] = [HEALTH_PATH, OIP_PREFIX, METRICS_PATH];

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener and process-wide settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Models by name, loaded once at start-up and shared by every route granted them.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    /// Guest routes, matched by path.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Ensembles by name: pipelines of the models above, served and granted like a model.
    #[serde(default)]
    pub ensembles: BTreeMap<String, EnsembleConfig>,
    /// Tenants by name: who credentials name, their share of contended queues, their limits.
    /// `anonymous` sets those of requests without credentials.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantConfig>,
}

/// One tenant of the node's data plane: the credentials that name it and what it may use.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// SHA-256 digests (hex) of its API keys, sent as `x-api-key: KEY` or
    /// `authorization: Bearer KEY` (`printf %s KEY | sha256sum`).
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
    /// SHA-256 digests (hex) of its client certificates (DER), for mTLS (`server.tls_client_ca`).
    #[serde(default)]
    pub client_cert_sha256: Vec<String>,
    /// Its share of a contended queue against other tenants queued there.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Requests it may have in flight at once on this node; beyond: 429.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Sustained requests a second; beyond (after the burst): 429.
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Requests it may send at once above the rate [default: one second's worth, at least 1].
    #[serde(default)]
    pub burst: Option<u32>,
    /// The highest `x-edge-priority` its requests may ask for; a header asking more gets this.
    #[serde(default, with = "PrioritySetting")]
    pub max_priority: Priority,
}

/// The largest tenant weight.
const MAX_WEIGHT: u32 = 1000;

fn default_weight() -> u32 {
    1
}

#[derive(Deserialize, Serialize)]
#[serde(remote = "Priority", rename_all = "lowercase")]
enum PrioritySetting {
    High,
    Normal,
    Low,
}

impl TenantConfig {
    /// Checks the tenant named `name`.
    fn validate(&self, name: &str) -> anyhow::Result<()> {
        if name == ANONYMOUS && !(self.api_key_sha256.is_empty() && self.client_cert_sha256.is_empty()) {
            bail!("the anonymous tenant has no credentials: name another tenant");
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            bail!("`weight`: from 1 to {MAX_WEIGHT}");
        }
        if self.max_concurrency == Some(0) {
            bail!("`max_concurrency` must be at least 1");
        }
        if self.requests_per_second.is_some_and(|rate| !(rate.is_finite() && rate > 0.0)) {
            bail!("`requests_per_second` must be a number above 0");
        }
        if self.burst == Some(0) {
            bail!("`burst` must be at least 1");
        }
        if self.burst.is_some() && self.requests_per_second.is_none() {
            bail!("`burst` needs `requests_per_second`");
        }
        for (field, digests) in
            [("api_key_sha256", &self.api_key_sha256), ("client_cert_sha256", &self.client_cert_sha256)]
        {
            for (index, digest) in digests.iter().enumerate() {
                parse_digest(digest).with_context(|| format!("`{field}[{index}]`"))?;
            }
        }
        Ok(())
    }

    /// What the tenant named `name` is allowed, for the request layer.
    fn policy(&self, name: &str) -> TenantPolicy {
        let digests = |hex: &[String]| hex.iter().filter_map(|digest| parse_digest(digest).ok()).collect();
        TenantPolicy {
            name: name.to_string(),
            weight: self.weight,
            max_priority: self.max_priority,
            max_concurrency: self.max_concurrency,
            rate: self.requests_per_second.map(|per_second| Rate {
                per_second,
                burst: self.burst.unwrap_or_else(|| per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32),
            }),
            api_keys: digests(&self.api_key_sha256),
            client_certificates: digests(&self.client_cert_sha256),
        }
    }
}

/// A SHA-256 digest written as 64 hex digits.
fn parse_digest(hex: &str) -> anyhow::Result<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        bail!("a SHA-256 digest is 64 hex digits, this has {}", hex.len());
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let text = std::str::from_utf8(pair).ok().filter(|pair| pair.bytes().all(|b| b.is_ascii_hexdigit()));
        *byte = u8::from_str_radix(text.context("not hex digits")?, 16)?;
    }
    Ok(digest)
}

/// A declarative pipeline of models (Triton's ensemble): steps in a graph over named
/// tensors, each step computed through its model's scheduler.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleConfig {
    /// The steps; each starts as soon as the tensors it takes exist.
    pub steps: Vec<EnsembleStep>,
    /// The tensors the ensemble answers with.
    pub outputs: Vec<String>,
}

/// One step of an ensemble.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleStep {
    /// A model of `[models]` (not an ensemble).
    pub model: String,
    /// The ensemble tensor each model input takes, by input name; an input not named takes
    /// the tensor of its own name. Tensors no step produces are the ensemble's inputs.
    #[serde(default)]
    pub input_map: BTreeMap<String, String>,
    /// The ensemble tensor each model output becomes, by output name; an output not named
    /// becomes the tensor of its own name.
    #[serde(default)]
    pub output_map: BTreeMap<String, String>,
}

/// How a model is split into consecutive stages (model parallelism): each stage runs on its
/// own executors and backend, the tensors that cross a cut pass from stage to stage, and
/// the stages of different requests overlap.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// Cut after each of these nodes (names as the ONNX file gives them, in graph order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Or: cut into this many stages of similar cost (weights read), each cut where the fewest
    /// tensors cross.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<usize>,
    /// Each stage's backend, in order [default: the model's `backend` for every stage].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<StageBackend>,
    /// Each stage's executors, in order [default: the model's `executors` for every stage].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub executors: Vec<usize>,
}

/// How one model input or output is declared where the ONNX file leaves it open (no element
/// type, or anonymous free dimensions), for every backend: see [`crate::inference::hints`].
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TensorHint {
    /// Its dimensions, outermost first: a number fixes one, a name makes it free (free
    /// dimensions of the same name have the same size in a run; `batch` batches).
    pub shape: Vec<HintSize>,
    /// Its element type, as the inference protocol names it (`FP32`, `INT64`, …) [default:
    /// the file's].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datatype: Option<String>,
}

/// One dimension of a [`TensorHint`]: a number or a name.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum HintSize {
    Fixed(u64),
    Free(String),
}

impl<'de> Deserialize<'de> for HintSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Size;
        impl serde::de::Visitor<'_> for Size {
            type Value = HintSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size of at least 1, or a name for a free dimension (not -1)")
            }
            fn visit_u64<E: serde::de::Error>(self, size: u64) -> Result<HintSize, E> {
                Ok(HintSize::Fixed(size))
            }
            fn visit_i64<E: serde::de::Error>(self, size: i64) -> Result<HintSize, E> {
                u64::try_from(size)
                    .map(HintSize::Fixed)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(size), &self))
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<HintSize, E> {
                Ok(HintSize::Free(name.to_string()))
            }
        }
        deserializer.deserialize_any(Size)
    }
}

impl TensorHint {
    /// Checks the hint found at `field` (`inputs.x`).
    fn validate(&self, field: &str) -> anyhow::Result<()> {
        if let Some(datatype) = &self.datatype
            && ElementType::from_name(datatype).is_none()
        {
            let names: Vec<&str> = ElementType::protocol_names().collect();
            bail!("`{field}.datatype`: {datatype:?} is none of {}", names.join(", "));
        }
        for (axis, size) in self.declaration().shape.iter().enumerate() {
            if let Err(reason) = hints::check_size(size) {
                bail!("`{field}.shape[{axis}]`: {reason}");
            }
        }
        Ok(())
    }

    /// The declaration the inference layer applies.
    fn declaration(&self) -> TensorDeclaration {
        TensorDeclaration {
            element_type: self.datatype.as_deref().and_then(ElementType::from_name),
            shape: self
                .shape
                .iter()
                .map(|size| match size {
                    HintSize::Fixed(size) => DeclaredSize::Fixed(*size),
                    HintSize::Free(name) => DeclaredSize::Free(name.clone()),
                })
                .collect(),
        }
    }
}

/// Most stages a model may be split into.
pub const MAX_STAGES: usize = 16;

impl SplitConfig {
    /// How many stages the split makes.
    pub fn stage_count(&self) -> usize {
        self.stages.unwrap_or(self.after.len() + 1)
    }

    fn validate(&self) -> anyhow::Result<()> {
        match (self.after.is_empty(), self.stages) {
            (true, None) => bail!("`split`: give `after` (node names) or `stages` (a count)"),
            (false, Some(_)) => bail!("`split`: give `after` or `stages`, not both"),
            (_, Some(stages)) if !(2..=MAX_STAGES).contains(&stages) => {
                bail!("`split.stages`: from 2 to {MAX_STAGES}")
            }
            _ if self.stage_count() > MAX_STAGES => bail!("`split.after`: at most {} cuts", MAX_STAGES - 1),
            _ => {}
        }
        if self.after.iter().any(String::is_empty) {
            bail!("`split.after`: node names cannot be empty");
        }
        for (name, given) in [("backends", self.backends.len()), ("executors", self.executors.len())] {
            if given != 0 && given != self.stage_count() {
                bail!("`split.{name}`: one per stage ({}), or none", self.stage_count());
            }
        }
        if self.executors.iter().any(|&executors| executors == 0 || executors > MAX_EXECUTORS) {
            bail!("`split.executors`: each from 1 to {MAX_EXECUTORS}");
        }
        Ok(())
    }
}

/// A stage's backend, spelt as a model's `backend` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct StageBackend(#[serde(with = "BackendKindSetting")] pub BackendKind);

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

/// Where a component or a model comes from: a file on this machine, an artifact already in
/// the state folder (`sha256:…`, as `PUT /admin/artifacts` answered), or an artifact in an
/// OCI registry (`oci://REGISTRY/REPOSITORY:TAG` or `…@sha256:…`), pulled when deployed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Stored(Digest),
    Oci(OciReference),
}

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Source::File(path) => path.serialize(serializer),
            Source::Stored(digest) => digest.serialize(serializer),
            Source::Oci(reference) => reference.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Source, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.starts_with(oci::SCHEME) {
            text.parse().map(Source::Oci).map_err(serde::de::Error::custom)
        } else if text.starts_with("sha256:") {
            Digest::try_from(text).map(Source::Stored).map_err(serde::de::Error::custom)
        } else {
            Ok(Source::File(text.into()))
        }
    }
}

/// One model. In a config file its `file` is a [`Source`] (`F = Source`); once deployed, the
/// sha256 digest of the file in the state folder.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig<F = Source> {
    /// The ONNX file: a path, or `oci://…`.
    pub file: F,
    /// Which backend runs it.
    #[serde(default, with = "BackendKindSetting")]
    pub backend: BackendKind,
    /// Element types and shapes of inputs the ONNX file leaves open, by input name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, TensorHint>,
    /// The same for outputs, by output name (to name the batch axis an output shares).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, TensorHint>,
    /// Executor threads, each running one inference at a time. Default: one per core.
    pub executors: Option<usize>,
    /// Jobs that may wait for an executor; beyond that, requests are refused (503).
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Whether to batch requests: `auto` (measured at start-up), `on` or `off`.
    #[serde(default, with = "BatchingSetting")]
    pub batching: Batching,
    /// Most items (along the batch axis) in one run. Default: 32 on the CPU, 128 on a GPU.
    pub max_batch_size: Option<usize>,
    /// The longest the batcher may hold the first request of a batch waiting for more, in µs.
    #[serde(default = "default_max_queue_delay_us")]
    pub max_queue_delay_us: u64,
    /// `adaptive`: wait only while waiting brings more requests (0 at low load); `fixed`:
    /// always wait up to `max_queue_delay_us`.
    #[serde(default, with = "DelayPolicySetting")]
    pub queue_delay: DelayPolicy,
    /// Requests of different lengths share a batch while padding stays within this share of
    /// the batch's elements (0: only equal lengths). Default: 0.2 for models with a mask
    /// input (which mask padded positions), 0 for others.
    #[serde(default)]
    pub max_padding_ratio: Option<f64>,
    /// The value each input is padded with, by input name (default 0).
    #[serde(default)]
    pub pad_values: BTreeMap<String, f64>,
    /// Result cache entries (0: no cache).
    #[serde(default)]
    pub cache_entries: usize,
    /// Bytes the result cache may hold (outputs and keys); the oldest entries go first.
    #[serde(default = "default_cache_max_bytes")]
    pub cache_max_bytes: u64,
    /// How long a cached result is served, in ms.
    #[serde(default = "default_cache_ttl_ms")]
    pub cache_ttl_ms: u64,
    /// When the queue is full, serve an expired cached result instead of refusing.
    #[serde(default)]
    pub serve_stale_on_overload: bool,
    /// Run the model split into stages (see [`SplitConfig`]); the other settings apply to
    /// every stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitConfig>,
}

// How the config file spells the inference layer's choices (which know nothing of file
// formats): serde checks at compile time that these list the same variants.

#[derive(Deserialize, Serialize)]
#[serde(remote = "BackendKind", rename_all = "lowercase")]
enum BackendKindSetting {
    Auto,
    Cpu,
    Gpu,
    Tract,
    Ort,
}

#[derive(Deserialize, Serialize)]
#[serde(remote = "Batching", rename_all = "lowercase")]
enum BatchingSetting {
    Auto,
    On,
    Off,
}

#[derive(Deserialize, Serialize)]
#[serde(remote = "DelayPolicy", rename_all = "lowercase")]
enum DelayPolicySetting {
    Adaptive,
    Fixed,
}

/// One guest route. In a config file its `component` is a [`Source`] (`C = Source`); once
/// deployed, the sha256 digest of the component in the state folder.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig<C = Source> {
    /// The route's name in the admin API [default: its path without the leading `/`, with
    /// `-` for each further `/`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The path it serves, e.g. `/digits`; it also serves every path below (`/digits/...`).
    pub path: String,
    /// The guest component: a `.wasm` path, or `oci://…`.
    pub component: C,
    /// The models the guest may load by name.
    #[serde(default)]
    pub models: Vec<String>,
    /// Instances of this route that may run at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Requests that may wait for an instance; beyond that the answer is 503.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// Instances made ahead of requests, so that a request finds its instance made. Each is
    /// still used by one request only; they hold pool slots and memory beside
    /// `max_concurrency`. 0 makes every instance when its request arrives.
    #[serde(default = "default_ready_instances")]
    pub ready_instances: usize,
    /// Linear memory one instance may use, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Host memory one instance may make the host hold for it (`wasi:nn` tensors, model
    /// outputs, models loaded from bytes), in MiB [default: `memory_mib`].
    #[serde(default)]
    pub host_memory_mib: Option<u64>,
    /// Resource handles (tensors, HTTP fields, streams, ...) one instance may hold at once.
    #[serde(default = "default_max_host_resources")]
    pub max_host_resources: usize,
    /// Deadline of one request, from arrival to the end of the guest's work, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest request body accepted, in bytes; larger gets 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Longest response body a guest may send, in bytes; beyond it the response is cut off
    /// as unfinished (the connection closed, or the HTTP/2 stream reset).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Whether the guest may load models from raw bytes (`wasi:nn/graph.load`). Guests are
    /// untrusted, so this is off unless granted.
    #[serde(default)]
    pub allow_model_load: bool,
    /// Hosts the guest may send HTTP requests to: `"host"` (any port) or `"host:port"`. Any
    /// other request is denied.
    #[serde(default)]
    pub outbound_http: Vec<String>,
    /// Folders the guest may read, by the path it sees: `{ "/data" = "/srv/edge/data" }`.
    #[serde(default)]
    pub read_only_dirs: BTreeMap<String, PathBuf>,
    /// Allow only the guest world (`wasi:http/proxy` + `wasi:nn`) and `grant`ed packages as
    /// imports, instead of all of WASI 0.2 with its capabilities closed.
    #[serde(default)]
    pub strict_imports: bool,
    /// With `strict_imports`: WASI packages beyond the guest world the component may import
    /// (`wasi:filesystem`, `wasi:sockets`), linked but without access.
    #[serde(default)]
    pub grant: Vec<String>,
}

fn default_max_response_bytes() -> u64 {
    64 << 20
}
fn default_max_host_resources() -> usize {
    1_000
}
fn default_queue_capacity() -> usize {
    1024
}
fn default_max_queue_delay_us() -> u64 {
    2_000
}
fn default_cache_max_bytes() -> u64 {
    64 << 20
}
fn default_cache_ttl_ms() -> u64 {
    60_000
}
fn default_max_concurrency() -> usize {
    64
}
fn default_ready_instances() -> usize {
    1
}
fn default_max_queue() -> usize {
    256
}
fn default_memory_mib() -> u64 {
    64
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_max_body_bytes() -> usize {
    1 << 20
}

impl Config {
    /// Reads, parses and checks a configuration file.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses and checks a configuration, taking relative paths from `base`.
    pub fn from_toml(text: &str, base: &Path) -> anyhow::Result<Config> {
        let deserializer = toml::Deserializer::parse(text)?;
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field = e.path().to_string();
            anyhow::anyhow!("field `{field}`: {}", e.into_inner().message())
        })?;
        let in_base = |source: &mut Source| {
            if let Source::File(path) = source {
                *path = base.join(&*path);
            }
        };
        for model in config.models.values_mut() {
            in_base(&mut model.file);
        }
        let server = &mut config.server;
        for file in [
            &mut server.tls_cert,
            &mut server.tls_key,
            &mut server.tls_client_ca,
            &mut server.onnxruntime_library,
        ]
        .into_iter()
        .flatten()
        {
            *file = base.join(&*file);
        }
        for route in &mut config.routes {
            in_base(&mut route.component);
            for folder in route.read_only_dirs.values_mut() {
                *folder = base.join(&*folder);
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// The bundled examples: digits, voice activity and hello, from this build, and those
    /// whose parts are there: the Python and JavaScript digits guests once built, `/embed`
    /// once its model is fetched. Logs, for each one left out, the command that enables it.
    pub fn bundled() -> Config {
        let guests = Path::new(env!("EDGE_INFER_GUEST_DIR"));
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let (config, left_out) = Self::bundled_from(guests, &models);
        for note in left_out {
            info!("{note}");
        }
        config
    }

    /// The bundled examples with guests from `guests` and models from `models`, and a line for
    /// each example left out, saying how to enable it.
    fn bundled_from(guests: &Path, models: &Path) -> (Config, Vec<String>) {
        let mut left_out = Vec::new();
        let route = |path: &str, component: &str, models: &[&str]| RouteConfig {
            name: None,
            path: path.into(),
            component: Source::File(guests.join(component)),
            models: models.iter().map(|m| m.to_string()).collect(),
            max_concurrency: default_max_concurrency(),
            ready_instances: default_ready_instances(),
            max_queue: default_max_queue(),
            memory_mib: default_memory_mib(),
            host_memory_mib: None,
            max_host_resources: default_max_host_resources(),
            timeout_ms: default_timeout_ms(),
            max_body_bytes: default_max_body_bytes(),
            max_response_bytes: default_max_response_bytes(),
            allow_model_load: false,
            outbound_http: Vec::new(),
            read_only_dirs: BTreeMap::new(),
            strict_imports: false,
            grant: Vec::new(),
        };
        let model = |file: &str| ModelConfig {
            file: Source::File(models.join(file)),
            backend: BackendKind::Auto,
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            executors: None,
            queue_capacity: default_queue_capacity(),
            batching: Batching::Auto,
            max_batch_size: None,
            max_queue_delay_us: default_max_queue_delay_us(),
            queue_delay: DelayPolicy::Adaptive,
            max_padding_ratio: None,
            pad_values: BTreeMap::new(),
            cache_entries: 0,
            cache_max_bytes: default_cache_max_bytes(),
            cache_ttl_ms: default_cache_ttl_ms(),
            serve_stale_on_overload: false,
            split: None,
        };
        let mut routes = vec![
            route("/digits", "digits.wasm", &["digits"]),
            route("/hello", "hello.wasm", &[]),
            route("/vad", "vad.wasm", &["vad"]),
        ];
        // The Python and JavaScript guests, when guest/build-py-js.sh has built them.
        for (path, file) in [("/digits-py", "digits-py.wasm"), ("/digits-js", "digits-js.wasm")] {
            if guests.join(file).is_file() {
                routes.push(RouteConfig {
                    memory_mib: INTERPRETER_MEMORY_MIB,
                    ..route(path, file, &["digits"])
                });
            } else {
                left_out.push(format!(
                    "example {path} is not served: its guest is not built (run guest/build-py-js.sh {})",
                    guests.display()
                ));
            }
        }
        let mut bundled_models = BTreeMap::from([
            ("digits".to_string(), model("digits/digits.onnx")),
            ("vad".to_string(), model("vad/silero_vad_16k.onnx")),
        ]);
        let mut ensembles = BTreeMap::new();
        // The embedding model, when models/minilm/fetch.py has fetched it (it is not in git);
        // and over the Open Inference Protocol, an ensemble of it and a mean-pooling model:
        // token ids in, sentence embeddings out.
        if models.join("minilm/model-float.onnx").is_file() {
            bundled_models.insert("minilm".to_string(), model("minilm/model-float.onnx"));
            bundled_models.insert("mean-pooling".to_string(), model("minilm/pooling.onnx"));
            routes.push(route("/embed", "embed.wasm", &["minilm"]));
            let step = |model: &str, output_map: &[(&str, &str)]| EnsembleStep {
                model: model.into(),
                input_map: BTreeMap::new(),
                output_map: output_map.iter().map(|(from, to)| (from.to_string(), to.to_string())).collect(),
            };
            ensembles.insert(
                "sentence-embedding".to_string(),
                EnsembleConfig {
                    steps: vec![
                        step("minilm", &[("last_hidden_state", "token_embeddings")]),
                        step("mean-pooling", &[]),
                    ],
                    outputs: vec!["sentence_embedding".into()],
                },
            );
        } else {
            left_out.push(
                "example /embed is not served: its model is not fetched (run python3 models/minilm/fetch.py)"
                    .into(),
            );
        }
        // ONNX Runtime, when models/onnxruntime/fetch.py has fetched it: `backend = "auto"`
        // then runs each model on whichever of it and tract is faster.
        let onnxruntime = models.join(ONNXRUNTIME_LIBRARY);
        // OCR, a pipeline of three models, when models/ocr/fetch.py has fetched them. They
        // run on ONNX Runtime: tract cannot type them with a free batch size (see README).
        let ocr_models = ["det", "cls", "rec"].map(|stage| models.join(format!("ocr/{stage}.onnx")));
        if ocr_models.iter().all(|file| file.is_file()) && onnxruntime.is_file() {
            let hint = |shape: &[&str]| TensorHint {
                shape: shape
                    .iter()
                    .map(|size| {
                        size.parse().map_or_else(|_| HintSize::Free(size.to_string()), HintSize::Fixed)
                    })
                    .collect(),
                datatype: None,
            };
            let ocr_model = |file: &str, (input, output): (&[&str], (&str, &[&str]))| ModelConfig {
                backend: BackendKind::Ort,
                inputs: BTreeMap::from([("x".to_string(), hint(input))]),
                outputs: BTreeMap::from([(output.0.to_string(), hint(output.1))]),
                ..model(file)
            };
            let pixels: &[&str] = &["batch", "3", "height", "width"];
            bundled_models.insert(
                "ocr-det".into(),
                ocr_model("ocr/det.onnx", (pixels, ("sigmoid_0.tmp_0", &["batch", "1", "height", "width"]))),
            );
            bundled_models.insert(
                "ocr-cls".into(),
                ocr_model(
                    "ocr/cls.onnx",
                    (&["batch", "3", "48", "192"], ("save_infer_model/scale_0.tmp_1", &["batch", "2"])),
                ),
            );
            bundled_models.insert(
                "ocr-rec".into(),
                ocr_model(
                    "ocr/rec.onnx",
                    (&["batch", "3", "48", "width"], ("softmax_11.tmp_0", &["batch", "steps", "6625"])),
                ),
            );
            routes.push(RouteConfig {
                memory_mib: OCR_MEMORY_MIB,
                max_body_bytes: OCR_MAX_BODY_BYTES,
                ..route("/ocr", "ocr.wasm", &["ocr-det", "ocr-cls", "ocr-rec"])
            });
        } else {
            left_out.push(
                "example /ocr is not served: its models or ONNX Runtime are not fetched (run python3 models/ocr/fetch.py and python3 models/onnxruntime/fetch.py)"
                    .into(),
            );
        }
        let server = ServerConfig {
            onnxruntime_library: onnxruntime.is_file().then_some(onnxruntime),
            ..ServerConfig::default()
        };
        (Config { server, models: bundled_models, routes, ensembles, tenants: BTreeMap::new() }, left_out)
    }

    /// What each configured tenant is allowed, for the request layer.
    pub fn tenant_policies(&self) -> Vec<TenantPolicy> {
        self.tenants.iter().map(|(name, tenant)| tenant.policy(name)).collect()
    }

    /// Checks what the types alone cannot: unique paths and names, known models, sane limits.
    fn validate(&self) -> anyhow::Result<()> {
        let server = &self.server;
        for (name, value) in [
            ("max_connections", server.max_connections as u64),
            ("header_read_timeout_ms", server.header_read_timeout_ms),
            ("http2_max_concurrent_streams", u64::from(server.http2_max_concurrent_streams)),
            ("max_artifact_bytes", server.max_artifact_bytes),
            ("max_connections_per_ip", server.max_connections_per_ip as u64),
            ("send_timeout_ms", server.send_timeout_ms),
            ("http2_keepalive_timeout_ms", server.http2_keepalive_timeout_ms),
            ("memory_budget_mib", server.memory_budget_mib),
            ("max_infer_request_bytes", server.max_infer_request_bytes as u64),
        ] {
            if value == 0 {
                bail!("field `server.{name}`: must be at least 1");
            }
        }
        for (listener, settings) in [("grpc", &server.grpc), ("admin", &server.admin)] {
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
        if server.memory_budget_mib > MAX_MIB {
            bail!("field `server.memory_budget_mib`: at most {MAX_MIB}");
        }
        if server.tls_cert.is_some() != server.tls_key.is_some() {
            bail!("fields `server.tls_cert` and `server.tls_key`: give both, or neither");
        }
        if server.tls_client_ca.is_some() && server.tls_cert.is_none() {
            bail!("field `server.tls_client_ca`: needs `tls_cert` and `tls_key` (mTLS is over TLS)");
        }
        let mut credentials = HashSet::new();
        for (name, tenant) in &self.tenants {
            check_route_name(name).with_context(|| format!("field `tenants.{name}`"))?;
            tenant.validate(name).with_context(|| format!("field `tenants.{name}`"))?;
            let policy = tenant.policy(name);
            if let Some(shared) = policy
                .api_keys
                .iter()
                .chain(&policy.client_certificates)
                .find(|digest| !credentials.insert(**digest))
            {
                let hex: String = shared.iter().map(|byte| format!("{byte:02x}")).collect();
                bail!("field `tenants.{name}`: credential {hex} names another tenant too");
            }
        }
        if server.require_credentials
            && !self
                .tenants
                .values()
                .any(|t| !t.api_key_sha256.is_empty() || !t.client_cert_sha256.is_empty())
        {
            bail!(
                "field `server.require_credentials`: no tenant has credentials, so nothing could be served"
            );
        }
        // hyper's HTTP/1.1 read buffer cannot be smaller.
        if server.max_header_bytes < MIN_HEADER_BYTES {
            bail!("field `server.max_header_bytes`: must be at least {MIN_HEADER_BYTES}");
        }
        for (name, model) in &self.models {
            check_model_name(name).with_context(|| format!("field `models.{name}`"))?;
            model.validate().with_context(|| format!("field `models.{name}`"))?;
        }
        let mut paths = HashSet::new();
        let mut names = HashSet::new();
        for (name, ensemble) in &self.ensembles {
            check_model_name(name).with_context(|| format!("field `ensembles.{name}`"))?;
            if self.models.contains_key(name) {
                bail!("field `ensembles.{name}`: a model has that name");
            }
            ensemble
                .validate(|model| self.models.contains_key(model))
                .with_context(|| format!("field `ensembles.{name}`"))?;
        }
        for (index, route) in self.routes.iter().enumerate() {
            let field = format!("routes[{index}]");
            route
                .validate(|model| self.models.contains_key(model) || self.ensembles.contains_key(model))
                .with_context(|| format!("field `{field}`"))?;
            check_route_name(&route.name()).with_context(|| format!("field `{field}.name`"))?;
            if !paths.insert(route.path.as_str()) {
                bail!("field `{field}.path`: {:?} is served by an earlier route", route.path);
            }
            if !names.insert(route.name()) {
                bail!("field `{field}.name`: {:?} names an earlier route", route.name());
            }
        }
        Ok(())
    }
}

impl<F> ModelConfig<F> {
    /// Checks the limits the types allow but a model cannot work with.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, value) in [
            ("queue_capacity", Some(self.queue_capacity)),
            ("executors", self.executors),
            ("max_batch_size", self.max_batch_size),
        ] {
            if value == Some(0) {
                bail!("`{name}` must be at least 1");
            }
        }
        if self.max_padding_ratio.is_some_and(|ratio| !(0.0..1.0).contains(&ratio)) {
            bail!("`max_padding_ratio` must be at least 0 and below 1");
        }
        if let Some((input, _)) = self.pad_values.iter().find(|(_, value)| !value.is_finite()) {
            bail!("`pad_values.{input}` must be a finite number");
        }
        if self.executors.is_some_and(|executors| executors > MAX_EXECUTORS) {
            bail!("`executors`: at most {MAX_EXECUTORS}");
        }
        for (side, hints) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            for (name, hint) in hints {
                hint.validate(&format!("{side}.{name}"))?;
            }
        }
        if let Some(split) = &self.split {
            split.validate()?;
            if self.cache_entries > 0 {
                bail!("`cache_entries`: a split model has no result cache");
            }
        }
        Ok(())
    }

    /// What the model's `inputs` and `outputs` declare, for the inference layer.
    pub fn declarations(&self) -> Declarations {
        let declare = |hints: &BTreeMap<String, TensorHint>| {
            hints.iter().map(|(name, hint)| (name.clone(), hint.declaration())).collect()
        };
        Declarations { inputs: declare(&self.inputs), outputs: declare(&self.outputs) }
    }

    /// The same model with its file replaced by `file`.
    pub fn with_file<G>(self, file: G) -> ModelConfig<G> {
        let ModelConfig {
            file: _,
            backend,
            inputs,
            outputs,
            executors,
            queue_capacity,
            batching,
            max_batch_size,
            max_queue_delay_us,
            queue_delay,
            max_padding_ratio,
            pad_values,
            cache_entries,
            cache_max_bytes,
            cache_ttl_ms,
            serve_stale_on_overload,
            split,
        } = self;
        ModelConfig {
            file,
            backend,
            inputs,
            outputs,
            executors,
            queue_capacity,
            batching,
            max_batch_size,
            max_queue_delay_us,
            queue_delay,
            max_padding_ratio,
            pad_values,
            cache_entries,
            cache_max_bytes,
            cache_ttl_ms,
            serve_stale_on_overload,
            split,
        }
    }
}

impl EnsembleConfig {
    /// Checks what needs no loaded model: steps and outputs given, each step's model known
    /// (`is_model`). How the tensors connect is checked when the models are loaded.
    pub fn validate(&self, is_model: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        if self.steps.is_empty() || self.outputs.is_empty() {
            bail!("give at least one step and one output");
        }
        for (index, step) in self.steps.iter().enumerate() {
            if !is_model(&step.model) {
                bail!(
                    "`steps[{index}].model`: no model named {:?} (an ensemble's steps are models)",
                    step.model
                );
            }
        }
        Ok(())
    }
}

impl<C> RouteConfig<C> {
    /// The route's name: `name`, else its path without the leading `/` (`/a/b` is `a-b`).
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.path.trim_start_matches('/').replace('/', "-"))
    }

    /// Checks one route on its own: its name and path, grants, limits, folders, and that
    /// each model it names passes `model_exists`. The messages name the field.
    pub fn validate(&self, model_exists: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        let path = self.path.as_str();
        if !path.starts_with('/') || path.len() < 2 || path.ends_with('/') {
            bail!("`path`: {path:?} must start with '/', name something, and not end with '/'");
        }
        if RESERVED_PATHS.iter().any(|reserved| path_matches(path, reserved)) {
            bail!("`path`: {path:?} is reserved for the host ({RESERVED_PATHS:?})");
        }
        for package in &self.grant {
            if !GRANTABLE.contains(&package.as_str()) {
                bail!("`grant`: {package:?} cannot be granted; the choices are {GRANTABLE:?}");
            }
        }
        if let Some(entry) = self.outbound_http.iter().find(|entry| !is_outbound_entry(entry)) {
            bail!("`outbound_http`: {entry:?} is not a host or host:port");
        }
        for (name, value, floor) in [
            ("max_host_resources", self.max_host_resources as u64, MIN_HOST_RESOURCES),
            ("max_response_bytes", self.max_response_bytes, 1),
            ("memory_mib", self.memory_mib, 1),
            ("host_memory_mib", self.host_memory_mib.unwrap_or(self.memory_mib), 1),
            ("max_concurrency", self.max_concurrency as u64, 1),
            ("timeout_ms", self.timeout_ms, 1),
        ] {
            if value < floor {
                bail!("`{name}` must be at least {floor}");
            }
        }
        if self.ready_instances > self.max_concurrency {
            bail!("`ready_instances` must be at most `max_concurrency` ({})", self.max_concurrency);
        }
        for (name, mib) in
            [("memory_mib", self.memory_mib), ("host_memory_mib", self.host_memory_mib.unwrap_or(0))]
        {
            if mib > MAX_MIB {
                bail!("`{name}`: at most {MAX_MIB} MiB");
            }
        }
        for (guest, folder) in &self.read_only_dirs {
            if !guest.starts_with('/') {
                bail!("`read_only_dirs`: {guest:?} must be an absolute path, as the guest sees it");
            }
            if !folder.is_dir() {
                bail!("`read_only_dirs.{guest:?}`: {} is not a folder", folder.display());
            }
        }
        if let Some(model) = self.models.iter().find(|model| !model_exists(model)) {
            bail!("`models`: no model named {model:?} is loaded");
        }
        Ok(())
    }

    /// The same route with its component replaced by `component`.
    pub fn with_component<D>(self, component: D) -> RouteConfig<D> {
        let RouteConfig {
            name,
            path,
            component: _,
            models,
            max_concurrency,
            max_queue,
            ready_instances,
            memory_mib,
            host_memory_mib,
            max_host_resources,
            timeout_ms,
            max_body_bytes,
            max_response_bytes,
            allow_model_load,
            outbound_http,
            read_only_dirs,
            strict_imports,
            grant,
        } = self;
        RouteConfig {
            name,
            path,
            component,
            models,
            max_concurrency,
            max_queue,
            ready_instances,
            memory_mib,
            host_memory_mib,
            max_host_resources,
            timeout_ms,
            max_body_bytes,
            max_response_bytes,
            allow_model_load,
            outbound_http,
            read_only_dirs,
            strict_imports,
            grant,
        }
    }
}

/// Route names: what the admin API's URLs and the state folder can carry.
pub fn check_route_name(name: &str) -> anyhow::Result<()> {
    check_name(name, "route")
}

/// Model names, as the Open Inference Protocol's URLs carry them.
pub fn check_model_name(name: &str) -> anyhow::Result<()> {
    check_name(name, "model")
}

fn check_name(name: &str, what: &str) -> anyhow::Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 128 || name.starts_with('.') || !name.chars().all(allowed) {
        bail!("{what} name {name:?}: use 1 to 128 letters, digits, '-', '_' or '.', not starting with '.'");
    }
    Ok(())
}

/// Whether a request path falls under a route path: the path itself or anything below it.
pub fn path_matches(request_path: &str, route_path: &str) -> bool {
    request_path.strip_prefix(route_path).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::from_toml(text, Path::new("/etc/edge"))
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn parses_a_full_config_with_defaults() {
        let config = parse(
            r#"
            [server]
            listen = "0.0.0.0:9000"
            [models.digits]
            file = "digits.onnx"
            executors = 2
            [[routes]]
            path = "/digits"
            component = "/opt/digits.wasm"
            models = ["digits"]
            timeout_ms = 500
            "#,
        )
        .unwrap();
        assert_eq!(config.server.listen.port(), 9000);
        assert_eq!(config.models["digits"].file, Source::File("/etc/edge/digits.onnx".into()));
        assert_eq!(config.models["digits"].executors, Some(2));
        let digits = &config.models["digits"];
        assert_eq!((digits.max_queue_delay_us, digits.queue_delay), (2000, DelayPolicy::Adaptive));
        assert_eq!((digits.max_padding_ratio, digits.pad_values.len()), (None, 0));
        let route = &config.routes[0];
        assert_eq!(route.component, Source::File("/opt/digits.wasm".into()));
        assert_eq!((route.timeout_ms, route.max_concurrency, route.memory_mib), (500, 64, 64));
        assert_eq!(route.ready_instances, 1);
        assert!(!route.allow_model_load);
    }

    #[test]
    fn a_route_makes_ahead_at_most_as_many_instances_as_it_runs() {
        let route = "[[routes]]\npath = \"/a\"\ncomponent = \"a.wasm\"\nmax_concurrency = 2\n";
        assert_eq!(parse(&format!("{route}ready_instances = 2")).unwrap().routes[0].ready_instances, 2);
        assert_eq!(parse(&format!("{route}ready_instances = 0")).unwrap().routes[0].ready_instances, 0);
        let bad = error(&format!("{route}ready_instances = 3"));
        assert!(bad.contains("`ready_instances` must be at most `max_concurrency` (2)"), "{bad}");
    }

    #[test]
    fn files_are_paths_digests_or_oci_references() {
        let digest = format!("sha256:{}", "0a".repeat(32));
        let config = parse(&format!(
            "[models.m]\nfile = \"oci://registry.example:5000/models/m@{digest}\"\n[models.n]\nfile = \"{digest}\"\n\
             [[routes]]\npath = \"/a\"\ncomponent = \"oci://registry.example/guests/a:v1\"\nmodels = [\"m\"]\n"
        ))
        .unwrap();
        let Source::Oci(model) = &config.models["m"].file else { panic!("{:?}", config.models["m"].file) };
        assert_eq!(model.digest(), Some(digest.clone()));
        assert_eq!(config.models["n"].file, Source::Stored(Digest::try_from(digest).unwrap()));
        assert!(matches!(&config.routes[0].component, Source::Oci(r) if r.digest().is_none()));
        let bad = error("[[routes]]\npath = \"/a\"\ncomponent = \"oci://guests/a:v1\"");
        assert!(bad.contains("routes[0].component") && bad.contains("name the registry"), "{bad}");
    }

    #[test]
    fn errors_name_the_field() {
        let bad_type = error("[[routes]]\npath = \"/a\"\ncomponent = \"a.wasm\"\nmax_concurrency = \"lots\"");
        assert!(bad_type.contains("routes[0].max_concurrency"), "{bad_type}");
        let unknown = error("[models.m]\nfile = \"m.onnx\"\nexecuters = 2");
        assert!(unknown.contains("executers"), "{unknown}");
        let missing = error("[[routes]]\npath = \"/a\"");
        assert!(missing.contains("component"), "{missing}");
        let bad_model = error("[[routes]]\npath = \"/a\"\ncomponent = \"a.wasm\"\nmodels = [\"nope\"]");
        assert!(bad_model.contains("`routes[0]`: `models`") && bad_model.contains("nope"), "{bad_model}");
        let reserved = error("[[routes]]\npath = \"/v2/x\"\ncomponent = \"a.wasm\"");
        assert!(reserved.contains("`routes[0]`: `path`") && reserved.contains("reserved"), "{reserved}");
        let padding = error("[models.m]\nfile = \"m.onnx\"\nmax_padding_ratio = 1.0");
        assert!(padding.contains("`models.m`: `max_padding_ratio`"), "{padding}");
        let policy = error("[models.m]\nfile = \"m.onnx\"\nqueue_delay = \"sometimes\"");
        assert!(policy.contains("models.m.queue_delay"), "{policy}");
        let zero = error("[[routes]]\npath = \"/a\"\ncomponent = \"a.wasm\"\ntimeout_ms = 0");
        assert!(zero.contains("`routes[0]`: `timeout_ms`"), "{zero}");
        let duplicate = error(
            "[[routes]]\npath = \"/a\"\ncomponent = \"a.wasm\"\n[[routes]]\npath = \"/a\"\ncomponent = \"b.wasm\"",
        );
        assert!(duplicate.contains("routes[1].path"), "{duplicate}");
    }

    #[test]
    fn tensor_declarations_are_read_and_checked() {
        let config = parse(
            "[models.m]\nfile = \"m.onnx\"\ninputs.x = { shape = [\"batch\", 3, \"width\"], datatype = \"FP32\" }\noutputs.y.shape = [\"batch\", 2]",
        )
        .unwrap();
        let declared = config.models["m"].declarations();
        let x = &declared.inputs["x"];
        assert_eq!(x.element_type, Some(ElementType::F32));
        let free = |name: &str| DeclaredSize::Free(name.into());
        assert_eq!(x.shape, [free("batch"), DeclaredSize::Fixed(3), free("width")]);
        assert_eq!(declared.outputs["y"].shape, [free("batch"), DeclaredSize::Fixed(2)]);
        assert_eq!(declared.outputs["y"].element_type, None);
        let datatype =
            error("[models.m]\nfile = \"m.onnx\"\ninputs.x = { shape = [1], datatype = \"FLOAT\" }");
        assert!(datatype.contains("`models.m`: `inputs.x.datatype`: \"FLOAT\" is none of"), "{datatype}");
        let zero = error("[models.m]\nfile = \"m.onnx\"\noutputs.y.shape = [\"batch\", 0]");
        assert!(zero.contains("`outputs.y.shape[1]`: a fixed size is at least 1"), "{zero}");
        let blank = error("[models.m]\nfile = \"m.onnx\"\ninputs.x.shape = [\" \"]");
        assert!(blank.contains("`inputs.x.shape[0]`: a free dimension needs a name"), "{blank}");
        let negative = error("[models.m]\nfile = \"m.onnx\"\ninputs.x.shape = [-1]");
        assert!(negative.contains("models.m.inputs.x.shape"), "{negative}");
        assert!(negative.contains("a name for a free dimension (not -1)"), "{negative}");
    }

    #[test]
    fn routes_are_named_by_their_path_unless_named() {
        let config = parse(
            "[[routes]]\npath = \"/a/b\"\ncomponent = \"a.wasm\"\n[[routes]]\npath = \"/c\"\nname = \"see\"\ncomponent = \"c.wasm\"",
        )
        .unwrap();
        assert_eq!((config.routes[0].name(), config.routes[1].name()), ("a-b".into(), "see".into()));
        let clash = error(
            "[[routes]]\npath = \"/a-b\"\ncomponent = \"a.wasm\"\n[[routes]]\npath = \"/a/b\"\ncomponent = \"b.wasm\"",
        );
        assert!(clash.contains("routes[1].name") && clash.contains("a-b"), "{clash}");
        let bad = error("[[routes]]\npath = \"/a\"\nname = \"../etc\"\ncomponent = \"a.wasm\"");
        assert!(bad.contains("`routes[0].name`") && bad.contains("letters"), "{bad}");
        let model = error("[models.\"a/b\"]\nfile = \"m.onnx\"");
        assert!(model.contains("models.a/b") && model.contains("model name"), "{model}");
    }

    #[test]
    fn the_readme_example_is_a_valid_config() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## Configuration").unwrap()..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let example = &section[start..start + section[start..].find("```").unwrap()];
        let config = parse(example).unwrap();
        assert_eq!(config.routes[0].path, "/digits");
        assert_eq!(config.models["digits"].executors, Some(2));
        assert_eq!(config.models["minilm"].split.as_ref().map(SplitConfig::stage_count), Some(2));
        assert_eq!(config.ensembles["sentence-embedding"].steps[1].model, "mean-pooling");
        assert_eq!(config.models["ocr-rec"].declarations().outputs["softmax_11.tmp_0"].shape.len(), 3);
    }

    #[test]
    fn bundled_examples_left_out_say_how_to_enable_them() {
        let empty = tempfile::tempdir().unwrap();
        let (config, left_out) = Config::bundled_from(empty.path(), empty.path());
        let paths: Vec<&str> = config.routes.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/digits", "/hello", "/vad"]);
        assert_eq!(config.server.onnxruntime_library, None);
        assert_eq!(left_out.len(), 4, "{left_out:?}");
        assert!(left_out[0].contains("/digits-py") && left_out[0].contains("guest/build-py-js.sh"));
        assert!(left_out[2].contains("/embed") && left_out[2].contains("models/minilm/fetch.py"));
        assert!(left_out[3].contains("/ocr") && left_out[3].contains("models/ocr/fetch.py"));

        std::fs::create_dir_all(empty.path().join("minilm")).unwrap();
        std::fs::write(empty.path().join("minilm/model-float.onnx"), b"").unwrap();
        std::fs::write(empty.path().join("digits-js.wasm"), b"").unwrap();
        std::fs::create_dir_all(empty.path().join("onnxruntime")).unwrap();
        std::fs::write(empty.path().join(ONNXRUNTIME_LIBRARY), b"").unwrap();
        let (config, left_out) = Config::bundled_from(empty.path(), empty.path());
        assert_eq!(config.server.onnxruntime_library, Some(empty.path().join(ONNXRUNTIME_LIBRARY)));
        assert!(config.routes.iter().any(|r| r.path == "/embed") && config.models.contains_key("minilm"));
        assert!(config.routes.iter().any(|r| r.path == "/digits-js"));
        assert_eq!(left_out.len(), 2, "only /digits-py and /ocr are left: {left_out:?}");

        std::fs::create_dir_all(empty.path().join("ocr")).unwrap();
        for stage in ["det", "cls", "rec"] {
            std::fs::write(empty.path().join(format!("ocr/{stage}.onnx")), b"").unwrap();
        }
        let (config, left_out) = Config::bundled_from(empty.path(), empty.path());
        let ocr = config.routes.iter().find(|r| r.path == "/ocr").expect("/ocr is served");
        assert_eq!(ocr.models, ["ocr-det", "ocr-cls", "ocr-rec"]);
        assert_eq!(config.models["ocr-rec"].backend, BackendKind::Ort);
        let rec = config.models["ocr-rec"].declarations();
        assert_eq!(rec.inputs["x"].shape[3], DeclaredSize::Free("width".into()));
        assert_eq!(rec.outputs["softmax_11.tmp_0"].shape[0], DeclaredSize::Free("batch".into()));
        assert_eq!(left_out.len(), 1, "only /digits-py is left: {left_out:?}");
        config.validate().unwrap();
    }

    #[test]
    fn paths_match_whole_segments() {
        assert!(path_matches("/digits", "/digits"));
        assert!(path_matches("/digits/batch", "/digits"));
        assert!(!path_matches("/digitsx", "/digits"));
        assert!(!path_matches("/dig", "/digits"));
    }
}

/// Fuzzing the configuration reader: any text, and any mangling of a valid file, gives a
/// config or an error naming what is wrong, never a panic.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    const VALID: &str = r#"[server]
listen = "127.0.0.1:9000"
max_connections = 100
[models.digits]
file = "digits.onnx"
executors = 2
batching = "auto"
max_padding_ratio = 0.2
pad_values = { ids = 0 }
[[routes]]
path = "/digits"
component = "digits.wasm"
models = ["digits"]
memory_mib = 64
host_memory_mib = 32
grant = ["wasi:filesystem"]
"#;

    /// What a mangled line may become.
    fn mangled() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-z_]{1,12} = (-?[0-9]{1,20}|\"[^\"]{0,12}\"|true|\\[\\]|\\{\\}|0\\.[0-9]+)",
            "[\\PC]{0,24}",
            Just("[[routes]]".to_string()),
            Just("[models.x]".to_string()),
        ]
    }

    proptest! {
        #[test]
        fn any_text(text in "[\\PC\\n]{0,300}") {
            let _ = Config::from_toml(&text, Path::new("/etc/edge"));
        }

        #[test]
        fn mangled_valid_files(edits in prop::collection::vec((any::<prop::sample::Index>(), mangled()), 1..4)) {
            let mut lines: Vec<String> = VALID.lines().map(String::from).collect();
            for (line, replacement) in edits {
                let at = line.index(lines.len());
                lines[at] = replacement;
            }
            if let Ok(config) = Config::from_toml(&lines.join("\n"), Path::new("/etc/edge")) {
                // What loads is valid: every route's models exist.
                for route in &config.routes {
                    prop_assert!(route.models.iter().all(|m| config.models.contains_key(m)));
                }
            }
        }
    }
}
