//! `edge-infer bench` against a real server: request counts, open-loop rates, the built-in
//! example requests, HTTP/2, the CSV and JSON outputs, and the SVG plot.

mod common;

use std::process::Command;

use common::Server;
use serde_json::Value;

/// Runs `edge-infer bench` with `args` and returns its stdout.
fn bench(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_edge-infer")).arg("bench").args(args).output().unwrap();
    assert!(output.status.success(), "bench failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn json_reports(args: &[&str]) -> Vec<Value> {
    serde_json::from_str(&bench(&[args, &["--format", "json"]].concat())).unwrap()
}

#[test]
fn a_request_count_stops_each_step_exactly() {
    let server = Server::in_process_bundled();
    let url = server.url("/digits");
    let args = [
        "--example",
        "digits",
        "--concurrency",
        "1,4",
        "--requests",
        "50",
        "--warm-up",
        "0",
        "--duration",
        "60",
    ];
    let plot = tempfile::tempdir().unwrap().keep().join("plot.svg");
    let plot_arg = ["--plot", plot.to_str().unwrap()];
    let reports = json_reports(&[&[url.as_str()], &args[..], &plot_arg[..]].concat());
    assert_eq!(reports.len(), 2);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("c=1") && svg.contains("c=4"), "{svg}");
    for (report, load) in reports.iter().zip(["c=1", "c=4"]) {
        assert_eq!(report["load"], load);
        assert_eq!(report["requests"], 50);
        assert_eq!(report["statuses"]["200"], 50, "{report}");
        assert!(report["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn an_even_open_loop_rate_sends_rate_times_duration_requests() {
    let server = Server::in_process_bundled();
    let url = server.url("/hello");
    let csv = bench(&[&url, "--rate", "100", "--duration", "2", "--warm-up", "0.2", "--format", "csv"]);
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), edge_infer_bench::loadgen::Report::CSV_HEADER);
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(row[0], "rate=100/s");
    let requests: u64 = row[1].parse().unwrap();
    assert!((199..=201).contains(&requests), "{requests} requests at 100/s for 2 s");
    assert_eq!(row[9], row[1], "every request succeeded");
}

#[test]
fn examples_http2_and_any_endpoint_work() {
    let server = Server::in_process_bundled();
    for (path, extra) in
        [("/vad", &["--example", "vad"][..]), ("/hello", &["--http2"][..]), ("/v2/health/live", &[][..])]
    {
        let url = server.url(path);
        let args =
            [&[url.as_str(), "--requests", "20", "--concurrency", "2", "--warm-up", "0"], extra].concat();
        let report = &json_reports(&args)[0];
        assert_eq!(report["statuses"]["200"], 20, "{path}: {report}");
    }
    let poisson = json_reports(&[
        &server.url("/hello"),
        "--rate",
        "200",
        "--poisson",
        "--requests",
        "30",
        "--warm-up",
        "0",
    ]);
    assert_eq!(
        (poisson[0]["load"].as_str(), poisson[0]["requests"].as_u64()),
        (Some("rate=200/s poisson"), Some(30))
    );
}

#[test]
fn a_grpc_load_calls_model_infer_and_counts_grpc_failures() {
    let server = Server::in_process_bundled();
    let url = format!("grpc://{}/digits", server.grpc);
    let common = ["--concurrency", "2", "--requests", "40", "--warm-up", "0", "--duration", "60"];
    let reports = json_reports(&[&[url.as_str(), "--example", "digits"], &common[..]].concat());
    assert_eq!(reports[0]["statuses"]["200"], 40, "{}", reports[0]);
    // A model that does not exist: every call fails with NOT_FOUND, counted as 404.
    let missing = format!("grpc://{}/no-such-model", server.grpc);
    let reports = json_reports(&[&[missing.as_str(), "--example", "digits"], &common[..]].concat());
    assert_eq!(reports[0]["statuses"]["404"], 40, "{}", reports[0]);
}
