//! Per-request isolation: every request gets a fresh instance, so `/hello` always answers 1,
//! whether its instance was made when it arrived or ahead of it (`ready_instances`).

mod common;

use common::{Server, client, guest, metric, post_json, scrape, test_config, wait_for_metric};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_made_ahead_serve_one_request_each() {
    let hello = guest("hello");
    let config = format!(
        "[[routes]]\npath = \"/ahead\"\ncomponent = \"{hello}\"\nmax_concurrency = 4\nready_instances = 2\n\n\
         [[routes]]\npath = \"/on-arrival\"\ncomponent = \"{hello}\"\nready_instances = 0\n",
        hello = hello.display()
    );
    let server = Server::start(&config);
    let client = client();
    let made =
        |route: &str| format!("edge_infer_instance_creation_duration_seconds_count{{route=\"{route}\"}}");
    let hits = |route: &str| format!("edge_infer_ready_instance_hits_total{{route=\"{route}\"}}");
    // Two are made at start-up (the metric counts the second: the first, made while loading,
    // is not a request's); each request takes one and has another made in its place.
    for served in 0..REQUESTS {
        wait_for_metric(&server, &made("/ahead"), (1 + served) as f64).await;
        let (status, body) = post_json(&client, &server.url("/ahead"), &json!({})).await;
        assert_eq!((status, body), (200, json!({ "served": 1 })), "request {served}");
    }
    wait_for_metric(&server, &made("/ahead"), (1 + REQUESTS) as f64).await;
    for _ in 0..REQUESTS {
        let (status, body) = post_json(&client, &server.url("/on-arrival"), &json!({})).await;
        assert_eq!((status, body), (200, json!({ "served": 1 })));
    }
    let text = scrape(&server).await;
    assert_eq!(metric(&text, &hits("/ahead")), REQUESTS as f64, "every request found one made");
    assert_eq!(metric(&text, &hits("/on-arrival")), 0.0);
    assert_eq!(metric(&text, &made("/on-arrival")), REQUESTS as f64, "one per request");
}
