//! The configuration: which models to load, which routes to serve, and the limits of each.
//!
//! It is read from a TOML file (`edge-infer serve --config FILE`), or, with no file, built in
//! code for the bundled examples. Every mistake is reported at start-up with the file and the
//! field it concerns, before anything is loaded. Relative paths in a file are taken from the
//! file's folder.
//!
//! Each section has its module: `server` (`[server]`), `route` (`[[routes]]`), `model`
//! (`[models.NAME]`, `[ensembles.NAME]`), `tenant` (`[tenants.NAME]`); `source` reads where a
//! file comes from, and `examples` builds the bundled examples. This module reads the file
//! as a whole and checks what spans sections: unique names and paths, the models routes and
//! ensembles name, credentials.

mod examples;
mod flat;
mod model;
mod route;
mod server;
mod source;
mod tenant;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

pub use self::model::{
    EnsembleConfig, EnsembleStep, HintSize, ModelConfig, ModelSettings, SplitConfig, StageBackend, TensorHint,
};
pub use self::route::{
    HEALTH_PATH, METRICS_PATH, OIP_PREFIX, RESERVED_PATHS, ROOT_PATH, RouteConfig, RouteSettings,
    path_below_mount, path_matches,
};
pub use self::server::{DEFAULT_ADMIN_CONNECTIONS, ListenerSettings, ServerConfig};
pub use self::source::Source;
pub use self::tenant::TenantConfig;
use crate::request::tenant::TenantPolicy;

/// Largest `memory_mib`, `host_memory_mib` and `server.memory_budget_mib` (1 TiB): bytes
/// stay far from overflowing.
const MAX_MIB: u64 = 1 << 20;

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
        for model in config.models.values_mut() {
            model.file.resolve_path(base);
        }
        config.server.resolve_paths(base);
        for route in &mut config.routes {
            route.component.resolve_path(base);
            route.settings.resolve_paths(base);
        }
        config.validate()?;
        Ok(config)
    }

    /// What each configured tenant is allowed, for the request layer.
    pub fn tenant_policies(&self) -> Vec<TenantPolicy> {
        self.tenants.iter().map(|(name, tenant)| tenant.policy(name)).collect()
    }

    /// Checks what the types alone cannot: unique paths and names, known models, sane limits.
    fn validate(&self) -> anyhow::Result<()> {
        self.server.validate()?;
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
        if self.server.require_credentials && !self.tenants.values().any(TenantConfig::has_credentials) {
            bail!(
                "field `server.require_credentials`: no tenant has credentials, so nothing could be served"
            );
        }
        for (name, model) in &self.models {
            check_model_name(name).with_context(|| format!("field `models.{name}`"))?;
            model.settings.validate().with_context(|| format!("field `models.{name}`"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::scheduler::DelayPolicy;

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
        assert_eq!(config.models["digits"].settings.executors, Some(2));
        let digits = &config.models["digits"];
        assert_eq!(
            (digits.settings.max_queue_delay_us, digits.settings.queue_delay),
            (2000, DelayPolicy::Adaptive)
        );
        assert_eq!((digits.settings.max_padding_ratio, digits.settings.pad_values.len()), (None, 0));
        let route = &config.routes[0];
        assert_eq!(route.component, Source::File("/opt/digits.wasm".into()));
        let settings = &route.settings;
        assert_eq!((settings.timeout_ms, settings.max_concurrency, settings.memory_mib), (500, 64, 64));
        assert_eq!(settings.ready_instances, 1);
        assert!(!settings.allow_model_load);
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
    fn the_books_example_is_a_valid_config() {
        let section = include_str!("../../../docs/src/configuration.md");
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let example = &section[start..start + section[start..].find("```").unwrap()];
        let config = parse(example).unwrap();
        assert_eq!(config.routes[0].path, "/digits");
        assert_eq!(config.models["digits"].settings.executors, Some(2));
        assert_eq!(config.models["minilm"].settings.split.as_ref().map(SplitConfig::stage_count), Some(2));
        assert_eq!(config.ensembles["sentence-embedding"].steps[1].model, "mean-pooling");
        assert_eq!(
            config.models["ocr-rec"].settings.declarations().outputs["softmax_11.tmp_0"].shape.len(),
            3
        );
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
