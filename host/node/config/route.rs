//! A route's entry in the configuration (`[[routes]]`, and the admin API's route settings):
//! the path it serves, its component, the models it may use, and its settings (limits,
//! capabilities, imports); and the paths the host keeps for itself.
//!
//! A route setting is written once, in [`RouteSettings`]: its field and documentation, its
//! default in `impl Default for RouteSettings`, its check in [`RouteSettings::validate`].

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::MAX_MIB;
use super::flat::{read_own, settings_beside};
use super::source::Source;
use crate::sandbox::capabilities::is_outbound_entry;
use crate::sandbox::imports::GRANTABLE;

/// The host's liveness path (also `/v2/health/live`).
pub const HEALTH_PATH: &str = "/healthz";
/// The host's Prometheus metrics.
pub const METRICS_PATH: &str = "/metrics";
/// The Open Inference Protocol, under this prefix.
pub const OIP_PREFIX: &str = "/v2";
/// The root route's path: it serves every path that no other route and no host path takes.
pub const ROOT_PATH: &str = "/";
/// Paths that the host answers itself, before any route (the root route included), with
/// everything below them; no route may take them.
pub const RESERVED_PATHS: [&str; 3] = [HEALTH_PATH, OIP_PREFIX, METRICS_PATH];

/// Resource handles the host itself makes for every request (the request, its response
/// slot, streams): a `max_host_resources` below this could serve nothing.
const MIN_HOST_RESOURCES: u64 = 16;

/// One guest route. In a config file its `component` is a [`Source`] (`C = Source`); once
/// deployed, the sha256 digest of the component in the state folder. The file writes these
/// fields and the settings side by side in one table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteConfig<C = Source> {
    /// The route's name in the admin API [default: its path without the leading `/`, with
    /// `-` for each further `/`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The path it serves, e.g. `/digits`; it also serves every path below (`/digits/...`).
    /// `/` is the root route: every path no other route or the host takes (see
    /// [`RESERVED_PATHS`]).
    pub path: String,
    /// The guest component: a `.wasm` path, or `oci://…`.
    pub component: C,
    /// The models the guest may load by name.
    pub models: Vec<String>,
    /// How it runs.
    #[serde(flatten)]
    pub settings: RouteSettings,
}

impl<'de, C: Deserialize<'de>> Deserialize<'de> for RouteConfig<C> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Table<C>(PhantomData<C>);
        impl<'de, C: Deserialize<'de>> Visitor<'de> for Table<C> {
            type Value = RouteConfig<C>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("struct RouteConfig")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RouteConfig<C>, A::Error> {
                let mut name: Option<Option<String>> = None;
                let mut path: Option<String> = None;
                let mut component: Option<C> = None;
                let mut models: Option<Vec<String>> = None;
                let settings = settings_beside(map, |key, map| match key {
                    "name" => read_own(map, "name", &mut name).map(|()| true),
                    "path" => read_own(map, "path", &mut path).map(|()| true),
                    "component" => read_own(map, "component", &mut component).map(|()| true),
                    "models" => read_own(map, "models", &mut models).map(|()| true),
                    _ => Ok(false),
                })?;
                let missing = serde::de::Error::missing_field;
                Ok(RouteConfig {
                    name: name.flatten(),
                    path: path.ok_or_else(|| missing("path"))?,
                    component: component.ok_or_else(|| missing("component"))?,
                    models: models.unwrap_or_default(),
                    settings,
                })
            }
        }
        deserializer.deserialize_map(Table(PhantomData))
    }
}

