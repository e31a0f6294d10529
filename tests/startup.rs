//! Start-up and shutdown: bad configs fail clearly, admission caps hold, and SIGTERM lets
//! in-flight requests finish.

mod common;

use std::time::Duration;

use common::{Server, client, expect_error, guest, test_config, wait_for_metric};

#[test]
fn a_bad_config_fails_start_up_naming_the_field() {
    let config = format!(
        "[[routes]]\npath = \"/hello\"\ncomponent = \"{}\"\nmax_concurrency = \"many\"\n",
        guest("hello").display()
    );
    let stderr = Server::try_start(&config).err().expect("start-up must fail");
    assert!(stderr.contains("routes[0].max_concurrency"), "{stderr}");
    assert!(stderr.contains("edge-infer.toml"), "the message names the file: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_missing_component_or_model_fails_start_up_naming_the_file() {
    let stderr = Server::try_start("[[routes]]\npath = \"/x\"\ncomponent = \"missing.wasm\"\n")
        .err()
        .expect("start-up must fail");
    assert!(stderr.contains("missing.wasm"), "{stderr}");
    let stderr =
        Server::try_start("[models.m]\nfile = \"missing.onnx\"\n").err().expect("start-up must fail");
    assert!(stderr.contains("missing.onnx") && stderr.contains("\"m\""), "{stderr}");
}

#[tokio::test]
async fn a_full_route_answers_503_with_retry_after_at_once() {
    let config = format!(
        "[[routes]]\npath = \"/test\"\ncomponent = \"{}\"\nmax_concurrency = 1\nmax_queue = 0\ntimeout_ms = 2000\n",
        guest("testing").display()
    );
    let server = Server::start(&config);
    let busy = tokio::spawn(client().get(server.url("/test/spin")).send());
    // Once the spinning request holds the only slot, the next one is refused at once.
    wait_for_metric(&server, r#"edge_infer_route_instances_in_use{route="/test"}"#, 1.0).await;
    let started = std::time::Instant::now();
    let rejected = client().get(server.url("/test/trap")).send().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once, not after the busy request");
    assert_eq!(rejected.headers()["retry-after"], "1");
    assert!(expect_error(rejected, 503).await.contains("capacity"));
    assert_eq!(busy.await.unwrap().unwrap().status(), 504);
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let server = Server::start(&test_config());
    let in_flight = tokio::spawn(client().get(server.url("/test/spin")).send());
    wait_for_metric(&server, r#"edge_infer_route_instances_in_use{route="/test"}"#, 1.0).await;
    server.terminate();
    // The spinning request still gets its answer (504 at its 1 s deadline)...
    let response = in_flight.await.unwrap().expect("the in-flight request was answered");
    assert_eq!(response.status(), 504);
    // ...and the process then exits cleanly.
    let status = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(15))).await.unwrap();
    assert!(status.success(), "{status}");
}

/// Each model's engine and batch limit, once every model is loaded, from the front page.
async fn choices_once_loaded(server: &Server) -> Vec<(String, String, u64)> {
    loop {
        let seen = count_loaded(server);
        let index: serde_json::Value =
            client().get(server.url("/")).send().await.unwrap().json().await.unwrap();
        let models = index["models"].as_array().unwrap();
        if models.iter().all(|model| model["residency"] == "loaded") {
            return models
                .iter()
                .map(|model| {
                    let field = |name: &str| model[name].as_str().unwrap_or_default().to_string();
                    (field("name"), field("backend"), model["max_batch_size"].as_u64().unwrap())
                })
                .collect();
        }
        // Models load in the background on a warm start: the log says when each is done.
        common::wait_for_logged_times(server, "model loaded", seen + 1).await;
    }
}

fn count_loaded(server: &Server) -> usize {
    server.logs().matches("model loaded").count()
}

#[tokio::test]
async fn a_warm_start_of_the_bundled_examples_makes_the_cold_starts_choices_without_measuring() {
    let state = tempfile::tempdir().unwrap();
    let path = state.path().to_path_buf();
    let cold =
        tokio::task::spawn_blocking(move || Server::start_bundled_on_state(&path, "info")).await.unwrap();
    let cold_choices = choices_once_loaded(&cold).await;
    assert!(cold_choices.len() >= 3, "{cold_choices:?}");
    let cold_logs = cold.logs();
    assert!(cold_logs.contains("remembered=false"), "the cold start measured batching:\n{cold_logs}");
    // A model whose load other processes kept noisy (the tests running beside this one) is
    // not remembered, and the warm start measures it again.
    let noisy: Vec<String> = cold_logs
        .lines()
        .filter(|line| line.contains("its measurements are not remembered"))
        .filter_map(|line| line.split("model=").nth(1)?.split_whitespace().next().map(str::to_string))
        .collect();
    cold.terminate();
    assert!(cold.wait(Duration::from_secs(30)).success());

    let path = state.path().to_path_buf();
    let warm =
        tokio::task::spawn_blocking(move || Server::start_bundled_on_state(&path, "info")).await.unwrap();
    let warm_choices = choices_once_loaded(&warm).await;
    let logs = warm.logs();
    // Single models (an ensemble's backend joins its steps') that the cold start remembered.
    let remembered =
        |(name, backend, _): &&(String, String, u64)| !backend.contains('+') && !noisy.contains(name);
    let compared: Vec<_> = cold_choices.iter().filter(remembered).collect();
    assert!(!compared.is_empty(), "every model's load was noisy: {noisy:?}");
    for choice in compared {
        assert!(warm_choices.contains(choice), "{choice:?} is made again: {warm_choices:?}");
        let name = format!("model={} ", choice.0);
        for line in logs.lines().filter(|line| line.contains(&name)) {
            for measuring in ["backend auto: using", "remembered=false"] {
                assert!(!line.contains(measuring), "{} was measured again: {line}", choice.0);
            }
        }
        let recalled =
            logs.lines().any(|line| line.contains(&name) && line.contains("its choices are remembered"));
        assert!(recalled, "{} started from what was remembered:\n{logs}", choice.0);
    }
}
