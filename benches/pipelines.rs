//! Model parallelism against replication, side by side in one run: all-MiniLM-L6-v2 over the
//! Open Inference Protocol (one 12-token text per request, 8 clients), served
//!
//! - split into two stages of one executor each (`split = { stages = 2 }`), pipelined;
//! - whole, with two executors (two run states over one copy of the weights);
//! - as two separately loaded copies of one executor each (what two replicas of a server
//!   that cannot share weights cost), the clients shared between them.
//!
//! For each: requests per second, p50 latency and the server's resident memory after the
//! run, with ratios to the whole model. All three use tract, so only the layout differs.
//!
//! Run: `cargo bench --bench pipelines` (MiniLM needs `python3 models/minilm/fetch.py`
//! first); EDGE_INFER_BENCH_SECONDS sets the seconds per measurement (default 5).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Server, repo_file};
use edge_infer_bench::loadgen::{self, Load, Report};
use serde_json::{Value, json};

const CLIENTS: usize = 8;

fn seconds() -> Duration {
    Duration::from_secs_f64(
        std::env::var("EDGE_INFER_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0),
    )
}

/// The first reference text's token ids as an infer request body.
fn body() -> Bytes {
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_file("models/minilm/reference.json")).unwrap())
            .unwrap();
    let ids: Vec<i64> = serde_json::from_value(reference["token_ids"][0].clone()).unwrap();
    let tensor = |name: &str, data: Vec<i64>| json!({ "name": name, "shape": [1, ids.len()], "datatype": "INT64", "data": data });
    let request = json!({ "inputs": [
        tensor("input_ids", ids.clone()),
        tensor("attention_mask", vec![1; ids.len()]),
        tensor("token_type_ids", vec![0; ids.len()]),
    ] });
    Bytes::from(request.to_string())
}

fn load(server: &Server, model: &str, clients: usize) -> Load {
    let url = server.url(&format!("/v2/models/{model}/infer")).parse().unwrap();
    Load {
        method: http::Method::POST,
        bodies: vec![body()],
        content_type: Some("application/json".into()),
        ..Load::closed(url, clients, Duration::from_secs(1), seconds())
    }
}

/// One layout: its requests per second, p50 in ms and resident memory in MiB.
struct Measured {
    per_second: f64,
    p50_ms: f64,
    resident_mib: f64,
}

fn measure(tokio: &tokio::runtime::Runtime, models: &str, served: &[&str]) -> Measured {
    let file = repo_file("models/minilm/model-float.onnx");
    let config = models.replace("FILE", &file.display().to_string());
    let server = Server::start(&config);
    let loads: Vec<Load> = served.iter().map(|model| load(&server, model, CLIENTS / served.len())).collect();
    let reports: Vec<Report> = tokio.block_on(async {
        let runs = loads.iter().map(loadgen::run);
        futures_util::future::join_all(runs).await.into_iter().map(Result::unwrap).collect()
    });
    for report in &reports {
        assert_eq!(report.successes(), report.latencies.len(), "{:?}", report.statuses);
    }
    Measured {
        per_second: reports.iter().map(Report::throughput).sum(),
        p50_ms: reports.iter().map(|r| r.latency_ms(0.5)).sum::<f64>() / reports.len() as f64,
        resident_mib: server.memory_kib("VmRSS") as f64 / 1024.0,
    }
}

fn main() {
    assert!(
        repo_file("models/minilm/model-float.onnx").is_file(),
        "run python3 models/minilm/fetch.py first"
    );
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let model = |name: &str, settings: &str| {
        format!("[models.{name}]\nfile = \"FILE\"\nbackend = \"tract\"\nbatching = \"off\"\n{settings}\n")
    };
    let layouts = [
        (
            "split in 2 stages, 1 executor each",
            model("minilm", "split = { stages = 2, executors = [1, 1] }"),
            vec!["minilm"],
        ),
        ("whole, 2 executors", model("minilm", "executors = 2"), vec!["minilm"]),
        (
            "2 copies, 1 executor each",
            model("minilm-a", "executors = 1") + &model("minilm-b", "executors = 1"),
            vec!["minilm-a", "minilm-b"],
        ),
    ];
    let measured: Vec<(&str, Measured)> =
        layouts.iter().map(|(label, config, served)| (*label, measure(&tokio, config, served))).collect();
    let whole = &measured[1].1;
    println!(
        "all-MiniLM-L6-v2 (float32, tract, batching off), {CLIENTS} clients, one 12-token text per request"
    );
    println!("| layout | req/s | p50 ms | resident MiB | req/s vs whole | memory vs whole |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (label, m) in &measured {
        println!(
            "| {label} | {:.1} | {:.1} | {:.0} | {:.2}x | {:.2}x |",
            m.per_second,
            m.p50_ms,
            m.resident_mib,
            m.per_second / whole.per_second,
            m.resident_mib / whole.resident_mib
        );
    }
}
