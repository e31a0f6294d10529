//! Hostile guests harm only their own request: a guest that hoards host memory through
//! `wasi:nn` tensors, piles up resource handles or overflows its stack fails alone, with
//! the reason in the answer, the next request is served, and the server's memory stays
//! under a bound computed from the routes' budgets. At full load, every admitted request
//! finds an instance in a pool sized exactly to the routes' caps (no instances made ahead).

mod common;

use common::{Server, client, guest, wait_for_log, wait_for_logged_times};
use serde_json::Value;

/// The hostile route's limits, in MiB, and how many of its instances may run at once.
const MEMORY_MIB: u64 = 16;
const HOST_MEMORY_MIB: u64 = 32;
const HOSTILE_CONCURRENCY: u64 = 4;

fn config() -> String {
    // 400 clients at once from this one machine: more than one address may hold by default.
    format!(
        r#"
[server]
max_connections_per_ip = 1000

[[routes]]
path = "/test"
component = "{testing}"
memory_mib = {MEMORY_MIB}
host_memory_mib = {HOST_MEMORY_MIB}
max_host_resources = 500
max_concurrency = {HOSTILE_CONCURRENCY}
ready_instances = 0
timeout_ms = 20000

[[routes]]
path = "/hello"
component = "{hello}"
max_concurrency = 2
ready_instances = 0
max_queue = 1000
"#,
        testing = guest("testing").display(),
        hello = guest("hello").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_streams_a_body_larger_than_its_memory() {
    let config = format!(
        "[[routes]]\npath = \"/test\"\ncomponent = \"{}\"\nmemory_mib = {MEMORY_MIB}\nmax_body_bytes = {}\n",
        guest("testing").display(),
        40 << 20
    );
    let server = tokio::task::spawn_blocking(move || Server::start(&config)).await.unwrap();
    // 24 MB, more than the guest's 16 MiB of memory could hold whole.
    let body: Vec<u8> = (0..24_000_000u32).map(|i| (i % 251) as u8).collect();
    let response = client().post(server.url("/test/body-ends")).body(body.clone()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["bytes"], body.len());
    assert_eq!(answer["head"], serde_json::json!(body[..8]));
    assert_eq!(answer["tail"], serde_json::json!(body[body.len() - 8..]));
}

async fn get(url: String) -> (u16, Value) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_guests_fail_alone_with_the_reason_and_host_memory_stays_bounded() {
    let server = tokio::task::spawn_blocking(|| Server::start(&config())).await.unwrap();
    assert_eq!(get(server.url("/hello")).await.0, 200);
    let baseline_kib = server.memory_kib("VmRSS");

    // As many hoarders as the route admits at once, twice over: each is stopped at its budget.
    for _ in 0..2 {
        let hoarders: Vec<_> =
            (0..HOSTILE_CONCURRENCY).map(|_| tokio::spawn(get(server.url("/test/hoard")))).collect();
        for hoarder in hoarders {
            let (status, answer) = hoarder.await.unwrap();
            assert_eq!(status, 500, "{answer}");
            let error = answer["error"].as_str().unwrap();
            assert!(error.contains("host budget") && error.contains("host_memory_mib"), "{error}");
        }
        assert_eq!(get(server.url("/hello")).await, (200, serde_json::json!({ "served": 1 })));
    }
    // Peak resident memory: at most every admitted instance's linear memory and host budget
    // at once, plus room for transient copies and the allocator's slack.
    let per_instance_kib = (MEMORY_MIB + HOST_MEMORY_MIB) * 1024;
    let bound_kib = baseline_kib + HOSTILE_CONCURRENCY * per_instance_kib + 128 * 1024;
    let peak_kib = server.memory_kib("VmHWM");
    assert!(peak_kib < bound_kib, "peak RSS {peak_kib} KiB over the bound {bound_kib} KiB");

    let (status, answer) = get(server.url("/test/many-dims")).await;
    assert_eq!(status, 500, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("at most 16 dimensions"), "{answer}");

    let (status, answer) = get(server.url("/test/handles")).await;
    assert_eq!(status, 500, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("max_host_resources"), "{answer}");

    // Headers are host memory too: 120 KB a `fields`, under the handle cap, reach the budget.
    let hoarding = get(server.url("/test/header-hoard"));
    let ((status, answer), grown_mib) = server.memory_growth_mib(hoarding).await;
    assert_eq!(status, 500, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("HTTP fields") && error.contains("host_memory_mib"), "{error}");
    assert!(grown_mib < (MEMORY_MIB + HOST_MEMORY_MIB + 16) as f64, "grew by {grown_mib:.1} MiB");

    let (status, answer) = get(server.url("/test/recurse")).await;
    assert_eq!(status, 500, "{answer}");
    // Deep recursion in a Rust guest runs its shadow stack (in linear memory) out of bounds
    // before wasm's own call stack; either way the answer names the trap.
    let error = answer["error"].as_str().unwrap();
    assert!(
        ["call stack exhausted", "out of bounds memory access"].iter().any(|reason| error.contains(reason)),
        "the reason: {answer}"
    );
    wait_for_log(&server, "wasm backtrace").await;

    let (status, answer) = get(server.url("/test/no-response")).await;
    assert_eq!((status, answer["error"].as_str()), (500, Some("the guest gave no response")));

    assert_eq!(get(server.url("/hello")).await.0, 200, "the server goes on serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_full_load_every_admitted_request_finds_an_instance() {
    // The pool holds exactly Σ max_concurrency instances; a slot must be free again before
    // the route admits the next request.
    let server = tokio::task::spawn_blocking(|| Server::start(&config())).await.unwrap();
    let requests: Vec<_> = (0..400).map(|_| tokio::spawn(get(server.url("/hello")))).collect();
    for request in requests {
        let (status, answer) = request.await.unwrap();
        assert_eq!(status, 200, "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_the_guest_could_not_finish_is_an_error_for_the_client() {
    let config = format!(
        "[[routes]]\npath = \"/test\"\ncomponent = \"{}\"\ntimeout_ms = 1500\nmax_response_bytes = 100000\n",
        guest("testing").display()
    );
    let server = tokio::task::spawn_blocking(move || Server::start(&config)).await.unwrap();
    let http1 = reqwest::Client::builder().http1_only().build().unwrap();
    let http2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    for (version, client) in [("HTTP/1.1", &http1), ("HTTP/2", &http2)] {
        // A trap after the head, the deadline while streaming, a body over max_response_bytes.
        for path in ["/test/trap-mid-body", "/test/stream-forever", "/test/bytes/200000"] {
            // The head may have gone out (then the body fails) or not (then the request does).
            let answer = match client.get(server.url(path)).send().await {
                Ok(response) => response.bytes().await.map(|body| body.len()),
                Err(error) => Err(error),
            };
            assert!(answer.is_err(), "{path} over {version}: a cut answer must be an error, got {answer:?}");
        }
        // A finished response still ends cleanly, on a new connection or the same one.
        let body = client.get(server.url("/test/bytes/1000")).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(body.len(), 1000, "over {version}");
    }
    // Each of the six is logged with its reason.
    wait_for_logged_times(&server, "response cut off", 6).await;
    let logs = server.logs();
    assert_eq!(logs.matches("response cut off").count(), 6, "{logs}");
    for reason in ["wasm trap", "deadline", "max_response_bytes"] {
        assert_eq!(logs.matches(reason).count(), 2, "{reason}: {logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compute_storm_ends_at_its_deadline_and_others_are_served() {
    let config = format!(
        "{}\n[[routes]]\npath = \"/test\"\ncomponent = \"{}\"\nmodels = [\"digits\"]\ntimeout_ms = 2000\n",
        common::digits_config(),
        guest("testing").display(),
    );
    let server = tokio::task::spawn_blocking(move || Server::start(&config)).await.unwrap();
    let storms: Vec<_> = (0..2).map(|_| tokio::spawn(get(server.url("/test/storm")))).collect();
    // While two guests hammer the model, a normal client's requests are answered.
    let (images, _) = common::digits_test_split();
    for image in images.iter().take(20) {
        let (status, answer) =
            common::post_json(&client(), &server.url("/digits"), &serde_json::json!({ "pixels": image }))
                .await;
        assert_eq!(status, 200, "{answer}");
    }
    for storm in storms {
        let (status, answer) = storm.await.unwrap();
        assert!(
            status == 504 || status == 503,
            "a storm ends at its deadline (or on a full queue): {status} {answer}"
        );
    }
    // A guest setting a 1 MiB header is stopped at wasi:http's field size limit, alone.
    let (status, answer) = get(server.url("/test/huge-header")).await;
    assert_eq!(status, 500, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("exceeds limit"), "the reason: {answer}");
    assert_eq!(get(server.url("/test/sleep/1")).await.0, 200);
}
