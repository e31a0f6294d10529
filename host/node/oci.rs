//! Components and models as OCI artifacts: the layout they are published in, pushing them
//! (`edge-infer push`) and pulling them (`oci://` sources in the config file and the admin
//! API), through `oci-client`.
//!
//! The layout:
//!
//! | | config media type | one layer, media type |
//! | --- | --- | --- |
//! | component | `application/vnd.wasm.config.v0+json` | `application/wasm` |
//! | model | `application/vnd.edge-infer.model.config.v1+json` | `application/vnd.edge-infer.model.onnx.v1` |
//!
//! A component follows the CNCF Wasm OCI artifact layout, the one `wkg oci push` writes. A
//! model's manifest also carries the artifact type `application/vnd.edge-infer.model.v1`.
//!
//! A pull checks the manifest's digest when the reference names one, the layer's digest
//! always (oci-client verifies both while reading), the layer's kind and size before
//! reading it, and that a component is one. The bytes stream to the caller's writer (the
//! state folder), never held whole in memory.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The scheme that marks a source as an OCI artifact.
pub const SCHEME: &str = "oci://";

const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
const MODEL_ARTIFACT_TYPE: &str = "application/vnd.edge-infer.model.v1";
const MODEL_CONFIG_MEDIA_TYPE: &str = "application/vnd.edge-infer.model.config.v1+json";
const MODEL_LAYER_MEDIA_TYPE: &str = "application/vnd.edge-infer.model.onnx.v1";

/// The first 8 bytes of a WebAssembly component (magic, version 13, layer 1).
const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\0\x01\0";
/// The first 8 bytes of a core WebAssembly module.
const CORE_MODULE_HEADER: [u8; 8] = *b"\0asm\x01\0\0\0";

/// What an artifact holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactKind {
    Component,
    Model,
}

impl ArtifactKind {
    fn layer_media_type(self) -> &'static str {
        match self {
            ArtifactKind::Component => WASM_LAYER_MEDIA_TYPE,
            ArtifactKind::Model => MODEL_LAYER_MEDIA_TYPE,
        }
    }

    /// The kind of `bytes`: a component if they start as one, else a model. A core module is
    /// neither.
    pub fn of(bytes: &[u8]) -> Result<ArtifactKind, OciError> {
        if bytes.starts_with(&COMPONENT_HEADER) {
            Ok(ArtifactKind::Component)
        } else if bytes.starts_with(&CORE_MODULE_HEADER) {
            Err(OciError::NotAComponent(
                "it is a core WebAssembly module; build a component (e.g. for wasm32-wasip2)".into(),
            ))
        } else {
            Ok(ArtifactKind::Model)
        }
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArtifactKind::Component => "a component",
            ArtifactKind::Model => "a model",
        })
    }
}

/// An artifact in a registry: `oci://REGISTRY/REPOSITORY:TAG` or `…@sha256:…`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OciReference(String);

impl OciReference {
    fn parsed(&self) -> Reference {
        self.0[SCHEME.len()..].parse().expect("checked when made")
    }

    /// The manifest digest the reference pins, if it names one.
    pub fn digest(&self) -> Option<String> {
        self.parsed().digest().map(str::to_string)
    }

    /// The same repository, pinned to the manifest `digest`.
    pub fn pinned(&self, digest: &str) -> OciReference {
        let reference = self.parsed();
        let pinned =
            Reference::with_digest(reference.registry().into(), reference.repository().into(), digest.into());
        OciReference(format!("{SCHEME}{}", pinned.whole()))
    }

    /// The registry's host (and port).
    fn registry(&self) -> String {
        self.parsed().resolve_registry().to_string()
    }
}

impl FromStr for OciReference {
    type Err = OciError;

