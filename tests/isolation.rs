//! Per-request isolation: every request gets a fresh instance, so `/hello` always answers 1.

mod common;

use common::{Server, client, post_json, test_config};
use serde_json::json;

/// Requests in each round.
const REQUESTS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_answers_1_on_sequential_and_concurrent_requests() {
    let server = Server::start(&test_config());
    let client = client();
    for _ in 0..REQUESTS {
        let (status, body) = post_json(&client, &server.url("/hello"), &json!({})).await;
        assert_eq!((status, body), (200, json!({ "served": 1 })));
    }
    let url = server.url("/hello");
    let concurrent: Vec<_> = (0..REQUESTS)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { post_json(&client, &url, &json!({})).await })
        })
        .collect();
    for request in concurrent {
        assert_eq!(request.await.unwrap(), (200, json!({ "served": 1 })));
    }
}