/// How a route runs: every setting of `[[routes]]` but its name, path, component and
/// models. A setting the file leaves out takes its value from [`RouteSettings::default`].
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteSettings {
    /// Instances of this route that may run at once.
    pub max_concurrency: usize,
    /// Requests that may wait for an instance; beyond that the answer is 503.
    pub max_queue: usize,
    /// The longest a request may wait for an instance, in ms; beyond it the answer is 503 +
    /// `Retry-After`, so that under overload a route sheds load fast instead of holding
    /// requests until their deadline [default: none, a request waits until its deadline].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queue_wait_ms: Option<u64>,
    /// Instances made ahead of requests, so that a request finds its instance made. Each is
    /// still used by one request only; they hold pool slots and memory beside
    /// `max_concurrency`. 0 makes every instance when its request arrives.
    pub ready_instances: usize,
    /// Linear memory one instance may use, in MiB.
    pub memory_mib: u64,
    /// Host memory one instance may make the host hold for it (`wasi:nn` tensors, model
    /// outputs, models loaded from bytes), in MiB [default: `memory_mib`].
    pub host_memory_mib: Option<u64>,
    /// Resource handles (tensors, HTTP fields, streams, ...) one instance may hold at once.
    pub max_host_resources: usize,
    /// Deadline of one request, from arrival to the end of the guest's work, in ms.
    pub timeout_ms: u64,
    /// Largest request body accepted, in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// Longest response body a guest may send, in bytes; beyond it the response is cut off
    /// as unfinished (the connection closed, or the HTTP/2 stream reset).
    pub max_response_bytes: u64,
    /// Whether the guest may load models from raw bytes (`wasi:nn/graph.load`). Guests are
    /// untrusted, so this is off unless granted.
    pub allow_model_load: bool,
    /// Hosts the guest may send HTTP requests to: `"host"` (any port) or `"host:port"`. Any
    /// other request is denied.
    pub outbound_http: Vec<String>,
    /// Folders the guest may read, by the path it sees: `{ "/data" = "/srv/edge/data" }`.
    pub read_only_dirs: BTreeMap<String, PathBuf>,
    /// Allow only the guest world (`wasi:http/proxy` + `wasi:nn`) and `grant`ed packages as
    /// imports, instead of all of WASI 0.2 with its capabilities closed.
    pub strict_imports: bool,
    /// With `strict_imports`: WASI packages beyond the guest world the component may import
    /// (`wasi:filesystem`, `wasi:sockets`), linked but without access.
    pub grant: Vec<String>,
    /// Hand the guest the path below the route's mount (`/app/echo` reaches a route at `/app`
    /// as `/echo`) instead of the full path, so an application written to be served at the
    /// root runs unmodified under a prefix. Either way the guest also gets the mount in
    /// `x-edge-mount` and the path below it in `x-edge-path-info`.
    #[serde(skip_serializing_if = "is_false")]
    pub strip_mount: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

impl Default for RouteSettings {
    fn default() -> Self {
        RouteSettings {
            max_concurrency: 64,
            max_queue: 256,
            max_queue_wait_ms: None,
            ready_instances: 1,
            memory_mib: 64,
            host_memory_mib: None,
            max_host_resources: 1_000,
            timeout_ms: 10_000,
            max_body_bytes: 1 << 20,
            max_response_bytes: 64 << 20,
            allow_model_load: false,
            outbound_http: Vec::new(),
            read_only_dirs: BTreeMap::new(),
            strict_imports: false,
            grant: Vec::new(),
            strip_mount: false,
        }
    }
}

impl RouteSettings {
    /// Checks the settings: grants, limits, folders. The messages name the field.
    pub fn validate(&self) -> anyhow::Result<()> {
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
            ("max_queue_wait_ms", self.max_queue_wait_ms.unwrap_or(1), 1),
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
        Ok(())
    }

    /// Takes the relative folders of `read_only_dirs` from `base` (the config file's folder).
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for folder in self.read_only_dirs.values_mut() {
            *folder = base.join(&*folder);
        }
    }
}

impl<C> RouteConfig<C> {
    /// The route's name: `name`, else its path without the leading `/` (`/a/b` is `a-b`), or
    /// `root` for the root route.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| match self.path.as_str() {
            ROOT_PATH => "root".to_string(),
            path => path.trim_start_matches('/').replace('/', "-"),
        })
    }

    /// Checks one route on its own: its path, its settings, and that each model it names
    /// passes `model_exists`. The messages name the field.
    pub fn validate(&self, model_exists: impl Fn(&str) -> bool) -> anyhow::Result<()> {
        let path = self.path.as_str();
        if path != ROOT_PATH && (!path.starts_with('/') || path.ends_with('/')) {
            bail!("`path`: {path:?} must be \"/\" (the root route), or start with '/' and not end with '/'");
        }
        if RESERVED_PATHS.iter().any(|reserved| path_matches(path, reserved)) {
            bail!("`path`: {path:?} is reserved for the host ({RESERVED_PATHS:?})");
        }
        self.settings.validate()?;
        if let Some(model) = self.models.iter().find(|model| !model_exists(model)) {
            bail!("`models`: no model named {model:?} is loaded");
        }
        Ok(())
    }

    /// The same route with its component replaced by `component`.
    pub fn with_component<D>(self, component: D) -> RouteConfig<D> {
        let RouteConfig { name, path, component: _, models, settings } = self;
        RouteConfig { name, path, component, models, settings }
    }
}