    fn from_str(text: &str) -> Result<OciReference, OciError> {
        let bad = |why: String| OciError::BadReference(format!("{text:?}: {why}"));
        let rest = text.strip_prefix(SCHEME).ok_or_else(|| bad(format!("does not start with {SCHEME}")))?;
        let reference: Reference = rest.parse().map_err(|e| bad(format!("{e}")))?;
        let names_registry =
            rest.split_once('/').is_some_and(|(host, _)| host.contains(['.', ':']) || host == "localhost");
        if !names_registry {
            return Err(bad("name the registry, as in oci://registry.example:5000/repository:tag".into()));
        }
        // A reference without either means `:latest` to Docker; here it must be said.
        let tagged = rest.rsplit('/').next().is_some_and(|name| name.contains(':'));
        if !tagged && !rest.contains('@') {
            return Err(bad("name a tag (:tag) or a digest (@sha256:…)".into()));
        }
        Ok(OciReference(format!("{SCHEME}{}", reference.whole())))
    }
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for OciReference {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for OciReference {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<OciReference, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a push or a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("bad OCI reference {0}")]
    BadReference(String),
    #[error("registry credentials: {0}")]
    Credentials(String),
    /// The registry could not be reached, or failed.
    #[error("registry for {reference}: {message}")]
    Registry { reference: OciReference, message: String },
    /// The registry refused the credentials (or their absence).
    #[error(
        "registry for {reference} refused access: {message} (credentials: server.registry_credentials or the Docker config)"
    )]
    Unauthorized { reference: OciReference, message: String },
    #[error("{0} is not in the registry")]
    NotFound(OciReference),
    /// The artifact is not what was asked for.
    #[error("{reference} is not {expected}: {found}")]
    WrongKind { reference: OciReference, expected: ArtifactKind, found: String },
    #[error("not a component: {0}")]
    NotAComponent(String),
    #[error("{reference} is {size} bytes, over the limit of {limit} bytes (server.max_artifact_bytes)")]
    TooLarge { reference: OciReference, size: u64, limit: u64 },
    /// What the registry sent does not hash to the digest that names it.
    #[error("{reference}: digest mismatch, refused: {message}")]
    DigestMismatch { reference: OciReference, message: String },
}

impl OciError {
    fn from_client(reference: &OciReference, error: OciDistributionError) -> OciError {
        let reference = reference.clone();
        let message = error.to_string();
        match error {
            OciDistributionError::DigestError(_) => OciError::DigestMismatch { reference, message },
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => OciError::Unauthorized { reference, message },
            OciDistributionError::ServerError { code: 401 | 403, .. } => {
                OciError::Unauthorized { reference, message }
            }
            OciDistributionError::ServerError { code: 404, .. } => OciError::NotFound(reference),
            OciDistributionError::ImageManifestNotFoundError(_) => OciError::NotFound(reference),
            OciDistributionError::RegistryError { ref envelope, .. } => {
                let unknown = envelope.errors.iter().any(|e| {
                    use oci_client::errors::OciErrorCode::*;
                    matches!(e.code, ManifestUnknown | BlobUnknown | NameUnknown | NotFound)
                });
                let denied = envelope.errors.iter().any(|e| {
                    use oci_client::errors::OciErrorCode::*;
                    matches!(e.code, Unauthorized | Denied)
                });
                if unknown {
                    OciError::NotFound(reference)
                } else if denied {
                    OciError::Unauthorized { reference, message }
                } else {
                    OciError::Registry { reference, message }
                }
            }
            _ => OciError::Registry { reference, message },
        }
    }
}

/// Credentials for registries, by host: a file in the Docker config format
/// (`{"auths": {"HOST[:PORT]": {"auth": base64("user:password")}}}`), read once.
#[derive(Clone, Default)]
pub struct Credentials {
    by_registry: BTreeMap<String, (String, String)>,
}

