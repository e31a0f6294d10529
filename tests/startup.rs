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
