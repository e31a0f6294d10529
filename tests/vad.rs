//! The VAD guest and the Silero model end to end, against reference probabilities that
//! onnxruntime computed for the same windows (models/vad/reference.py).

mod common;

use common::{Server, client, expect_error, post_json, repo_file};
use serde_json::{Value, json};

/// Largest difference allowed between tract's and onnxruntime's probabilities.
const TOLERANCE: f64 = 1e-4;

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_file("models/vad/reference.json")).unwrap()).unwrap()
}

fn assert_close(answer: &Value, expected: &Value) {
    let (got, want) = (answer["probabilities"].as_array().unwrap(), expected.as_array().unwrap());
    assert_eq!(got.len(), want.len());
    for (window, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
        assert!((g - w).abs() < TOLERANCE, "window {window}: {g} vs {w}");
    }
}

#[tokio::test]
async fn finds_speech_in_pcm_like_onnxruntime_does() {
    let server = Server::in_process_bundled();
    let pcm = std::fs::read(repo_file("models/vad/speech_16k.raw")).unwrap();
    let response = client().post(server.url("/vad")).body(pcm).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_close(&answer, &reference()["speech"]);
    assert_eq!(answer["speech"], true);
}

#[tokio::test]
async fn silence_as_json_samples_is_not_speech() {
    let server = Server::in_process_bundled();
    let (status, answer) =
        post_json(&client(), &server.url("/vad"), &json!({ "samples": vec![0.0; 16000] })).await;
    assert_eq!(status, 200, "{answer}");
    assert_close(&answer, &reference()["silence"]);
    assert_eq!(answer["speech"], false);
}

#[tokio::test]
async fn bad_audio_gets_400() {
    let server = Server::in_process_bundled();
    for (body, expected) in
        [(vec![0u8; 100], "at least 512 samples"), (vec![0u8; 1025], "even number of bytes")]
    {
        let response = client().post(server.url("/vad")).body(body).send().await.unwrap();
        assert!(expect_error(response, 400).await.contains(expected));
    }
    let response = client()
        .post(server.url("/vad"))
        .header("content-type", "application/json")
        .body(json!({ "samples": [2.0] }).to_string())
        .send()
        .await
        .unwrap();
    assert!(expect_error(response, 400).await.contains("at least 512"));
}
