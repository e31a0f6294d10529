//! Hostile clients: connections that send half a request head and stall are closed at the
//! header read timeout while normal requests go on being served; the number of open
//! connections is capped (the listener waits for a slot); an oversized head is refused.

mod common;

use std::time::Duration;

use common::{Server, client, guest, metric, scrape, wait_for_metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections that stall mid-head at once.
const STALLED: usize = 2000;

const OPEN: &str = r#"edge_infer_http_connections_open{listener="public"}"#;
const HEADER_TIMEOUTS: &str =
    r#"edge_infer_http_connections_closed_total{listener="public",reason="header_timeout"}"#;
const IDLE_CLOSED: &str = r#"edge_infer_http_connections_closed_total{listener="public",reason="idle"}"#;

fn config(server: &str) -> String {
    format!(
        "[server]\n{server}\n\n[[routes]]\npath = \"/hello\"\ncomponent = \"{}\"\n",
        guest("hello").display()
    )
}

/// Raises this process's open-file limit to its hard limit (the server inherits it), and
/// checks that it fits `needed` sockets on each side.
fn allow_open_files(needed: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= needed,
        "this test needs {needed} open files; the hard limit is {}",
        limit.rlim_cur
    );
}

/// Opens a connection and sends the first half of a request head.
async fn stall(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET /hello HTTP/1.1\r\nHost: edge\r\nX-Half: ").await.unwrap();
    stream
}

/// Whether the server has closed `stream` (reads end, or fail), waiting at most `patience`.
async fn closed_by_server(stream: &mut TcpStream, patience: Duration) -> bool {
    let mut buffer = [0u8; 512];
    match tokio::time::timeout(patience, stream.read(&mut buffer)).await {
        Ok(Ok(0) | Err(_)) => true,
        // A 408 or 400 answer before closing counts as closing: read to the end.
        Ok(Ok(_)) => tokio::time::timeout(patience, stream.read_to_end(&mut Vec::new())).await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_at_the_timeout_and_others_are_served() {
    allow_open_files(2 * STALLED as u64 + 200);
    let config =
        config("header_read_timeout_ms = 2000\nmax_connections = 5000\nmax_connections_per_ip = 5000");
    let server = tokio::task::spawn_blocking(move || Server::start(&config)).await.unwrap();
    let address = server.base.trim_start_matches("http://").to_string();

    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        stalled.push(stall(&address).await);
    }
    // With all of them open and stalled, normal requests are served.
    for _ in 0..20 {
        let response = client().get(server.url("/hello")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    // Each stalled connection is closed by the server at its timeout (well within a minute).
    for stream in &mut stalled {
        assert!(closed_by_server(stream, Duration::from_secs(60)).await, "a stalled connection stayed open");
    }
    wait_for_metric(&server, OPEN, 1.0).await;
    assert!(metric(&scrape(&server).await, HEADER_TIMEOUTS) >= STALLED as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_capped() {
    let config = config("header_read_timeout_ms = 3000\nmax_connections = 3");
    let server = tokio::task::spawn_blocking(move || Server::start(&config)).await.unwrap();
    let address = server.base.trim_start_matches("http://").to_string();
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stall(&address).await);
    }
    // A fourth client is served only once a stalled connection has been closed, freeing a slot.
    let response = client().get(server.url("/hello")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut freed = false;
    for stream in &mut stalled {
        freed |= closed_by_server(stream, Duration::ZERO).await;
    }
    assert!(freed, "the fourth connection was served while all three slots were taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_is_refused_and_the_server_goes_on() {
    let config = config("max_header_bytes = 16384");
    let server = tokio::task::spawn_blocking(move || Server::start(&config)).await.unwrap();
    let huge = "x".repeat(32 * 1024);
    let outcome = client().get(server.url("/hello")).header("x-huge", huge).send().await;
    match outcome {
        Ok(response) => assert_eq!(response.status(), 431),
        Err(error) => assert!(error.is_request() || error.is_connect(), "{error}"),
    }
    assert_eq!(client().get(server.url("/hello")).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_the_timeout() {
    let config = config("header_read_timeout_ms = 1000");
    let server = tokio::task::spawn_blocking(move || Server::start(&config)).await.unwrap();
    // One request, then the client keeps its HTTP/2 connection open and says nothing.
    let idle = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    assert_eq!(idle.get(server.url("/hello")).send().await.unwrap().status(), 200);
    // Only the scraping connection stays: the idle one is closed by the server.
    wait_for_metric(&server, OPEN, 1.0).await;
    assert!(metric(&scrape(&server).await, IDLE_CLOSED) >= 1.0);
    drop(idle);
}
