//! A model's entry in the configuration (`[models.NAME]`, and the admin API's model
//! settings): its file and how it is run (backend, tensor declarations, batching, cache,
//! split into stages); and the ensembles made of models (`[ensembles.NAME]`).
//!
//! A model setting is written once, in [`ModelSettings`]: its field and documentation, its
//! default in `impl Default for ModelSettings`, its check in [`ModelSettings::validate`].

use std::collections::BTreeMap;
use std::marker::PhantomData;

use anyhow::bail;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::flat::{read_own, settings_beside};
use super::source::Source;
use crate::inference::backend::BackendKind;
use crate::inference::hints::{self, Declarations, DeclaredSize, TensorDeclaration};
use crate::inference::scheduler::{Batching, DelayPolicy};
use crate::inference::tensor::ElementType;

/// Most executor threads one model may have.
const MAX_EXECUTORS: usize = 1024;

/// Most stages a model may be split into.
const MAX_STAGES: usize = 16;

/// One model. In a config file its `file` is a [`Source`] (`F = Source`); once deployed, the
/// sha256 digest of the file in the state folder. The file writes `file` and the settings
/// side by side in one table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelConfig<F = Source> {
    /// The ONNX file: a path, or `oci://…`.
    pub file: F,
    /// How it is run.
    #[serde(flatten)]
    pub settings: ModelSettings,
}

impl<F> ModelConfig<F> {
    /// The same model with its file replaced by `file`.
    pub fn with_file<G>(self, file: G) -> ModelConfig<G> {
        ModelConfig { file, settings: self.settings }
    }
}

impl<'de, F: Deserialize<'de>> Deserialize<'de> for ModelConfig<F> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Table<F>(PhantomData<F>);
        impl<'de, F: Deserialize<'de>> Visitor<'de> for Table<F> {
            type Value = ModelConfig<F>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("struct ModelConfig")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ModelConfig<F>, A::Error> {
                let mut file: Option<F> = None;
                let settings = settings_beside(map, |key, map| match key {
                    "file" => read_own(map, "file", &mut file).map(|()| true),
                    _ => Ok(false),
                })?;
                let file = file.ok_or_else(|| serde::de::Error::missing_field("file"))?;
                Ok(ModelConfig { file, settings })
            }
        }
        deserializer.deserialize_map(Table(PhantomData))
    }
}

/// How a model is run: every setting of `[models.NAME]` but its file. A setting the file
/// leaves out takes its value from [`ModelSettings::default`]; the checks are in
/// [`ModelSettings::validate`].
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// Which backend runs it.
    #[serde(with = "BackendKindSetting")]
    pub backend: BackendKind,
    /// Element types and shapes of inputs the ONNX file leaves open, by input name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, TensorHint>,
    /// The same for outputs, by output name (to name the batch axis an output shares).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, TensorHint>,
    /// Executor threads, each running one inference at a time. Default: one per core.
    pub executors: Option<usize>,
    /// Jobs that may wait for an executor; beyond that, requests are refused (503).
    pub queue_capacity: usize,
    /// Whether to batch requests: `auto` (measured at start-up), `on` or `off`.
    #[serde(with = "BatchingSetting")]
    pub batching: Batching,
    /// Most items (along the batch axis) in one run. Default: 32 on the CPU, 128 on a GPU.
    pub max_batch_size: Option<usize>,
    /// The longest the batcher may hold the first request of a batch waiting for more, in µs.
    pub max_queue_delay_us: u64,
    /// `adaptive`: wait only while waiting brings more requests (0 at low load); `fixed`:
    /// always wait up to `max_queue_delay_us`.
    #[serde(with = "DelayPolicySetting")]
    pub queue_delay: DelayPolicy,
    /// Requests of different lengths share a batch while padding stays within this share of
    /// the batch's elements (0: only equal lengths). Default: 0.2 for models with a mask
    /// input (which mask padded positions), 0 for others.
    pub max_padding_ratio: Option<f64>,
    /// The value each input is padded with, by input name (default 0).
    pub pad_values: BTreeMap<String, f64>,
    /// Result cache entries (0: no cache).
    pub cache_entries: usize,
    /// Bytes the result cache may hold (outputs and keys); the oldest entries go first.
    pub cache_max_bytes: u64,
    /// How long a cached result is served, in ms.
    pub cache_ttl_ms: u64,
    /// When the queue is full, serve an expired cached result instead of refusing.
    pub serve_stale_on_overload: bool,
    /// Load it before the node is ready and never evict it (`server.model_memory_mib`).
    /// Other models load in the background once the node serves, or on first use, and may be
    /// evicted. A split model is always pinned.
    #[serde(skip_serializing_if = "is_false")]
    pub pinned: bool,
    /// Run the model split into stages (see [`SplitConfig`]); the other settings apply to
    /// every stage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitConfig>,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            backend: BackendKind::default(),
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            executors: None,
            queue_capacity: 1024,
            batching: Batching::default(),
            max_batch_size: None,
            max_queue_delay_us: 2_000,
            queue_delay: DelayPolicy::default(),
            max_padding_ratio: None,
            pad_values: BTreeMap::new(),
            cache_entries: 0,
            cache_max_bytes: 64 << 20,
            cache_ttl_ms: 60_000,
            serve_stale_on_overload: false,
            pinned: false,
            split: None,
        }
    }
}

impl ModelSettings {
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
}

/// Whether a flag is unset, to leave it out of the JSON the state folder digests.
fn is_false(flag: &bool) -> bool {
    !flag
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::node::config::Config;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::from_toml(text, Path::new("/etc/edge"))
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn tensor_declarations_are_read_and_checked() {
        let config = parse(
            "[models.m]\nfile = \"m.onnx\"\ninputs.x = { shape = [\"batch\", 3, \"width\"], datatype = \"FP32\" }\noutputs.y.shape = [\"batch\", 2]",
        )
        .unwrap();
        let declared = config.models["m"].settings.declarations();
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
    fn a_deployed_model_is_one_flat_json_object_both_ways() {
        let digest = crate::node::digest::Digest::of(b"m");
        let model: ModelConfig<crate::node::digest::Digest> =
            toml::from_str(&format!("file = \"{digest}\"\nexecutors = 2")).unwrap();
        let json = serde_json::to_string(&model).unwrap();
        // What the state folder and the admin API have always written (see the route's test).
        let expected = format!(
            "{{\"file\":\"{digest}\",\"backend\":\"auto\",\"executors\":2,\"queue_capacity\":1024,\
             \"batching\":\"auto\",\"max_batch_size\":null,\"max_queue_delay_us\":2000,\
             \"queue_delay\":\"adaptive\",\"max_padding_ratio\":null,\"pad_values\":{{}},\
             \"cache_entries\":0,\"cache_max_bytes\":67108864,\"cache_ttl_ms\":60000,\
             \"serve_stale_on_overload\":false}}"
        );
        assert_eq!(json, expected);
        let back: ModelConfig<crate::node::digest::Digest> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, model);
        let missing = serde_json::from_str::<ModelConfig<crate::node::digest::Digest>>("{}").unwrap_err();
        assert!(missing.to_string().contains("missing field `file`"), "{missing}");
    }
}
