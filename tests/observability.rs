//! Metrics that add up exactly after a known mix of requests, and the logs: one JSON line
//! per request with its id, and guest stderr tagged with route and request id, bounded.

mod common;

use common::{
    Server, client, digits_config, digits_test_split, guest, metric, post_json, scrape, wait_for_log,
    wait_for_metric,
};
use serde_json::{Value, json};

fn config() -> String {
    format!(
        "{}\n[[routes]]\npath = \"/test\"\ncomponent = \"{}\"\nmax_concurrency = 1\nmax_queue = 0\ntimeout_ms = 5000\n",
        digits_config(),
        guest("testing").display()
    )
}

fn series(name: &str, labels: &str) -> String {
    format!("{name}{{{labels}}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_add_up_after_a_known_mix_of_requests() {
    let server = Server::start(&config());
    let (images, _) = digits_test_split();
    let digits = server.url("/digits");
    for image in &images[..5] {
        assert_eq!(post_json(&client(), &digits, &json!({ "pixels": image })).await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(client().post(&digits).body("{").send().await.unwrap().status(), 400);
    }
    for _ in 0..2 {
        let spin = client().get(server.url("/test/spin")).header("x-edge-deadline-ms", "100");
        assert_eq!(spin.send().await.unwrap().status(), 504);
    }
    let sleeper = tokio::spawn(client().get(server.url("/test/sleep/1000")).send());
    wait_for_metric(&server, r#"edge_infer_route_instances_in_use{route="/test"}"#, 1.0).await;
    for _ in 0..3 {
        assert_eq!(client().get(server.url("/test/trap")).send().await.unwrap().status(), 503);
    }
    assert_eq!(sleeper.await.unwrap().unwrap().status(), 200);
    assert_eq!(client().get(server.url("/test/trap")).send().await.unwrap().status(), 500);

    let text = scrape(&server).await;
    let requests = |route: &str, outcome: &str| {
        metric(
            &text,
            &series("edge_infer_requests_total", &format!("outcome=\"{outcome}\",route=\"{route}\"")),
        )
    };
    assert_eq!(requests("/digits", "success"), 5.0);
    assert_eq!(requests("/digits", "invalid"), 2.0);
    assert_eq!(requests("/test", "timeout"), 2.0);
    assert_eq!(requests("/test", "rejected"), 3.0);
    assert_eq!(requests("/test", "success"), 1.0);
    assert_eq!(requests("/test", "error"), 1.0);
    let duration_count = |route: &str| {
        metric(&text, &series("edge_infer_request_duration_seconds_count", &format!("route=\"{route}\"")))
    };
    assert_eq!(duration_count("/digits"), 7.0, "one observation per request");
    assert_eq!(duration_count("/test"), 7.0);
    assert_eq!(metric(&text, r#"edge_infer_guest_traps_total{route="/test"}"#), 1.0);
    assert_eq!(metric(&text, r#"edge_infer_route_instances_capacity{route="/test"}"#), 1.0);
    assert_eq!(metric(&text, r#"edge_infer_route_instances_in_use{route="/test"}"#), 0.0);

    let model = |name: &str| metric(&text, &series(name, "model=\"digits\""));
    assert_eq!(model("edge_infer_model_inferences_total"), 5.0);
    assert_eq!(metric(&text, r#"edge_infer_model_requests_total{model="digits",outcome="success"}"#), 5.0);
    assert_eq!(model("edge_infer_model_queue_duration_seconds_count"), 5.0);
    let executions = model("edge_infer_model_executions_total");
    assert!((1.0..=5.0).contains(&executions));
    assert_eq!(model("edge_infer_model_compute_duration_seconds_count"), executions);
    assert_eq!(model("edge_infer_model_batch_size_count"), executions);
    assert_eq!(model("edge_infer_model_batch_size_sum"), 5.0);
    assert_eq!(model("edge_infer_model_pending_requests"), 0.0);
    assert!(metric(&text, "process_resident_memory_bytes") > 0.0);
    assert!(text.contains("process_cpu_seconds_total"));
}

/// The JSON log lines the server has written.
fn json_lines(server: &Server) -> Vec<Value> {
    server.logs().lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

#[tokio::test]
async fn one_json_line_per_request_and_guest_stderr_tagged_and_bounded() {
    let server = Server::start_logging(&config(), "info", "json");
    let response =
        client().get(server.url("/test/log/3")).header("x-request-id", "req-42").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let (images, _) = digits_test_split();
    let answer = client()
        .post(server.url("/digits"))
        .header("x-request-id", "req-43")
        .json(&json!({ "pixels": images[0] }));
    assert_eq!(answer.send().await.unwrap().status(), 200);
    // A guest that writes more than a request may log is cut off, and the drop counted.
    let chatty = client().get(server.url("/test/log/100")).header("x-request-id", "req-44");
    assert_eq!(chatty.send().await.unwrap().status(), 200);
    // Its access line comes after all its guest lines.
    wait_for_log(&server, r#""message":"request","request_id":"req-44""#).await;

    let lines = json_lines(&server);
    let access = |id: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == "request" && l["fields"]["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id} in {lines:?}"))
            .clone()
    };
    let logged = access("req-42");
    assert_eq!(
        (logged["fields"]["status"].as_u64(), logged["fields"]["route"].as_str()),
        (Some(200), Some("/test"))
    );
    let inferred = access("req-43");
    assert_eq!(inferred["fields"]["models"], "digits");
    assert!(inferred["fields"]["total_us"].as_u64().unwrap() > 0);
    let guest_lines: Vec<&Value> =
        lines.iter().filter(|l| l["target"] == "guest" && l["fields"]["request_id"] == "req-42").collect();
    let messages: Vec<&str> = guest_lines.iter().map(|l| l["fields"]["message"].as_str().unwrap()).collect();
    assert_eq!(messages, ["guest line 0", "guest line 1", "guest line 2"]);
    assert!(guest_lines.iter().all(|l| l["fields"]["route"] == "/test"));
    let text = scrape(&server).await;
    assert_eq!(metric(&text, r#"edge_infer_guest_log_lines_dropped_total{route="/test"}"#), 36.0);
}
