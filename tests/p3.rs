//! `wasi:http` 0.3 guests beside 0.2 guests on one node: both get a fresh instance per
//! request, a 0.3 guest streams its body from a task that outlives its handler, a trap part
//! way through that body reaches the client as an error (curl, HTTP/1.1 and HTTP/2), its
//! deadline holds, and its `wasi:nn` calls answer as a 0.2 guest's do.

mod common;

use std::process::Command;

use common::{Server, client, digits_test_split, guest, post_json, wait_for_logged_times};
use serde_json::{Value, json};

fn config() -> String {
    format!(
        "{}\n[[routes]]\npath = \"/hello\"\ncomponent = \"{}\"\n\n[[routes]]\npath = \"/p3\"\ncomponent = \"{}\"\ntimeout_ms = 1500\n\n[[routes]]\npath = \"/stream\"\ncomponent = \"{}\"\nmodels = [\"digits\"]\n",
        common::digits_config(),
        guest("hello").display(),
        guest("testing_p3").display(),
        guest("stream").display(),
    )
}

async fn start() -> Server {
    tokio::task::spawn_blocking(|| Server::start(&config())).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p3_and_a_p2_guest_are_served_side_by_side_each_request_on_a_fresh_instance() {
    let server =
        tokio::task::spawn_blocking(|| Server::start_logging(&config(), "info", "text")).await.unwrap();
    let logs = server.logs();
    assert!(logs.contains("wasi:http@0.3") && logs.contains("wasi:http@0.2"), "{logs}");
    let requests: Vec<_> = (0..48)
        .map(|i| {
            let url = server.url(if i % 2 == 0 { "/p3/served" } else { "/hello" });
            tokio::spawn(async move {
                let response = client().get(&url).send().await.unwrap();
                (url, response.status().as_u16(), response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    for request in requests {
        let (url, status, answer) = request.await.unwrap();
        assert_eq!((status, &answer), (200, &json!({ "served": 1 })), "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p3_guest_streams_its_body_and_calls_models_as_a_p2_guest_does() {
    let server = start().await;
    let (images, _labels) = digits_test_split();
    let images: Vec<Vec<u8>> = images.into_iter().take(6).collect();
    let response =
        client().post(server.url("/stream")).json(&json!({ "images": images })).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    assert!(response.headers().get("content-length").is_none(), "a streamed body has no length");
    let body = response.text().await.unwrap();
    let lines: Vec<Value> = body.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), images.len(), "{body}");
    // The same labels as the 0.2 guest gives for the same images, in order.
    let (status, whole) = post_json(&client(), &server.url("/digits"), &json!({ "images": images })).await;
    assert_eq!(status, 200, "{whole}");
    for (i, (line, answer)) in lines.iter().zip(whole.as_array().unwrap()).enumerate() {
        assert_eq!((&line["image"], &line["label"]), (&json!(i), &answer["label"]), "{body}");
    }
    // Bad input is refused before any line, with a JSON error.
    let (status, error) = post_json(&client(), &server.url("/stream"), &json!({ "images": [[1, 2]] })).await;
    assert_eq!(status, 400, "{error}");
    assert!(error["error"].as_str().unwrap().contains("64 numbers"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_part_way_through_a_p3_body_reaches_the_client_as_an_error() {
    let server = start().await;
    let url = server.url("/p3/lines?count=50&trap_after=3");
    let http1 = reqwest::Client::builder().http1_only().build().unwrap();
    let http2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    for (version, client) in [("HTTP/1.1", &http1), ("HTTP/2", &http2)] {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "the head went out before the trap");
        let body = response.bytes().await;
        assert!(body.is_err(), "over {version}, a cut body must be an error, got {body:?}");
    }
    let curl = Command::new("curl").args(["--silent", "--show-error", &url]).output().unwrap();
    let text = String::from_utf8_lossy(&curl.stdout);
    assert!(!curl.status.success(), "curl must fail on a cut body; it printed {text:?}");
    // What it received is the start of the lines written before the trap: hyper may close the
    // connection before it has flushed them all, never with anything written after.
    assert!("line 0\nline 1\nline 2\n".starts_with(&*text), "{text:?}");
    wait_for_logged_times(&server, "response cut off", 3).await;
    assert!(server.logs().contains("wasm trap"), "{}", server.logs());
    // A finished stream ends cleanly, and the node goes on serving.
    let whole = client().get(server.url("/p3/lines?count=4")).send().await.unwrap().text().await.unwrap();
    assert_eq!(whole, "line 0\nline 1\nline 2\nline 3\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_p3_guest_that_loops_is_stopped_at_its_deadline() {
    let server = start().await;
    let response = client().get(server.url("/p3/spin")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    let error: Value = response.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("deadline"), "{error}");
    let hello = client().get(server.url("/hello")).send().await.unwrap();
    assert_eq!(hello.status(), 200);
}
