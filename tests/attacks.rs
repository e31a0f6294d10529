//! Hostile clients against a real node over real sockets: each attack fails for its sender
//! alone, and the node goes on serving.
//!
//! - HTTP/2 clients that keep their receive window at zero on every connection slot, and an
//!   HTTP/1.1 client that stops reading a large answer: cut at the send timeout, their slots
//!   back;
//! - many connections from one address: the rest closed at once;
//! - idle gRPC connections: capped, and closed like idle HTTP ones;
//! - gRPC messages of millions of empty repeated fields (8 MB and 64 MiB): refused as they
//!   arrive, the node's memory barely moving;
//! - four 60 MiB JSON bodies at once: within the memory budget, health answered meanwhile;
//!   over a smaller budget, 503 with `Retry-After`;
//! - repository calls without the admin token: refused before their bodies are read.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::raw::{ZeroWindowClient, grpc_call, grpc_frame};
use common::{Server, client, guest, metric, repo_file, scrape, wait_for_metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1 << 20;

/// gRPC's status codes, as numbers on the wire.
const OK: i32 = 0;
const INVALID_ARGUMENT: i32 = 3;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAUTHENTICATED: i32 = 16;

fn config(server: &str, test_route: &str) -> String {
    format!(
        r#"
[server]
{server}

[models.digits]
file = "{digits}"

[[routes]]
path = "/hello"
component = "{hello}"

[[routes]]
path = "/test"
component = "{testing}"
models = ["digits"]
{test_route}
"#,
        digits = repo_file("models/digits/digits.onnx").display(),
        hello = guest("hello").display(),
        testing = guest("testing").display(),
    )
}

fn address(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Runs `attack` under a guard of `limit`, so a node that never frees what the attack holds
/// fails the test instead of hanging it.
async fn within<T>(limit: Duration, what: &str, attack: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, attack).await.unwrap_or_else(|_| panic!("{what} took over {limit:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_http2_clients_on_every_slot_are_cut_at_the_send_timeout() {
    let server = Server::start(&config(
        "max_connections = 4\nsend_timeout_ms = 1000\nheader_read_timeout_ms = 60000",
        "",
    ));
    let address = address(&server);
    let mut pinned = Vec::new();
    for _ in 0..4 {
        pinned.push(ZeroWindowClient::open(&address, "/healthz").await);
    }
    // Every slot is held by a client that takes nothing: a fifth waits for a slot.
    let waiting = tokio::spawn({
        let url = server.url("/healthz");
        async move { client().get(url).send().await.unwrap().status() }
    });
    for client in pinned {
        within(Duration::from_secs(30), "cutting a stalled response", client.closed_by_server()).await;
    }
    assert_eq!(within(Duration::from_secs(30), "the waiting request", waiting).await.unwrap(), 200);
    let text = scrape(&server).await;
    let cut = r#"edge_infer_http_connections_closed_total{listener="public",reason="send_timeout"}"#;
    assert_eq!(metric(&text, cut), 4.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_frees_its_slot_at_the_send_timeout() {
    let server = Server::start(&config(
        "send_timeout_ms = 1000",
        "max_concurrency = 1\nmax_queue = 4\nmemory_mib = 128\ntimeout_ms = 60000",
    ));
    // 32 MB: more than the kernel's socket buffers on both sides can hold.
    let mut reader = TcpStream::connect(address(&server)).await.unwrap();
    reader.write_all(b"GET /test/bytes/32000000 HTTP/1.1\r\nHost: edge\r\n\r\n").await.unwrap();
    // It reads nothing. The route's one instance is busy sending to it until it is cut.
    let cut = r#"edge_infer_http_connections_closed_total{listener="public",reason="send_timeout"}"#;
    within(Duration::from_secs(30), "cutting the stalled reader", wait_for_metric(&server, cut, 1.0)).await;
    let response = client().get(server.url("/test/sleep/1")).send().await.unwrap();
    assert_eq!(response.status(), 200, "the route's slot came back");
    // What the stalled client finally gets is short of the 32 MB promised.
    let mut received = Vec::new();
    let _ = reader.read_to_end(&mut received).await;
    assert!(received.len() < 32_000_000, "the cut answer is unfinished ({} bytes)", received.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_that_keeps_reading_is_not_cut() {
    // Timeouts of a second; the answer takes several to read, 128 KiB every 100 ms: each
    // read lets the node write more, which is progress, including after the answer's body
    // has been handed over whole.
    let server = Server::start(&config(
        "send_timeout_ms = 1000\nheader_read_timeout_ms = 1000",
        "memory_mib = 128\ntimeout_ms = 60000",
    ));
    let mut reader = TcpStream::connect(address(&server)).await.unwrap();
    reader
        .write_all(b"GET /test/bytes/6000000 HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 128 << 10];
    within(Duration::from_secs(60), "reading slowly", async {
        loop {
            match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let text = String::from_utf8_lossy(&received[..received.len().min(4096)]).to_string();
    let head_end = text.find("\r\n\r\n").expect("an answer head") + 4;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let cut = r#"edge_infer_http_connections_closed_total{listener="public",reason="send_timeout"}"#;
    let cuts = metric(&scrape(&server).await, cut);
    assert_eq!(
        received.len() - head_end,
        6_000_000,
        "the whole answer, though it took seconds (connections cut at the send timeout: {cuts})\n{}",
        server.logs()
    );
    assert_eq!(cuts, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_gone_silent_mid_request_is_closed_at_the_keepalive_timeout() {
    let server = Server::start(&config(
        "http2_keepalive_interval_ms = 300\nhttp2_keepalive_timeout_ms = 300\nheader_read_timeout_ms = 60000",
        "timeout_ms = 60000",
    ));
    // By hand: the preface, empty SETTINGS, and one request for a guest that sleeps a minute
    // (HEADERS with END_STREAM and END_HEADERS on stream 1, HPACK: GET, http, the path and the
    // authority as literals of indexed names). Then nothing: no SETTINGS ack, no ping answered.
    let path = b"/test/sleep/60000";
    let mut block = vec![0x82, 0x86, 0x44, path.len() as u8];
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x41, 4]);
    block.extend_from_slice(b"edge");
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
    frames.extend_from_slice(&block);
    let mut silent = TcpStream::connect(address(&server)).await.unwrap();
    silent.write_all(&frames).await.unwrap();
    // Its request is in flight (the guest is waiting, not the client), so neither the idle nor
    // the send timeout applies: only the unanswered pings close it.
    let closed = r#"edge_infer_http_connections_closed_total{listener="public",reason="keepalive_timeout"}"#;
    within(Duration::from_secs(30), "the keepalive timeout", wait_for_metric(&server, closed, 1.0)).await;
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_one_address_are_capped() {
    let server = Server::start(&config("max_connections_per_ip = 2\nheader_read_timeout_ms = 60000", ""));
    let address = address(&server);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream.write_all(b"GET /hello HTTP/1.1\r\nHost: edge\r\n").await.unwrap();
        held.push(stream);
    }
    let mut third = TcpStream::connect(&address).await.unwrap();
    let mut buffer = [0u8; 64];
    let read = within(Duration::from_secs(10), "the third connection", third.read(&mut buffer)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "the third connection from one address is closed at once");
    drop(held.pop());
    // The node frees the place once it has seen that connection close: watched from another
    // address, whose own connection is one of those counted open.
    let elsewhere = reqwest::Client::builder().local_address(IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let open = r#"edge_infer_http_connections_open{listener="public"}"#;
    within(Duration::from_secs(10), "the place given back", async {
        loop {
            let text = elsewhere.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
            if metric(&text, open) <= 2.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // With a place free, the address is served again.
    let response =
        within(Duration::from_secs(10), "a request", client().get(server.url("/hello")).send()).await;
    assert_eq!(response.unwrap().status(), 200);
    drop(held);
    let refused = r#"edge_infer_http_connections_closed_total{listener="public",reason="per_address"}"#;
    let text = elsewhere.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metric(&text, refused) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_grpc_connections_are_capped_and_closed() {
    let server =
        Server::start(&config("[server.grpc]\nmax_connections = 3\nheader_read_timeout_ms = 1000", ""));
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(&server.grpc).await.unwrap());
    }
    // A call waits for a slot, which comes once an idle connection is closed.
    let call = tokio::spawn({
        let grpc = server.grpc.clone();
        async move { grpc_call(&grpc, "ServerLive", grpc_frame(&[]), &[]).await }
    });
    for stream in &mut idle {
        let mut buffer = [0u8; 64];
        let read = within(Duration::from_secs(30), "closing an idle connection", async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    // The server's HTTP/2 preface, or its GOAWAY, before it closes.
                    Ok(_) => continue,
                }
            }
        });
        read.await;
    }
    let (status, message) = within(Duration::from_secs(30), "the waiting call", call).await.unwrap();
    assert_eq!(status, OK, "{message}");
    let closed = r#"edge_infer_http_connections_closed_total{listener="grpc",reason="header_timeout"}"#;
    assert!(metric(&scrape(&server).await, closed) >= 3.0);
}

/// A `ModelInferRequest` of `bytes` bytes: empty `inputs` entries (two bytes each: field 5,
/// length 0), then the model's name, so that the name cannot stop the walk first.
fn empty_inputs(bytes: usize) -> Vec<u8> {
    let name = b"\x0a\x0bno-such-one";
    let mut message = Vec::with_capacity(bytes);
    while message.len() + 2 + name.len() <= bytes {
        message.extend_from_slice(&[0x2a, 0x00]);
    }
    message.extend_from_slice(name);
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_of_millions_of_empty_inputs_are_refused_without_the_memory() {
    let server = Server::start(&config("", ""));
    for size in [8_000_000, 64 << 20] {
        let call = grpc_call(&server.grpc, "ModelInfer", grpc_frame(&empty_inputs(size)), &[]);
        let ((status, message), grown_mib) = server.memory_growth_mib(call).await;
        assert!(
            status == INVALID_ARGUMENT || status == RESOURCE_EXHAUSTED,
            "a {size}-byte message: {status} {message}"
        );
        assert!(message.contains("inputs: at most 64"), "{message}");
        assert!(grown_mib < 64.0, "a {size}-byte message grew the node by {grown_mib:.1} MiB");
    }
    let (status, message) = grpc_call(&server.grpc, "ServerLive", grpc_frame(&[]), &[]).await;
    assert_eq!(status, OK, "and the node goes on: {message}");
}

/// `value` as a protobuf varint.
fn varint(mut value: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    while value >= 0x80 {
        bytes.push(value as u8 | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_message_larger_than_its_model_can_take_is_refused_before_it_is_read() {
    let server = Server::start(&config("", ""));
    // 60 MiB of raw contents for digits, whose inputs are 64 floats a row: refused once the
    // model's name (the first field) is read.
    let mut message = b"\x0a\x06digits\x3a".to_vec();
    message.extend(varint(60 * MIB));
    message.resize(message.len() + 60 * MIB as usize, 0);
    let call = grpc_call(&server.grpc, "ModelInfer", grpc_frame(&message), &[]);
    let ((status, text), grown_mib) = server.memory_growth_mib(call).await;
    assert_eq!(status, INVALID_ARGUMENT, "{text}");
    assert!(text.contains("larger than model \"digits\""), "{text}");
    assert!(grown_mib < 16.0, "grew by {grown_mib:.1} MiB");
    // Over the listener's limit (64 MiB), whatever the model: refused at the length.
    let (status, text) =
        grpc_call(&server.grpc, "ModelInfer", [0, 0x04, 0x00, 0x00, 0x01].to_vec(), &[]).await;
    assert_eq!(status, RESOURCE_EXHAUSTED, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_loads_without_the_token_are_refused_before_their_bodies_are_read() {
    let server = Server::start(&config("", ""));
    let mut file = b"\x1a".to_vec(); // a parameters entry, 48 MiB long
    file.extend(varint(48 * MIB));
    file.resize(file.len() + 48 * MIB as usize, 0);
    let call = grpc_call(&server.grpc, "RepositoryModelLoad", grpc_frame(&file), &[]);
    let ((status, text), grown_mib) = server.memory_growth_mib(call).await;
    assert_eq!(status, UNAUTHENTICATED, "{text}");
    assert!(grown_mib < 16.0, "grew by {grown_mib:.1} MiB");
}

/// An infer body of about `bytes` bytes of JSON zeros for digits (which takes 64 a row).
fn zeros_body(bytes: usize) -> Vec<u8> {
    let head = br#"{"inputs":[{"name":"pixels","shape":[1,64],"datatype":"FP32","data":["#;
    let mut body = Vec::with_capacity(bytes + 16);
    body.extend_from_slice(head);
    while body.len() < bytes {
        body.extend_from_slice(b"0,");
    }
    body.extend_from_slice(b"0]}]}");
    body
}

/// Sends `bodies` infer requests of `size` bytes at once while asking `/healthz` over and
/// over; returns their statuses, the slowest health answer, and the node's growth in MiB.
async fn infer_bodies_at_once(
    server: &Server,
    bodies: usize,
    size: usize,
) -> (Vec<reqwest::Response>, Duration, f64) {
    let body = bytes::Bytes::from(zeros_body(size));
    let sending_all = async {
        let sending: Vec<_> = (0..bodies)
            .map(|_| {
                let (request, body) = (client().post(server.url("/v2/models/digits/infer")), body.clone());
                tokio::spawn(async move { request.body(body).send().await.unwrap() })
            })
            .collect();
        let health = client();
        let mut slowest = Duration::ZERO;
        while !sending.iter().all(|task| task.is_finished()) {
            let asked = Instant::now();
            let answer =
                within(Duration::from_secs(5), "health", health.get(server.url("/healthz")).send()).await;
            assert_eq!(answer.unwrap().status(), 200, "health is answered throughout");
            slowest = slowest.max(asked.elapsed());
        }
        let mut responses = Vec::new();
        for task in sending {
            responses.push(task.await.unwrap());
        }
        (responses, slowest)
    };
    let ((responses, slowest), grown_mib) = server.memory_growth_mib(sending_all).await;
    (responses, slowest, grown_mib)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_60_mib_json_bodies_at_once_stay_within_the_memory_budget() {
    let server = Server::start(&config("", ""));
    let (responses, slowest, grown_mib) = infer_bodies_at_once(&server, 4, 60 * MIB as usize).await;
    for response in responses {
        let status = response.status();
        let error: serde_json::Value = response.json().await.unwrap();
        assert!(status == 400 || status == 503, "{status} {error}");
    }
    // The default budget is 256 MiB; the documented bound on growth is under 300 MiB.
    assert!(grown_mib < 300.0, "grew by {grown_mib:.1} MiB");
    println!("four 60 MiB bodies: grew {grown_mib:.1} MiB, slowest health answer {slowest:?}");
}

/// Sends the head of an infer request declaring `length` bytes of body, and `sent` of them;
/// the connection is held open (the body unfinished) until dropped.
async fn declare_body(server: &Server, length: u64, sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(address(server)).await.unwrap();
    let head = format!(
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&zeros_body(sent)[..sent]).await.unwrap();
    stream
}

/// Reads an HTTP/1.1 answer from `stream`, which the server closes after it (the body it
/// refused is never read); returns its head and body.
async fn answer(stream: &mut TcpStream) -> (String, String) {
    let mut answer = Vec::new();
    within(Duration::from_secs(10), "an answer", stream.read_to_end(&mut answer)).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_memory_budget_get_503_with_retry_after() {
    let server = Server::start(&config("memory_budget_mib = 100\nmax_infer_request_bytes = 209715200", ""));
    // One body of 60 MiB on its way, unfinished: its length is charged at its head.
    let held = declare_body(&server, 60 * MIB, 1000).await;
    let in_use = "edge_infer_memory_in_use_bytes";
    within(Duration::from_secs(20), "charging the body", wait_for_metric(&server, in_use, (60 * MIB) as f64))
        .await;
    // Three more of 50 MiB are refused at their heads, their bodies never read.
    for _ in 0..3 {
        let mut refused = declare_body(&server, 50 * MIB, 0).await;
        let (head, body) = answer(&mut refused).await;
        assert!(head.starts_with("http/1.1 503 ") && head.contains("retry-after: 1"), "{head}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(error["error"].as_str().unwrap().contains("memory_budget_mib"), "{error}");
    }
    // A body larger than the whole budget can never fit: 413, not "retry".
    let mut never = declare_body(&server, 110 * MIB, 0).await;
    assert!(answer(&mut never).await.0.starts_with("http/1.1 413 "));
    drop(held);
    within(Duration::from_secs(20), "giving the charge back", wait_for_metric(&server, in_use, 0.0)).await;
    let text = scrape(&server).await;
    assert_eq!(metric(&text, r#"edge_infer_memory_refusals_total{protocol="rest"}"#), 4.0);
    assert_eq!(metric(&text, "edge_infer_memory_budget_bytes"), (100 * MIB) as f64);
    // With the memory back, the same request is served (400: digits takes 64 numbers).
    let response = client().post(server.url("/v2/models/digits/infer")).body(zeros_body(50 * MIB as usize));
    assert_eq!(response.send().await.unwrap().status(), 400);
}