/// Names the registries, never the secrets.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registries: Vec<&String> = self.by_registry.keys().collect();
        f.debug_struct("Credentials").field("registries", &registries).finish()
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl Credentials {
    /// Reads `file`; with none, the Docker config (`$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`) if there is one, else no credentials.
    pub fn load(file: Option<&Path>) -> Result<Credentials, OciError> {
        let docker_config = || {
            let folder = std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".docker")))?;
            Some(folder.join("config.json")).filter(|path| path.is_file())
        };
        match file.map(Path::to_path_buf).or_else(docker_config) {
            Some(path) => Self::read(&path),
            None => Ok(Credentials::default()),
        }
    }

    fn read(path: &Path) -> Result<Credentials, OciError> {
        let failed = |why: String| OciError::Credentials(format!("{}: {why}", path.display()));
        let text = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
        let config: DockerConfig = serde_json::from_slice(&text).map_err(|e| failed(e.to_string()))?;
        let mut by_registry = BTreeMap::new();
        for (key, entry) in config.auths {
            let pair = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .ok()
                        .and_then(|bytes| String::from_utf8(bytes).ok())
                        .ok_or_else(|| failed(format!("the `auth` of {key:?} is not base64 text")))?;
                    let (user, password) = decoded
                        .split_once(':')
                        .ok_or_else(|| failed(format!("the `auth` of {key:?} is not user:password")))?;
                    (user.to_string(), password.to_string())
                }
                (None, Some(user), Some(password)) => (user, password),
                _ => continue,
            };
            by_registry.insert(registry_host(&key), pair);
        }
        Ok(Credentials { by_registry })
    }

    fn for_registry(&self, registry: &str) -> RegistryAuth {
        match self.by_registry.get(&registry_host(registry)) {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

/// A registry's host as the Docker config keys it, without scheme or path; Docker Hub's
/// names are one.
fn registry_host(key: &str) -> String {
    let host = key.trim_start_matches("https://").trim_start_matches("http://");
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "docker.io" | "registry-1.docker.io" => "index.docker.io".into(),
        host => host.to_string(),
    }
}

/// Whether a registry's host is this machine (spoken to in plain HTTP, as Docker does).
fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
        None => registry.rsplit_once(':').map_or(registry, |(host, _)| host),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// How to reach registries: credentials, and the registries spoken to in plain HTTP (those
/// on loopback, and the ones listed).
#[derive(Clone, Debug, Default)]
pub struct Registries {
    pub credentials: Credentials,
    pub insecure: Vec<String>,
}

/// What a push made.
#[derive(Debug)]
pub struct Pushed {
    pub kind: ArtifactKind,
    /// The manifest's digest: the reference pinned.
    pub pinned: OciReference,
}

impl Registries {
    /// Credentials from `credentials_file` (else the Docker config, if any), and the
    /// registries to speak plain HTTP to.
    pub fn load(credentials_file: Option<&Path>, insecure: Vec<String>) -> Result<Registries, OciError> {
        Ok(Registries { credentials: Credentials::load(credentials_file)?, insecure })
    }

    fn client(&self, reference: &OciReference) -> (Client, Reference, RegistryAuth) {
        let registry = reference.registry();
        let mut plain_http = self.insecure.clone();
        if is_loopback(&registry) {
            plain_http.push(registry.clone());
        }
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain_http),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..ClientConfig::default()
        });
        (client, reference.parsed(), self.credentials.for_registry(&registry))
    }

    /// Publishes `bytes` (a component or a model, told by its first bytes) at `reference`.
    pub async fn push(&self, bytes: Vec<u8>, reference: &OciReference) -> Result<Pushed, OciError> {
        let kind = ArtifactKind::of(&bytes)?;
        let layer_digest = sha256(&bytes);
        let (config_media_type, config) = match kind {
            ArtifactKind::Component => (
                WASM_CONFIG_MEDIA_TYPE,
                serde_json::json!({
                    "architecture": "wasm",
                    "os": "wasip2",
                    "layerDigests": [layer_digest],
                }),
            ),
            ArtifactKind::Model => (MODEL_CONFIG_MEDIA_TYPE, serde_json::json!({ "format": "onnx" })),
        };
        let layers = [ImageLayer::new(bytes, kind.layer_media_type().into(), None)];
        let config = Config::new(serde_json::to_vec(&config).expect("JSON"), config_media_type.into(), None);
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.into());
        if kind == ArtifactKind::Model {
            manifest.artifact_type = Some(MODEL_ARTIFACT_TYPE.into());
        }
        // The manifest goes as these bytes, so their digest is the one the registry keeps,
        // whatever else is pushed to the tag meanwhile.
        let manifest = serde_json::to_vec(&manifest).expect("JSON");
        let (client, parsed, auth) = self.client(reference);
        let failed = |e| OciError::from_client(reference, e);
        client.auth(&parsed, &auth, RegistryOperation::Push).await.map_err(failed)?;
        client.push_blob(&parsed, &layers[0].data, &layer_digest).await.map_err(failed)?;
        client.push_blob(&parsed, &config.data, &sha256(&config.data)).await.map_err(failed)?;
        let content_type = http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE);
        client.push_manifest_raw(&parsed, manifest.clone(), content_type).await.map_err(failed)?;
        Ok(Pushed { kind, pinned: reference.pinned(&sha256(&manifest)) })
    }

    /// Pulls the artifact at `reference`, which must be `kind` and at most `limit` bytes,
    /// into `out`; returns the reference pinned to the manifest pulled.
    pub async fn pull(
        &self,
        reference: &OciReference,
        kind: ArtifactKind,
        limit: u64,
        out: &mut (impl std::io::Write + Unpin + Send),
    ) -> Result<OciReference, OciError> {
        let (client, parsed, auth) = self.client(reference);
        let failed = |e| OciError::from_client(reference, e);
        let (manifest, digest) = client.pull_manifest(&parsed, &auth).await.map_err(failed)?;
        let wrong =
            |found: String| OciError::WrongKind { reference: reference.clone(), expected: kind, found };
        let OciManifest::Image(manifest) = manifest else {
            return Err(wrong("an index of several artifacts".into()));
        };
        let layer = match manifest.layers.as_slice() {
            [layer] if layer.media_type == kind.layer_media_type() => layer,
            [layer] => return Err(wrong(format!("its layer is {}", layer.media_type))),
            layers => return Err(wrong(format!("it has {} layers, not one", layers.len()))),
        };
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if size > limit {
            return Err(OciError::TooLarge { reference: reference.clone(), size, limit });
        }
        let mut received = Received { out, written: 0, size, header: Vec::new() };
        client.pull_blob(&parsed, layer, &mut received).await.map_err(failed)?;
        if kind == ArtifactKind::Component && ArtifactKind::of(&received.header)? != ArtifactKind::Component {
            return Err(OciError::NotAComponent(format!(
                "{reference} does not hold a WebAssembly component"
            )));
        }
        Ok(reference.pinned(&digest))
    }
}

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

