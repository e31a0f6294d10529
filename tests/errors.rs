//! Every bad input and every misbehaving guest gets a clear JSON error with the right
//! status, and the next `/digits` request is answered correctly.

mod common;

use std::time::{Duration, Instant};

use common::{Server, classify, client, digits_test_split, expect_error, test_config, wait_for_log};
use serde_json::json;

/// Checks the server still classifies correctly.
async fn still_serves(server: &Server) {
    let (images, labels) = digits_test_split();
    assert_eq!(classify(&client(), server, &images[7]).await, labels[7]);
}

#[tokio::test]
async fn malformed_digits_requests_get_400_with_a_reason() {
    let server = Server::start(&test_config());
    let client = client();
    let cases: Vec<(&str, String)> = vec![
        ("malformed JSON", "{\"pixels\": [1, 2,".to_string()),
        ("expected a JSON object", "[1, 2, 3]".to_string()),
        ("expected exactly one of", "{\"pixel\": []}".to_string()),
        ("must hold 64 numbers, got 63", json!({ "pixels": vec![0; 63] }).to_string()),
        ("must hold 64 numbers, got 65", json!({ "pixels": vec![0; 65] }).to_string()),
        ("is not a number", json!({ "pixels": with_last(json!("one")) }).to_string()),
        ("outside 0..16", json!({ "pixels": with_last(json!(17)) }).to_string()),
        ("images[1] must hold 64 numbers", json!({ "images": [vec![0; 64], vec![0; 3]] }).to_string()),
        ("must hold 1 to", json!({ "images": [] }).to_string()),
    ];
    for (expected, body) in cases {
        let response = client.post(server.url("/digits")).body(body.clone()).send().await.unwrap();
        let message = expect_error(response, 400).await;
        assert!(message.contains(expected), "for {body}: {message:?} lacks {expected:?}");
        still_serves(&server).await;
    }
}

/// 63 valid pixels followed by `last`.
fn with_last(last: serde_json::Value) -> Vec<serde_json::Value> {
    let mut pixels = vec![json!(0); 63];
    pixels.push(last);
    pixels
}

#[tokio::test]
async fn unknown_routes_get_404() {
    let server = Server::start(&test_config());
    for path in ["/nope", "/digitsx", "/"] {
        let response = client().post(server.url(path)).body("{}").send().await.unwrap();
        let message = expect_error(response, 404).await;
        assert!(message.contains(path), "{message}");
        still_serves(&server).await;
    }
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let server = Server::start(&test_config());
    let oversized = vec![b' '; 65537];
    let response = client().post(server.url("/digits")).body(oversized.clone()).send().await.unwrap();
    assert!(expect_error(response, 413).await.contains("65536 bytes"));
    still_serves(&server).await;

    // Without Content-Length (chunked), the limit is enforced while reading.
    let head = chunked_post(&server, "/digits", &oversized).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    still_serves(&server).await;
}

/// POSTs `body` with `Transfer-Encoding: chunked` over a raw socket; returns the status line.
async fn chunked_post(server: &Server, path: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let address = server.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nhost: {address}\r\ntransfer-encoding: chunked\r\n\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(8192) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        if socket.write_all(&framed).await.is_err() {
            break; // the server may answer and close before the whole body is sent
        }
    }
    let _ = socket.write_all(b"0\r\n\r\n").await;
    let mut status_line = String::new();
    BufReader::new(socket).read_line(&mut status_line).await.unwrap();
    status_line
}

#[tokio::test]
async fn a_guest_stuck_in_a_loop_gets_504_at_its_deadline() {
    let server = Server::start(&test_config());
    let started = Instant::now();
    let response = client().get(server.url("/test/spin")).send().await.unwrap();
    let message = expect_error(response, 504).await;
    assert!(message.contains("deadline"), "{message}");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1000), "answered before the 1 s deadline: {elapsed:?}");
    still_serves(&server).await;
}

#[tokio::test]
async fn a_trapping_guest_gets_500_and_the_next_request_is_served() {
    let server = Server::start(&test_config());
    for _ in 0..3 {
        let response = client().get(server.url("/test/trap")).send().await.unwrap();
        assert!(expect_error(response, 500).await.contains("trapped"));
        still_serves(&server).await;
    }
    wait_for_log(&server, "the guest trapped").await;
    let logs = server.logs();
    assert!(logs.contains("route=/test"), "the trap is logged with its route: {logs}");
}

#[tokio::test]
async fn a_guest_exhausting_its_memory_gets_500() {
    let server = Server::start(&test_config());
    let response = client().get(server.url("/test/oom")).send().await.unwrap();
    expect_error(response, 500).await;
    still_serves(&server).await;
}

#[tokio::test]
async fn wrong_methods_get_405() {
    let server = Server::start(&test_config());
    let response = client().get(server.url("/digits")).send().await.unwrap();
    assert!(expect_error(response, 405).await.contains("POST"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_past_max_queue_wait_ms_is_told_to_retry() {
    let config = format!(
        "[[routes]]\npath = \"/test\"\ncomponent = \"{}\"\nmax_concurrency = 1\nmax_queue = 4\n\
         max_queue_wait_ms = 100\ntimeout_ms = 30000\n",
        common::guest("testing").display()
    );
    let server = Server::start(&config);
    let sleeper = tokio::spawn(client().get(server.url("/test/sleep/2000")).send());
    common::wait_for_metric(&server, r#"edge_infer_route_instances_in_use{route="/test"}"#, 1.0).await;
    let asked = Instant::now();
    let response = client().get(server.url("/test/sleep/0")).send().await.unwrap();
    let waited = asked.elapsed();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"), "{:?}", response.headers());
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("max_queue_wait_ms"), "{body}");
    assert!(waited >= Duration::from_millis(100), "it waited its 100 ms first: {waited:?}");
    // The instance's own request was not disturbed.
    assert_eq!(sleeper.await.unwrap().unwrap().status(), 200);
}
