//! The Open Inference Protocol over gRPC, driven by Triton's own client (tritonclient[grpc]):
//! metadata, readiness, the digits model with the same labels as `/digits` (raw and typed
//! contents, and over a stream), a deadline that passes in the queue, a full queue, and REST
//! and gRPC requests sharing one model execution.

mod common;

use std::process::Command;

use common::{
    Server, classify, client, compat_python, digits_test_split, guest, metric, repo_file, scrape,
    wait_for_metric,
};
use serde_json::json;

/// Runs a tritonclient script from tests/compat with `args`; returns its stdout.
async fn tritonclient(script: &str, args: Vec<String>) -> String {
    let python = tokio::task::spawn_blocking(compat_python).await.unwrap();
    let script = repo_file(&format!("tests/compat/{script}"));
    let output =
        tokio::task::spawn_blocking(move || Command::new(python).arg(script).args(args).output().unwrap())
            .await
            .unwrap();
    assert!(output.status.success(), "tritonclient failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_grpc_gets_the_same_labels_as_the_digits_route() {
    let server = Server::start(&common::test_config());
    let split = repo_file("models/digits/test_split.json").display().to_string();
    let model = repo_file("models/digits/digits.onnx").display().to_string();
    let args = vec![server.grpc.clone(), split, server.admin_token(), model];
    let labels = tritonclient("tritonclient_grpc.py", args).await;
    let grpc_labels: Vec<usize> = serde_json::from_str(&labels).unwrap();
    let (images, _) = digits_test_split();
    assert_eq!(grpc_labels.len(), images.len());
    for (image, grpc_label) in images.iter().zip(&grpc_labels) {
        assert_eq!(classify(&client(), &server, image).await, *grpc_label);
    }
    let text = scrape(&server).await;
    assert!(metric(&text, r#"edge_infer_requests_total{outcome="success",route="grpc"}"#) >= 3.0);
}

/// The `slow` model (one executor, a queue of `queue_capacity`) behind the test guest, which
/// keeps it busy on request.
fn slow_config(queue_capacity: usize) -> String {
    format!(
        "[models.slow]\nfile = \"{}\"\nexecutors = 1\nbatching = \"off\"\nqueue_capacity = {queue_capacity}\n\n\
         [[routes]]\npath = \"/test\"\ncomponent = \"{}\"\nmodels = [\"slow\"]\ntimeout_ms = 20000\n\
         memory_mib = 256\nhost_memory_mib = 256\n",
        repo_file("tests/models/slow.onnx").display(),
        guest("testing").display()
    )
}

/// Rows that keep the slow model's executor busy for seconds, even with tract's matrix
/// products across both cores: longer than a Python client takes to start on a loaded
/// machine.
const BUSY_ROWS: u32 = 40_000;

/// Starts a REST request that occupies the slow model's executor; returns once it runs.
async fn occupy_slow_executor(server: &Server) -> tokio::task::JoinHandle<u16> {
    let started = r#"edge_infer_model_queue_duration_seconds_count{model="slow"}"#;
    let runs_before = metric(&scrape(server).await, started);
    let url = server.url(&format!("/test/nn/zeros/slow/x/{BUSY_ROWS}x256"));
    let busy = tokio::spawn(async move { client().get(url).send().await.unwrap().status().as_u16() });
    wait_for_metric(server, started, runs_before + 1.0).await;
    busy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_deadline_that_passes_in_the_queue_is_deadline_exceeded_and_never_runs() {
    let server = Server::start(&slow_config(16));
    let busy = occupy_slow_executor(&server).await;
    let args = vec![server.grpc.clone(), "slow".into(), "x".into(), "7x256".into(), "0.2".into()];
    assert_eq!(tritonclient("tritonclient_grpc_call.py", args).await.trim(), "StatusCode.DEADLINE_EXCEEDED");
    assert_eq!(busy.await.unwrap(), 200);
    // At its deadline the call dropped its queued work; the executor, free again after the
    // busy run, finds it abandoned and counts it cancelled instead of running it.
    wait_for_metric(&server, r#"edge_infer_model_requests_total{model="slow",outcome="cancelled"}"#, 1.0)
        .await;
    let text = scrape(&server).await;
    assert_eq!(
        metric(&text, r#"edge_infer_model_inferences_total{model="slow"}"#),
        f64::from(BUSY_ROWS),
        "never ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_itself_answers_deadline_exceeded_at_the_grpc_timeout() {
    // A client with no deadline of its own: only the grpc-timeout it sends can end the call.
    let server = Server::start(&slow_config(16));
    let busy = occupy_slow_executor(&server).await;
    let zeros = json!({ "inputs": [{ "name": "x", "shape": [7, 256], "datatype": "FP32", "data": vec![0.0; 7 * 256] }] });
    let frame = edge_infer_bench::grpc::infer_frame("slow", zeros.to_string().as_bytes()).unwrap();
    let http2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let answer = http2
        .post(format!("http://{}/inference.GRPCInferenceService/ModelInfer", server.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "200m")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["grpc-status"], "4", "DEADLINE_EXCEEDED: {:?}", answer.headers());
    assert_eq!(busy.await.unwrap(), 200);
    let text = scrape(&server).await;
    assert_eq!(metric(&text, r#"edge_infer_requests_total{outcome="timeout",route="grpc"}"#), 1.0);
    assert_eq!(metric(&text, r#"edge_infer_model_inferences_total{model="slow"}"#), f64::from(BUSY_ROWS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_resource_exhausted() {
    let server = Server::start(&slow_config(1));
    let busy = occupy_slow_executor(&server).await;
    let filler = tokio::spawn(client().get(server.url("/test/nn/zeros/slow/x/4x256")).send());
    wait_for_metric(&server, r#"edge_infer_model_pending_requests{model="slow"}"#, 1.0).await;
    let args = vec![server.grpc.clone(), "slow".into(), "x".into(), "5x256".into()];
    assert_eq!(tritonclient("tritonclient_grpc_call.py", args).await.trim(), "StatusCode.RESOURCE_EXHAUSTED");
    assert_eq!(busy.await.unwrap(), 200);
    assert_eq!(filler.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_grpc_requests_share_one_model_execution() {
    // The batcher holds a batch open for up to five seconds (longer than a Python client
    // takes to start on a loaded machine), closing it at two items.
    let config = format!(
        "[models.digits]\nfile = \"{}\"\nbatching = \"on\"\nmax_batch_size = 2\nqueue_delay = \"fixed\"\n\
         max_queue_delay_us = 5000000\nexecutors = 1\n",
        repo_file("models/digits/digits.onnx").display()
    );
    let server = Server::start(&config);
    let rest = tokio::spawn(
        client()
            .post(server.url("/v2/models/digits/infer"))
            .json(&json!({ "inputs": [{ "name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": vec![0.0; 64] }] }))
            .send(),
    );
    wait_for_metric(&server, r#"edge_infer_model_pending_requests{model="digits"}"#, 1.0).await;
    let args = vec![server.grpc.clone(), "digits".into(), "pixels".into(), "1x64".into()];
    assert_eq!(tritonclient("tritonclient_grpc_call.py", args).await.trim(), "OK");
    assert_eq!(rest.await.unwrap().unwrap().status(), 200);
    let text = scrape(&server).await;
    assert_eq!(metric(&text, r#"edge_infer_model_inferences_total{model="digits"}"#), 2.0);
    assert_eq!(
        metric(&text, r#"edge_infer_model_executions_total{model="digits"}"#),
        1.0,
        "one run for both"
    );
    for protocol in ["rest", "grpc"] {
        let series =
            format!(r#"edge_infer_inference_requests_total{{outcome="success",protocol="{protocol}"}}"#);
        assert_eq!(metric(&text, &series), 1.0, "{series}");
    }
}