/// A layer's bytes on their way to `out`: no more than the layer's size, and its first bytes
/// kept to tell its kind.
struct Received<'a, W> {
    out: &'a mut W,
    written: u64,
    size: u64,
    header: Vec<u8>,
}

impl<W: std::io::Write + Unpin> tokio::io::AsyncWrite for Received<'_, W> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.written + data.len() as u64 > this.size {
            let error = std::io::Error::other("the registry sent more bytes than the layer's size");
            return Poll::Ready(Err(error));
        }
        let wanted = COMPONENT_HEADER.len().saturating_sub(this.header.len()).min(data.len());
        this.header.extend_from_slice(&data[..wanted]);
        this.out.write_all(data)?;
        this.written += data.len() as u64;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_registry_and_a_tag_or_digest() {
        let tagged: OciReference = "oci://127.0.0.1:5000/guests/digits:v2".parse().unwrap();
        assert_eq!(tagged.registry(), "127.0.0.1:5000");
        assert_eq!(tagged.digest(), None);
        let digest = format!("sha256:{}", "ab".repeat(32));
        let pinned = tagged.pinned(&digest);
        assert_eq!(pinned.to_string(), format!("oci://127.0.0.1:5000/guests/digits@{digest}"));
        assert_eq!(pinned.to_string().parse::<OciReference>().unwrap(), pinned);
        for bad in
            ["127.0.0.1:5000/a:v1", "oci://digits:v1", "oci://registry.example/a", "oci://r.example/A:v1"]
        {
            assert!(bad.parse::<OciReference>().is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_are_told_by_their_first_bytes() {
        assert_eq!(ArtifactKind::of(b"\0asm\x0d\0\x01\0rest").unwrap(), ArtifactKind::Component);
        assert!(matches!(ArtifactKind::of(b"\0asm\x01\0\0\0rest"), Err(OciError::NotAComponent(_))));
        assert_eq!(ArtifactKind::of(b"\x08\x07\x12onnx").unwrap(), ArtifactKind::Model);
    }

    #[test]
    fn docker_config_credentials_are_found_by_registry() {
        let folder = tempfile::tempdir().unwrap();
        let file = folder.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret");
        std::fs::write(
            &file,
            format!(r#"{{"auths": {{"https://127.0.0.1:5000/v1/": {{"auth": "{auth}"}}, "docker.io": {{"username": "u", "password": "p"}}}}}}"#),
        )
        .unwrap();
        let credentials = Credentials::load(Some(&file)).unwrap();
        assert_eq!(
            credentials.for_registry("127.0.0.1:5000"),
            RegistryAuth::Basic("ci".into(), "s3cret".into())
        );
        assert_eq!(credentials.for_registry("index.docker.io"), RegistryAuth::Basic("u".into(), "p".into()));
        assert_eq!(credentials.for_registry("ghcr.io"), RegistryAuth::Anonymous);
        assert!(is_loopback("127.0.0.1:5000") && is_loopback("localhost:5000") && is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example:5000"));
    }
}
