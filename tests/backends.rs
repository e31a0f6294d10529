//! Backend selection and the ONNX Runtime backend: `auto` without a GPU measures tract
//! against ONNX Runtime and keeps the faster (tract alone when ONNX Runtime is missing), an
//! explicit `gpu` without one fails start-up clearly, `ort` without its library falls back
//! to tract, and ONNX Runtime's outputs match tract's within 1e-4 on the bundled models.
//!
//! This machine has no GPU. ONNX Runtime comes from the `onnxruntime` wheel in the tests'
//! Python environment (tests/compat/requirements.txt).

mod common;

use std::path::Path;

use common::{Server, metric, onnxruntime_library, post_json, repo_file, scrape};
use serde_json::{Value, json};

fn models(entries: &[(&str, &str, &str)]) -> String {
    entries
        .iter()
        .map(|(name, file, backend)| {
            format!("[models.{name}]\nfile = \"{}\"\nbackend = \"{backend}\"\n\n", repo_file(file).display())
        })
        .collect()
}

fn backend_of(text: &str, model: &str, backend: &str) -> f64 {
    metric(text, &format!("edge_infer_model_backend_info{{backend=\"{backend}\",model=\"{model}\"}}"))
}

#[tokio::test]
async fn auto_without_a_gpu_keeps_the_faster_of_tract_and_onnx_runtime() {
    let library = tokio::task::spawn_blocking(onnxruntime_library).await.unwrap();
    let config = models(&[
        ("digits", "models/digits/digits.onnx", "auto"),
        ("vad", "models/vad/silero_vad_16k.onnx", "auto"),
    ]);
    let env = [("ORT_DYLIB_PATH", library.as_path())];
    let server = Server::try_start_with_env(&config, "info", "text", &env).unwrap();
    let metrics = scrape(&server).await;
    let logs = server.logs();
    for model in ["digits", "vad"] {
        let line = logs
            .lines()
            .find(|l| l.contains("backend auto") && l.contains(&format!("model={model}")))
            .unwrap_or_else(|| panic!("no choice logged for {model}: {logs}"));
        let number = |field: &str| -> f64 {
            let start = line.find(&format!("{field}=")).unwrap_or_else(|| panic!("no {field}: {line}"))
                + field.len()
                + 1;
            line[start..].split_whitespace().next().unwrap().parse().unwrap()
        };
        // tract is preferred: ONNX Runtime replaces it only if faster by more than 10%.
        let faster = if number("ort_ms") < number("tract_ms") * 0.9 { "ort" } else { "tract" };
        assert!(line.contains(&format!("using {faster} on the CPU")), "{line}");
        assert_eq!(backend_of(&metrics, model, faster), 1.0, "{model} runs on {faster}");
    }
}

/// A model tract cannot type: `y = Expand(x, shape)`, the shape an input of the graph (tract
/// needs it known when it types the model; ONNX Runtime reads it at each run).
fn expand_to_a_shape_given_at_run_time() -> Vec<u8> {
    use prost_onnx::Message;
    use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
    use tract_onnx::pb::{
        GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
        type_proto,
    };
    let value = |name: &str, elem_type: i32, dims: Vec<dimension::Value>| {
        let dim =
            dims.into_iter().map(|value| Dimension { value: Some(value), ..Dimension::default() }).collect();
        let tensor = type_proto::Tensor { elem_type, shape: Some(TensorShapeProto { dim }) };
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(tensor)),
                ..TypeProto::default()
            }),
            ..ValueInfoProto::default()
        }
    };
    let (fixed, free) = (dimension::Value::DimValue, |name: &str| dimension::Value::DimParam(name.into()));
    let graph = GraphProto {
        node: vec![NodeProto {
            op_type: "Expand".into(),
            input: vec!["x".into(), "shape".into()],
            output: vec!["y".into()],
            ..NodeProto::default()
        }],
        input: vec![value("x", 1, vec![fixed(1), fixed(4)]), value("shape", 7, vec![fixed(2)])],
        output: vec![value("y", 1, vec![free("rows"), fixed(4)])],
        ..GraphProto::default()
    };
    let opset = OperatorSetIdProto { domain: String::new(), version: 13 };
    ModelProto { ir_version: 8, graph: Some(graph), opset_import: vec![opset], ..ModelProto::default() }
        .encode_to_vec()
}

#[tokio::test]
async fn auto_serves_a_model_tract_cannot_type_on_onnx_runtime_and_says_why() {
    let library = tokio::task::spawn_blocking(onnxruntime_library).await.unwrap();
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("expand.onnx");
    std::fs::write(&file, expand_to_a_shape_given_at_run_time()).unwrap();
    let config = format!("[models.expand]\nfile = \"{}\"\nbackend = \"auto\"\n", file.display());
    let env = [("ORT_DYLIB_PATH", library.as_path())];
    let server = Server::try_start_with_env(&config, "info", "text", &env).unwrap();
    assert_eq!(backend_of(&scrape(&server).await, "expand", "ort"), 1.0);
    let logs = server.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("backend auto"))
        .unwrap_or_else(|| panic!("no choice logged: {logs}"));
    assert!(line.contains("using ort on the CPU") && line.contains("tract cannot load the model"), "{line}");
    let request = json!({
        "inputs": [
            { "name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0] },
            { "name": "shape", "shape": [2], "datatype": "INT64", "data": [3, 4] },
        ]
    });
    let (status, answer) =
        post_json(&common::client(), &server.url("/v2/models/expand/infer"), &request).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["shape"], json!([3, 4]));
    assert_eq!(
        answer["outputs"][0]["data"],
        json!([1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0])
    );
}

