//! The bundled examples: the configuration `edge-infer serve` runs without a config file,
//! built from the guests of this build and the models in `models/`, each example whose
//! parts are missing left out with the command that brings them.

use std::collections::BTreeMap;
use std::path::Path;

use tracing::info;

use super::Config;
use super::model::{EnsembleConfig, EnsembleStep, HintSize, ModelConfig, ModelSettings, TensorHint};
use super::route::{RouteConfig, RouteSettings};
use super::server::ServerConfig;
use super::source::Source;
use crate::inference::backend::BackendKind;

/// Linear memory for the bundled Python and JavaScript guests, whose interpreters need more.
const INTERPRETER_MEMORY_MIB: u64 = 256;

/// Linear memory for the OCR guest: a decoded image, its detection map and a batch of the
/// recognizer's outputs (6 crops × steps × 6,625 classes).
const OCR_MEMORY_MIB: u64 = 256;
/// Largest image the OCR example takes.
const OCR_MAX_BODY_BYTES: usize = 8 << 20;

/// Where `models/onnxruntime/fetch.py` puts the ONNX Runtime library, under `models/`.
const ONNXRUNTIME_LIBRARY: &str = "onnxruntime/libonnxruntime.so.1.31.1";

impl Config {
    /// The bundled examples: digits (whole, and streamed by a 0.3 guest), voice activity and
    /// hello, from this build, and those
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
            settings: RouteSettings::default(),
        };
        let model = |file: &str| ModelConfig {
            file: Source::File(models.join(file)),
            settings: ModelSettings::default(),
        };
        let mut routes = vec![
            route("/digits", "digits.wasm", &["digits"]),
            route("/hello", "hello.wasm", &[]),
            // A `wasi:http` 0.3 guest: digits classified one NDJSON line at a time.
            route("/stream", "stream.wasm", &["digits"]),
            route("/vad", "vad.wasm", &["vad"]),
        ];
        // The Python and JavaScript guests, when guest/build-py-js.sh has built them.
        for (path, file) in [("/digits-py", "digits-py.wasm"), ("/digits-js", "digits-js.wasm")] {
            if guests.join(file).is_file() {
                let settings =
                    RouteSettings { memory_mib: INTERPRETER_MEMORY_MIB, ..RouteSettings::default() };
                routes.push(RouteConfig { settings, ..route(path, file, &["digits"]) });
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
                settings: ModelSettings {
                    backend: BackendKind::Ort,
                    inputs: BTreeMap::from([("x".to_string(), hint(input))]),
                    outputs: BTreeMap::from([(output.0.to_string(), hint(output.1))]),
                    ..ModelSettings::default()
                },
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
            let settings = RouteSettings {
                memory_mib: OCR_MEMORY_MIB,
                max_body_bytes: OCR_MAX_BODY_BYTES,
                ..RouteSettings::default()
            };
            routes.push(RouteConfig {
                settings,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::hints::DeclaredSize;

    #[test]
    fn bundled_examples_left_out_say_how_to_enable_them() {
        let empty = tempfile::tempdir().unwrap();
        let (config, left_out) = Config::bundled_from(empty.path(), empty.path());
        let paths: Vec<&str> = config.routes.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/digits", "/hello", "/stream", "/vad"]);
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
        assert_eq!(config.models["ocr-rec"].settings.backend, BackendKind::Ort);
        let rec = config.models["ocr-rec"].settings.declarations();
        assert_eq!(rec.inputs["x"].shape[3], DeclaredSize::Free("width".into()));
        assert_eq!(rec.outputs["softmax_11.tmp_0"].shape[0], DeclaredSize::Free("batch".into()));
        assert_eq!(left_out.len(), 1, "only /digits-py is left: {left_out:?}");
        config.validate().unwrap();
    }
}