/// Whether a request path falls under a route path: the path itself or anything below it
/// (every path, for the root route).
pub fn path_matches(request_path: &str, route_path: &str) -> bool {
    route_path == ROOT_PATH
        || request_path.strip_prefix(route_path).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The part of `request_path` below the mount `route_path` (which it falls under), as a path:
/// `/echo` for `/app/echo` under `/app`, `/` for `/app` itself, the whole path under the root.
pub fn path_below_mount<'a>(request_path: &'a str, route_path: &str) -> &'a str {
    if route_path == ROOT_PATH {
        return request_path;
    }
    match request_path.strip_prefix(route_path) {
        Some("") | None => ROOT_PATH,
        Some(rest) => rest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::config::Config;
    use crate::node::digest::Digest;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::from_toml(text, Path::new("/etc/edge"))
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn a_route_makes_ahead_at_most_as_many_instances_as_it_runs() {
        let route = "[[routes]]\npath = \"/a\"\ncomponent = \"a.wasm\"\nmax_concurrency = 2\n";
        assert_eq!(
            parse(&format!("{route}ready_instances = 2")).unwrap().routes[0].settings.ready_instances,
            2
        );
        assert_eq!(
            parse(&format!("{route}ready_instances = 0")).unwrap().routes[0].settings.ready_instances,
            0
        );
        let bad = error(&format!("{route}ready_instances = 3"));
        assert!(bad.contains("`ready_instances` must be at most `max_concurrency` (2)"), "{bad}");
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
    fn paths_match_whole_segments() {
        assert!(path_matches("/digits", "/digits"));
        assert!(path_matches("/digits/batch", "/digits"));
        assert!(!path_matches("/digitsx", "/digits"));
        assert!(!path_matches("/dig", "/digits"));
        assert!(path_matches("/", "/") && path_matches("/anything/at/all", "/"));
    }

    #[test]
    fn the_path_below_a_mount_is_a_path() {
        assert_eq!(path_below_mount("/app/echo/x", "/app"), "/echo/x");
        assert_eq!(path_below_mount("/app", "/app"), "/");
        assert_eq!(path_below_mount("/echo", "/"), "/echo");
        assert_eq!(path_below_mount("/", "/"), "/");
    }

    #[test]
    fn the_root_route_is_allowed_and_named_root_but_host_paths_stay_reserved() {
        let config = parse("[[routes]]\npath = \"/\"\ncomponent = \"a.wasm\"\nstrip_mount = true").unwrap();
        assert_eq!((config.routes[0].name(), config.routes[0].settings.strip_mount), ("root".into(), true));
        for bad in ["", "app", "/app/", "//"] {
            let message = error(&format!("[[routes]]\npath = {bad:?}\ncomponent = \"a.wasm\""));
            assert!(message.contains("must be \"/\" (the root route)"), "{bad:?}: {message}");
        }
        let metrics = error("[[routes]]\npath = \"/metrics/x\"\ncomponent = \"a.wasm\"");
        assert!(metrics.contains("reserved"), "{metrics}");
    }

    #[test]
    fn a_deployed_route_is_one_flat_json_object_both_ways() {
        let digest = Digest::of(b"a");
        let route: RouteConfig<Digest> =
            toml::from_str(&format!("path = \"/a\"\ncomponent = \"{digest}\"\nmax_queue = 3")).unwrap();
        let json = serde_json::to_string(&route).unwrap();
        // What the state folder and the admin API have always written: the digests of the
        // config file's entries (`config_applied`) are taken over this text.
        let expected = format!(
            "{{\"path\":\"/a\",\"component\":\"{digest}\",\"models\":[],\"max_concurrency\":64,\
             \"max_queue\":3,\"ready_instances\":1,\"memory_mib\":64,\"host_memory_mib\":null,\
             \"max_host_resources\":1000,\"timeout_ms\":10000,\"max_body_bytes\":1048576,\
             \"max_response_bytes\":67108864,\"allow_model_load\":false,\"outbound_http\":[],\
             \"read_only_dirs\":{{}},\"strict_imports\":false,\"grant\":[]}}"
        );
        assert_eq!(json, expected);
        assert_eq!(serde_json::from_str::<RouteConfig<Digest>>(&json).unwrap(), route);
        let unknown = format!("{{\"path\":\"/a\",\"component\":\"{digest}\",\"colour\":1}}");
        let error = serde_json::from_str::<RouteConfig<Digest>>(&unknown).unwrap_err().to_string();
        assert!(error.contains("unknown field `colour`"), "{error}");
        let twice = format!("{{\"path\":\"/a\",\"path\":\"/b\",\"component\":\"{digest}\"}}");
        let error = serde_json::from_str::<RouteConfig<Digest>>(&twice).unwrap_err().to_string();
        assert!(error.contains("duplicate field `path`"), "{error}");
    }
}