#[tokio::test]
async fn auto_without_a_gpu_or_onnx_runtime_uses_tract_and_says_why() {
    let config = models(&[("digits", "models/digits/digits.onnx", "auto")]);
    let env = [("ORT_DYLIB_PATH", Path::new("/nonexistent/libonnxruntime.so"))];
    let server = Server::try_start_with_env(&config, "info", "text", &env).unwrap();
    assert_eq!(backend_of(&scrape(&server).await, "digits", "tract"), 1.0);
    let logs = server.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("backend auto"))
        .unwrap_or_else(|| panic!("no choice logged: {logs}"));
    assert!(
        line.contains("using tract on the CPU (no usable GPU") && line.contains("libonnxruntime"),
        "{line}"
    );
}

#[test]
fn an_explicit_gpu_without_one_fails_start_up_clearly() {
    let library = onnxruntime_library();
    let config = models(&[("digits", "models/digits/digits.onnx", "gpu")]);
    for env in [
        vec![("ORT_DYLIB_PATH", library.as_path())],
        vec![("ORT_DYLIB_PATH", Path::new("/nonexistent/libonnxruntime.so"))],
    ] {
        let stderr =
            Server::try_start_with_env(&config, "warn", "text", &env).err().expect("start-up must fail");
        assert!(stderr.contains("model \"digits\"") && stderr.contains("no GPU is usable"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn ort_without_its_library_falls_back_to_tract() {
    let config = models(&[("digits", "models/digits/digits.onnx", "ort")]);
    let env = [("ORT_DYLIB_PATH", Path::new("/nonexistent/libonnxruntime.so"))];
    let server = Server::try_start_with_env(&config, "warn", "text", &env).unwrap();
    assert_eq!(backend_of(&scrape(&server).await, "digits", "tract"), 1.0);
    assert!(server.logs().contains("falling back to tract"), "{}", server.logs());
}

/// Runs one OIP infer request and returns its outputs by name.
async fn infer(server: &Server, model: &str, inputs: Value) -> Vec<(String, Vec<f64>)> {
    let (status, answer) = post_json(
        &common::client(),
        &server.url(&format!("/v2/models/{model}/infer")),
        &json!({ "inputs": inputs }),
    )
    .await;
    assert_eq!(status, 200, "{model}: {answer}");
    answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (o["name"].as_str().unwrap().to_string(), serde_json::from_value(o["data"].clone()).unwrap())
        })
        .collect()
}

fn assert_close(a: &[(String, Vec<f64>)], b: &[(String, Vec<f64>)], what: &str) {
    assert_eq!(a.len(), b.len());
    for ((name_a, a), (name_b, b)) in a.iter().zip(b) {
        assert_eq!((name_a, a.len()), (name_b, b.len()));
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-4, "{what} {name_a}: ONNX Runtime and tract differ by {worst}");
    }
}

#[tokio::test]
async fn onnx_runtime_matches_tract_on_the_bundled_models() {
    let library = tokio::task::spawn_blocking(onnxruntime_library).await.unwrap();
    let config = models(&[
        ("digits_tract", "models/digits/digits.onnx", "tract"),
        ("digits_ort", "models/digits/digits.onnx", "ort"),
        ("vad_tract", "models/vad/silero_vad_16k.onnx", "tract"),
        ("vad_ort", "models/vad/silero_vad_16k.onnx", "ort"),
    ]);
    let env = [("ORT_DYLIB_PATH", library.as_path())];
    let server = Server::try_start_with_env(&config, "warn", "text", &env).unwrap();
    let text = scrape(&server).await;
    assert_eq!(backend_of(&text, "digits_ort", "ort"), 1.0, "ONNX Runtime did not load");
    assert_eq!(backend_of(&text, "vad_ort", "ort"), 1.0);

    let (images, _) = common::digits_test_split();
    let pixels =
        json!([{ "name": "pixels", "shape": [images.len(), 64], "datatype": "FP32", "data": images }]);
    assert_close(
        &infer(&server, "digits_ort", pixels.clone()).await,
        &infer(&server, "digits_tract", pixels).await,
        "digits",
    );

    // Speech windows, carrying the recurrent state from one to the next as the VAD guest does.
    let pcm = std::fs::read(repo_file("models/vad/speech_16k.raw")).unwrap();
    let samples: Vec<f64> =
        pcm.chunks_exact(2).map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0).collect();
    let mut state = vec![0.0; 256];
    for window in samples.chunks_exact(576).take(20) {
        let inputs = json!([
            { "name": "input", "shape": [1, 576], "datatype": "FP32", "data": window },
            { "name": "state", "shape": [2, 1, 128], "datatype": "FP32", "data": state },
        ]);
        let from_ort = infer(&server, "vad_ort", inputs.clone()).await;
        assert_close(&from_ort, &infer(&server, "vad_tract", inputs).await, "vad");
        state = from_ort.into_iter().find(|(name, _)| name == "stateN").unwrap().1;
    }
}
