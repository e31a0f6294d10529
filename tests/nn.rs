//! The `wasi:nn` host as a guest sees it: granted models only, raw loads refused, and bad
//! tensors reported as `invalid-argument` errors rather than traps.

mod common;

use common::{Server, client, test_config};
use serde_json::Value;

async fn get_json(server: &Server, path: &str) -> Value {
    let response = client().get(server.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_route_loads_only_the_models_it_is_granted() {
    let server = Server::in_process(&test_config());
    let granted = get_json(&server, "/test/nn/load-by-name/digits").await;
    assert_eq!(granted["ok"], true, "{granted}");
    // Loaded on this node, but not granted to /test.
    let ungranted = get_json(&server, "/test/nn/load-by-name/digits-ungranted").await;
    assert_eq!(ungranted["code"], "not-found", "{ungranted}");
    let unknown = get_json(&server, "/test/nn/load-by-name/nope").await;
    assert_eq!(unknown["code"], "not-found", "{unknown}");
}

#[tokio::test]
async fn loading_raw_model_bytes_is_refused_by_default() {
    let server = Server::in_process(&test_config());
    let outcome = get_json(&server, "/test/nn/load-raw").await;
    assert_eq!(outcome["code"], "security", "{outcome}");
    assert!(outcome["message"].as_str().unwrap().contains("allow_model_load"));
}

#[tokio::test]
async fn bad_tensors_are_invalid_argument_errors() {
    let server = Server::in_process(&test_config());
    let outcomes = get_json(&server, "/test/nn/bad-input").await;
    let expectations = [
        ("wrong_shape", "shape [-1, 64]"),
        ("wrong_type", "must be FP32, got INT32"),
        ("wrong_name", "unknown input \"image\""),
        ("wrong_length", "needs 256 bytes, got 10"),
    ];
    for (case, message) in expectations {
        let outcome = &outcomes[case];
        assert_eq!(outcome["code"], "invalid-argument", "{case}: {outcome}");
        assert!(outcome["message"].as_str().unwrap().contains(message), "{case}: {outcome}");
    }
}
