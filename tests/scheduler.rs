//! The inference scheduler under real load: batching that never mixes requests up, queue
//! deadlines, priorities, cancellation, the result cache, and graceful degradation.
//!
//! The `slow` model (tests/models/slow.onnx, made by make_slow.py beside it) keeps its single executor busy for a while on
//! a large request, so that later requests are certainly queued behind it.

mod common;

use std::time::{Duration, Instant};

use common::{
    Server, client, digits_test_split, expect_error, guest, metric, post_json, repo_file, scrape,
    wait_for_metric,
};
use serde_json::{Value, json};

/// Rows that keep the slow model's executor busy for roughly a second, with tract's matrix
/// products across both cores.
const BUSY_ROWS: u32 = 20_000;

fn config(slow_model_extra: &str, digits_extra: &str, test_route_extra: &str) -> String {
    format!(
        r#"
[models.slow]
file = "{slow}"
executors = 1
batching = "off"
{slow_model_extra}

[models.digits]
file = "{digits}"
{digits_extra}

[[routes]]
path = "/test"
component = "{testing}"
models = ["slow", "digits"]
timeout_ms = 20000
{test_route_extra}

[[routes]]
path = "/digits"
component = "{digits_guest}"
models = ["digits"]
"#,
        slow = repo_file("tests/models/slow.onnx").display(),
        digits = repo_file("models/digits/digits.onnx").display(),
        testing = guest("testing").display(),
        digits_guest = guest("digits").display(),
    )
}

const SLOW_INFERENCES: &str = r#"edge_infer_model_inferences_total{model="slow"}"#;
const SLOW_PENDING: &str = r#"edge_infer_model_pending_requests{model="slow"}"#;

/// Starts a request that occupies the slow model's executor, and returns once it runs.
async fn occupy_slow_executor(server: &Server) -> tokio::task::JoinHandle<u16> {
    // An executor counts a job's time in the queue when it starts running it.
    let started = r#"edge_infer_model_queue_duration_seconds_count{model="slow"}"#;
    let runs_before = metric(&scrape(server).await, started);
    let url = server.url(&slow_path(BUSY_ROWS));
    let busy = tokio::spawn(async move { client().get(url).send().await.unwrap().status().as_u16() });
    wait_for_metric(server, started, runs_before + 1.0).await;
    busy
}

/// The test guest's path that runs the slow model on `rows` rows.
fn slow_path(rows: u32) -> String {
    format!("/test/nn/zeros/slow/x/{rows}x256")
}

fn slow_request(
    server: &Server,
    rows: u32,
    headers: &[(&'static str, &'static str)],
) -> reqwest::RequestBuilder {
    let mut request = client().get(server.url(&slow_path(rows)));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_results_equal_unbatched_ones_and_never_mix_requests() {
    let batched = Server::start(&config(
        "",
        "batching = \"on\"\nmax_queue_delay_us = 3000\nqueue_delay = \"fixed\"\nexecutors = 1",
        "",
    ));
    let unbatched = Server::start(&config("", "batching = \"off\"", ""));
    let (images, _) = digits_test_split();
    // A mix of one-image and several-image bodies, every one different.
    let bodies: Vec<Value> = (0..120)
        .map(|i| match i % 3 {
            0 => json!({ "pixels": images[i % images.len()] }),
            n => json!({ "images": images[i..i + n + 1] }),
        })
        .collect();
    let send_all = |server: &Server| {
        let url = server.url("/digits");
        let requests: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|body| {
                let url = url.clone();
                tokio::spawn(async move { post_json(&client(), &url, &body).await })
            })
            .collect();
        async move {
            let mut answers = Vec::new();
            for request in requests {
                let (status, body) = request.await.unwrap();
                assert_eq!(status, 200, "{body}");
                answers.push(body);
            }
            answers
        }
    };
    let (with_batching, without) = tokio::join!(send_all(&batched), send_all(&unbatched));
    for ((body, a), b) in bodies.iter().zip(&with_batching).zip(&without) {
        let predictions = |answer: &Value| match answer.as_array() {
            Some(list) => list.clone(),
            None => vec![answer.clone()],
        };
        let (a, b) = (predictions(a), predictions(b));
        assert_eq!(a.len(), b.len(), "for {body}");
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(a["label"], b["label"], "for {body}");
            let (pa, pb) = (a["probabilities"].as_array().unwrap(), b["probabilities"].as_array().unwrap());
            for (x, y) in pa.iter().zip(pb) {
                assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5, "for {body}: {a} vs {b}");
            }
        }
    }
    let text = scrape(&batched).await;
    let runs = metric(&text, r#"edge_infer_model_executions_total{model="digits"}"#);
    let items = metric(&text, r#"edge_infer_model_inferences_total{model="digits"}"#);
    assert_eq!(items, 240.0, "every image inferred exactly once");
    assert!(runs < items / 2.0, "requests were batched: {runs} runs for {items} items");
}

#[tokio::test]
async fn a_request_whose_deadline_passes_in_the_queue_gets_504_and_never_runs() {
    let server = Server::start(&config("", "", ""));
    let busy = occupy_slow_executor(&server).await;
    let started = Instant::now();
    let response = slow_request(&server, 7, &[("x-edge-deadline-ms", "200")]).send().await.unwrap();
    expect_error(response, 504).await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "answered at its deadline, not after the busy run"
    );
    assert_eq!(busy.await.unwrap(), 200);
    let text = scrape(&server).await;
    assert_eq!(metric(&text, SLOW_INFERENCES), f64::from(BUSY_ROWS), "the expired request never ran");
}

