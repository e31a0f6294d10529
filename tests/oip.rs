//! The Open Inference Protocol endpoints, health, and the compatibility check with Triton's
//! own Python client (tritonclient[http]).

mod common;

use std::process::Command;

use common::{
    Server, classify, client, compat_python, digits_test_split, expect_error, post_json, repo_file,
    test_config,
};
use serde_json::{Value, json};

async fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let response = client().get(server.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn health_and_metadata() {
    let server = Server::in_process(&test_config());
    assert_eq!(get_json(&server, "/v2/health/live").await, (200, json!({ "live": true })));
    assert_eq!(get_json(&server, "/v2/health/ready").await, (200, json!({ "ready": true })));
    let (status, body) = get_json(&server, "/v2").await;
    assert_eq!((status, body["name"].as_str()), (200, Some("edge-infer")));
    let (status, metadata) = get_json(&server, "/v2/models/digits").await;
    assert_eq!(status, 200);
    assert_eq!(metadata["inputs"], json!([{ "name": "pixels", "datatype": "FP32", "shape": [-1, 64] }]));
    assert_eq!(
        metadata["outputs"],
        json!([{ "name": "probabilities", "datatype": "FP32", "shape": [-1, 10] }])
    );
    assert_eq!(get_json(&server, "/v2/models/digits/versions/1/ready").await.0, 200);
    let response = client().get(server.url("/v2/models/nope")).send().await.unwrap();
    assert!(expect_error(response, 404).await.contains("nope"));
}

#[tokio::test]
async fn json_infer_gives_the_same_labels_as_the_guest() {
    let server = Server::in_process(&test_config());
    let (images, _) = digits_test_split();
    let batch = &images[..8];
    let request = json!({
        "id": "batch-1",
        "inputs": [{ "name": "pixels", "shape": [8, 64], "datatype": "FP32", "data": batch }],
    });
    let (status, answer) = post_json(&client(), &server.url("/v2/models/digits/infer"), &request).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["id"].as_str(), answer["model_name"].as_str()), (Some("batch-1"), Some("digits")));
    let output = &answer["outputs"][0];
    assert_eq!((output["name"].as_str(), &output["shape"]), (Some("probabilities"), &json!([8, 10])));
    let probabilities: Vec<f64> = serde_json::from_value(output["data"].clone()).unwrap();
    for (row, image) in probabilities.chunks(10).zip(batch) {
        let label = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap();
        assert_eq!(label, classify(&client(), &server, image).await);
    }
}

#[tokio::test]
async fn bad_infer_requests_get_clear_errors() {
    let server = Server::in_process(&test_config());
    let url = server.url("/v2/models/digits/infer");
    let input = |shape: Value, data: Value| json!({ "inputs": [{ "name": "pixels", "shape": shape, "datatype": "FP32", "data": data }] });
    let cases = [
        (input(json!([1, 63]), json!(vec![0; 63])), 422, "shape [-1, 64]"),
        (input(json!([1, 64]), json!(vec![0; 10])), 400, "the data holds at most 11"),
        (input(json!([2, 64]), json!(vec![0; 127])), 400, "the shape has 128 elements; the data has 127"),
        (input(json!([1, 64]), json!(vec![0; 65])), 400, "more elements than the shape"),
        (
            input(json!([1, 64]), json!([vec![json!(0); 63], vec![json!("x")]].concat())),
            400,
            "a number or a list",
        ),
        (json!({ "inputs": "no" }), 400, "malformed infer request"),
    ];
    for (body, status, message) in cases {
        let response = client().post(&url).json(&body).send().await.unwrap();
        let error = expect_error(response, status).await;
        assert!(error.contains(message), "{body}: {error}");
    }
    let response =
        client().post(server.url("/v2/models/nope/infer")).json(&input(json!([1]), json!([0]))).send();
    expect_error(response.await.unwrap(), 404).await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let server = Server::in_process(&test_config());
    let given = client().get(server.url("/hello")).header("x-request-id", "trace-7").send().await.unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-7");
    let made = client().get(server.url("/hello")).send().await.unwrap();
    let id = made.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!id.is_empty() && id != "trace-7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_gets_the_same_labels_as_the_digits_route() {
    let python = tokio::task::spawn_blocking(compat_python).await.unwrap();
    let server = Server::in_process(&test_config());
    let address = server.base.trim_start_matches("http://").to_string();
    let split = repo_file("models/digits/test_split.json");
    let script = repo_file("tests/compat/tritonclient_digits.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(script).arg(address).arg(split).output().unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "tritonclient failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let triton_labels: Vec<usize> = serde_json::from_slice(&output.stdout).unwrap();
    let (images, _) = digits_test_split();
    assert_eq!(triton_labels.len(), images.len());
    for (image, triton_label) in images.iter().zip(&triton_labels) {
        assert_eq!(classify(&client(), &server, image).await, *triton_label);
    }
}
