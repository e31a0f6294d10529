//! The model repository API of the Open Inference Protocol, as Triton's clients call it:
//! `POST /v2/repository/models/{m}/load` and `.../unload`. A load may carry the model's
//! configuration (Triton's JSON) and its file, as `tritonclient`'s
//! `load_model(name, config=..., files=...)` sends them:
//!
//! ```json
//! {"parameters": {"config": "{\"max_batch_size\": 8, ...}", "file:1/model.onnx": "<base64>"}}
//! ```
//!
//! Triton's configuration maps onto a model's settings: `max_batch_size` (0: no batching),
//! `dynamic_batching` (batching on, with its `max_queue_delay_microseconds`; without it,
//! batching is `auto`), `instance_group` (`count`: executors; `kind`: `KIND_GPU` or
//! `KIND_CPU`), and `parameters` (any edge-infer model setting by name, as a
//! `string_value`). Other fields (inputs, outputs, platform) are read from the model itself.
//! Unknown settings are refused with the field's name.

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::node::Node;
use crate::node::control::{DeployError, Outcome};
use crate::node::state::ModelSpec;

/// What a repository call asks for.
pub enum Action {
    Load,
    Unload,
}

/// Makes the load or unload of `model` that a request with the JSON `body` asks for.
pub async fn change(node: &Node, action: Action, model: &str, body: &[u8]) -> Result<Outcome, DeployError> {
    match action {
        Action::Load => node.load_model(model, load_request(node, model, body)?).await,
        Action::Unload => node.unload_from_repository(model).await,
    }
}

/// The model settings a load request carries (none: load what the repository has).
fn load_request(node: &Node, model: &str, body: &[u8]) -> Result<Option<ModelSpec>, DeployError> {
    let bad = |message: String| DeployError::Invalid(anyhow::anyhow!(message));
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let request: Value = serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let parameters = match request.get("parameters") {
        None => return Ok(None),
        Some(Value::Object(parameters)) => parameters,
        Some(_) => return Err(bad("\"parameters\" must be an object".into())),
    };
    let mut files = Vec::new();
    for (key, value) in parameters.iter().filter(|(key, _)| key.starts_with("file:")) {
        let Value::String(encoded) = value else {
            return Err(bad(format!("parameter {key:?} must be a base64 string")));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|e| bad(format!("parameter {key:?}: not base64: {e}")))?;
        files.push(bytes);
    }
    let config = match parameters.get("config") {
        None => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(object @ Value::Object(_)) => Some(object.to_string()),
        Some(_) => {
            return Err(bad("parameter \"config\" must be JSON (a string, as Triton sends it)".into()));
        }
    };
    model_spec(node, model, config.as_deref(), files)
}

/// The settings of a load of `model` with Triton's `config` (JSON) and model `files` (at
/// most one: the ONNX file), as the REST and gRPC repository calls carry them. None: load
/// what the repository has.
pub fn model_spec(
    node: &Node,
    model: &str,
    config: Option<&str>,
    mut files: Vec<Vec<u8>>,
) -> Result<Option<ModelSpec>, DeployError> {
    let bad = |message: String| DeployError::Invalid(anyhow::anyhow!(message));
    if files.len() > 1 {
        return Err(bad("one model file expected (an ONNX file), got several".into()));
    }
    let config = config
        .map(|text| {
            serde_json::from_str::<Value>(text).map_err(|e| bad(format!("parameter \"config\": {e}")))
        })
        .transpose()?;
    let file = match (files.pop(), &config) {
        (Some(bytes), _) => node.control().state().store(&bytes)?,
        (None, None) => return Ok(None),
        // A new configuration for the model's current file.
        (None, Some(_)) => match node
            .runtime()
            .and_then(|r| r.models().loaded(model).map(|m| m.spec.file.clone()))
        {
            Some(file) => file,
            None => return Err(bad(format!("model {model:?} is not in the repository: send its file too"))),
        },
    };
    let mut settings = settings_from_triton(config.unwrap_or_else(|| json!({}))).map_err(bad)?;
    settings.insert("file".into(), Value::String(file.to_string()));
    serde_path_to_error::deserialize(Value::Object(settings))
        .map(Some)
        .map_err(|e| bad(format!("config: `{}`: {}", e.path().clone(), e.into_inner())))
}

/// Maps Triton's model configuration onto edge-infer's model settings.
fn settings_from_triton(config: Value) -> Result<Map<String, Value>, String> {
    let Value::Object(config) = config else { return Err("config must be a JSON object".into()) };
    let mut settings = Map::new();
    match config.get("max_batch_size").map(Value::as_u64) {
        None => {}
        Some(Some(0)) => drop(settings.insert("batching".into(), json!("off"))),
        Some(Some(size)) => drop(settings.insert("max_batch_size".into(), json!(size))),
        Some(None) => return Err("config: `max_batch_size` must be a whole number".into()),
    }
    if let Some(dynamic) = config.get("dynamic_batching")
        && !settings.contains_key("batching")
    {
        settings.insert("batching".into(), json!("on"));
        if let Some(delay) = dynamic.get("max_queue_delay_microseconds") {
            settings.insert("max_queue_delay_us".into(), delay.clone());
        }
    }
    if let Some(groups) = config.get("instance_group") {
        let groups = groups.as_array().ok_or("config: `instance_group` must be an array")?;
        let count: u64 =
            groups.iter().map(|group| group.get("count").and_then(Value::as_u64).unwrap_or(1)).sum();
        if count > 0 {
            settings.insert("executors".into(), json!(count));
        }
        let kind = groups.iter().find_map(|group| group.get("kind").and_then(Value::as_str));
        match kind {
            None | Some("KIND_AUTO") => {}
            Some("KIND_GPU") => drop(settings.insert("backend".into(), json!("gpu"))),
            Some("KIND_CPU") => drop(settings.insert("backend".into(), json!("cpu"))),
            Some(other) => return Err(format!("config: instance_group kind {other:?} is not supported")),
        }
    }
    if let Some(parameters) = config.get("parameters") {
        let parameters = parameters.as_object().ok_or("config: `parameters` must be an object")?;
        for (name, value) in parameters {
            let text = value
                .get("string_value")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("config: parameter {name:?} needs a \"string_value\""))?;
            // Numbers, booleans and objects as JSON; anything else as the string itself.
            let value = serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()));
            settings.insert(name.clone(), value);
        }
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triton_configs_map_onto_model_settings() {
        let settings = settings_from_triton(json!({
            "name": "digits",
            "max_batch_size": 16,
            "dynamic_batching": { "max_queue_delay_microseconds": 500 },
            "instance_group": [{ "count": 2, "kind": "KIND_CPU" }],
            "parameters": { "cache_entries": { "string_value": "100" }, "queue_delay": { "string_value": "fixed" } },
            "input": [{ "name": "pixels", "data_type": "TYPE_FP32", "dims": [64] }],
        }))
        .unwrap();
        assert_eq!(
            Value::Object(settings),
            json!({
                "max_batch_size": 16, "batching": "on", "max_queue_delay_us": 500, "executors": 2,
                "backend": "cpu", "cache_entries": 100, "queue_delay": "fixed",
            })
        );
        let unbatched = settings_from_triton(json!({ "max_batch_size": 0, "dynamic_batching": {} })).unwrap();
        assert_eq!(Value::Object(unbatched), json!({ "batching": "off" }));
        assert!(settings_from_triton(json!({ "instance_group": [{ "kind": "KIND_TPU" }] })).is_err());
        assert!(
            settings_from_triton(json!({ "parameters": { "executors": 2 } }))
                .unwrap_err()
                .contains("string_value")
        );
    }
}