/// The test config, with the anonymous tenant allowed high priority.
fn config_allowing_high_priority() -> String {
    format!("{}\n[tenants.anonymous]\nmax_priority = \"high\"\n", config("", "", ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn high_priority_requests_finish_before_normal_ones_queued_earlier() {
    let server = Server::start(&config_allowing_high_priority());
    let busy = occupy_slow_executor(&server).await;
    let mut requests = Vec::new();
    for (index, priority) in ["normal", "normal", "normal", "high", "high", "high"].into_iter().enumerate() {
        // ~25 ms of model time each: the order they finish in is the order they ran in.
        let request = slow_request(&server, 300, &[("x-edge-priority", priority)]);
        requests.push((
            priority,
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), 200);
                Instant::now()
            }),
        ));
        wait_for_metric(&server, SLOW_PENDING, (index + 1) as f64).await;
    }
    assert_eq!(busy.await.unwrap(), 200);
    let mut finished = Vec::new();
    for (priority, request) in requests {
        finished.push((request.await.unwrap(), priority));
    }
    finished.sort();
    let order: Vec<&str> = finished.iter().map(|(_, priority)| *priority).collect();
    assert_eq!(order, ["high", "high", "high", "normal", "normal", "normal"]);
}

#[tokio::test]
async fn a_dropped_clients_queued_request_never_reaches_the_model() {
    let server = Server::start(&config("", "", ""));
    let busy = occupy_slow_executor(&server).await;
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(200)).build().unwrap();
    let dropped = impatient.get(server.url(&slow_path(9))).send().await;
    assert!(dropped.unwrap_err().is_timeout());
    assert_eq!(busy.await.unwrap(), 200);
    // Let the executor look at the queue once more, then check what ran.
    let after = slow_request(&server, 1, &[]).send().await.unwrap();
    assert_eq!(after.status(), 200);
    let text = scrape(&server).await;
    assert_eq!(metric(&text, SLOW_INFERENCES), f64::from(BUSY_ROWS + 1), "the dropped request never ran");
    assert_eq!(metric(&text, r#"edge_infer_model_requests_total{model="slow",outcome="cancelled"}"#), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_at_ten_times_capacity_degrades_gracefully() {
    let server = Server::start(&config("queue_capacity = 4", "", "max_concurrency = 4\nmax_queue = 4"));
    let rss = |text: &str| metric(text, "process_resident_memory_bytes");
    let before = rss(&scrape(&server).await);
    // Capacity is 4 running + 4 queued at the route; send ten times that at once.
    let requests: Vec<_> = (0..80)
        .map(|i| {
            let request = slow_request(&server, 40 + i, &[("x-edge-deadline-ms", "1500")]);
            tokio::spawn(async move { request.send().await.unwrap() })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for request in requests {
        let response = request.await.unwrap();
        let status = response.status().as_u16();
        assert!(matches!(status, 200 | 503 | 504), "unexpected status {status}");
        if status == 503 {
            assert_eq!(response.headers()["retry-after"], "1");
        }
        *counts.entry(status).or_insert(0) += 1;
    }
    assert!(counts.get(&200).is_some_and(|&n| n > 0), "{counts:?}");
    assert!(counts.get(&503).is_some_and(|&n| n > 0), "{counts:?}");
    let after = rss(&scrape(&server).await);
    assert!(after < before + 256.0 * 1024.0 * 1024.0, "memory grew from {before} to {after}");
    // And the server answers normally afterwards.
    let (images, labels) = digits_test_split();
    let (status, body) = post_json(&client(), &server.url("/digits"), &json!({ "pixels": images[0] })).await;
    assert_eq!((status, body["label"].as_u64()), (200, Some(labels[0] as u64)));
}

#[tokio::test]
async fn a_cache_hit_skips_the_model() {
    let server = Server::start(&config("", "cache_entries = 64", ""));
    let (images, _) = digits_test_split();
    let url = server.url("/digits");
    let first = post_json(&client(), &url, &json!({ "pixels": images[5] })).await;
    let second = post_json(&client(), &url, &json!({ "pixels": images[5] })).await;
    assert_eq!(first, second);
    assert_eq!(first.0, 200);
    let other = post_json(&client(), &url, &json!({ "pixels": images[6] })).await;
    assert_eq!(other.0, 200);
    let text = scrape(&server).await;
    assert_eq!(metric(&text, r#"edge_infer_model_inferences_total{model="digits"}"#), 2.0);
    assert_eq!(metric(&text, r#"edge_infer_model_cache_lookups_total{model="digits",result="hit"}"#), 1.0);
    assert_eq!(metric(&text, r#"edge_infer_model_cache_lookups_total{model="digits",result="miss"}"#), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_overload_a_stale_cached_result_is_served_instead_of_503() {
    let slow = "queue_capacity = 1\ncache_entries = 16\ncache_ttl_ms = 1\nserve_stale_on_overload = true";
    let server = Server::start(&config(slow, "", ""));
    assert_eq!(slow_request(&server, 3, &[]).send().await.unwrap().status(), 200);
    let busy = occupy_slow_executor(&server).await;
    let filler = tokio::spawn(slow_request(&server, 4, &[]).send());
    wait_for_metric(&server, SLOW_PENDING, 1.0).await;
    // The queue is full: a request seen before gets its (expired) cached result...
    let stale = slow_request(&server, 3, &[]).send().await.unwrap();
    assert_eq!(stale.status(), 200);
    // ...and one never seen is refused at once.
    let refused = slow_request(&server, 5, &[]).send().await.unwrap();
    assert_eq!(refused.headers()["retry-after"], "1");
    expect_error(refused, 503).await;
    assert_eq!(busy.await.unwrap(), 200);
    assert_eq!(filler.await.unwrap().unwrap().status(), 200);
    let text = scrape(&server).await;
    assert_eq!(metric(&text, r#"edge_infer_model_requests_total{model="slow",outcome="stale_hit"}"#), 1.0);
    assert_eq!(metric(&text, r#"edge_infer_model_requests_total{model="slow",outcome="rejected"}"#), 1.0);
}

/// Queues, behind a busy executor, requests with the given API keys and priorities in turn,
/// each `rows` rows; returns the indices of `queued` in the order their requests finished.
async fn finishing_order(server: &Server, queued: &[(&'static str, &'static str)]) -> Vec<usize> {
    let busy = occupy_slow_executor(server).await;
    let mut requests = Vec::new();
    for (index, (key, priority)) in queued.iter().enumerate() {
        let request = slow_request(server, 300, &[("x-api-key", key), ("x-edge-priority", priority)]);
        requests.push(tokio::spawn(async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            Instant::now()
        }));
        wait_for_metric(server, SLOW_PENDING, (index + 1) as f64).await;
    }
    assert_eq!(busy.await.unwrap(), 200);
    let mut finished = Vec::new();
    for (index, request) in requests.into_iter().enumerate() {
        finished.push((request.await.unwrap(), index));
    }
    finished.sort();
    finished.into_iter().map(|(_, index)| index).collect()
}

/// Two tenants of equal weight, named by the API keys `flood` and `calm`; the flood may ask
/// for `flood_priority` at most.
fn two_tenants(flood_priority: &str) -> String {
    let digest = |key: &str| {
        use sha2::Digest as _;
        sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    format!(
        "{}\n[tenants.flood]\napi_key_sha256 = [\"{}\"]\nmax_priority = \"{flood_priority}\"\n\n[tenants.calm]\napi_key_sha256 = [\"{}\"]\n",
        config("", "", ""),
        digest("flood"),
        digest("calm")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenants_flood_does_not_push_another_tenant_to_the_back_of_the_queue() {
    let server = Server::start(&two_tenants("high"));
    // Six of the flood's, at the high priority it is allowed, then two of the other's.
    let mut queued = vec![("flood", "high"); 6];
    queued.extend([("calm", "normal"); 2]);
    let order = finishing_order(&server, &queued).await;
    // Turns alternate between the two tenants: the calm one's two requests are among the
    // first four served, not after the whole flood. Priorities order a tenant's own only.
    let calm_early = order[..4].iter().filter(|&&index| index >= 6).count();
    assert_eq!(calm_early, 2, "finishing order {order:?} (6 and 7 are the calm tenant's)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_priority_a_tenant_is_not_allowed_is_not_given() {
    // Allowed normal at most, the flood's `high` request queued last runs last.
    let server = Server::start(&two_tenants("normal"));
    let order =
        finishing_order(&server, &[("flood", "normal"), ("flood", "normal"), ("flood", "high")]).await;
    assert_eq!(order, [0, 1, 2]);
    // Allowed high, it goes first among the flood's own.
    let server = Server::start(&two_tenants("high"));
    let order =
        finishing_order(&server, &[("flood", "normal"), ("flood", "normal"), ("flood", "high")]).await;
    assert_eq!(order, [2, 0, 1]);
    // Without credentials, a request is the anonymous tenant's, allowed normal by default.
    let anonymous = Server::start(&config("", "", ""));
    let order = finishing_order(&anonymous, &[("none", "normal"), ("none", "high")]).await;
    assert_eq!(order, [0, 1], "an anonymous client's `high` is normal: it runs in turn");
}
