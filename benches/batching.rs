//! Does dynamic batching pay, and does the `auto` policy ever make things worse?
//!
//! Run: `cargo bench --bench batching` (EDGE_INFER_BENCH_SECONDS sets the measured seconds
//! per cell, default 3). Everything is measured side by side in one run, on this machine,
//! each cell three times in interleaved rounds (the median counts), so that drift in the
//! machine's speed hits every setting alike:
//!
//! 1. End to end: 64 closed-loop HTTP clients against the real server (HTTP, a fresh guest
//!    instance per request, `wasi:nn`, the scheduler, tract), one image/item per request,
//!    for three models with batching `off`, `on` and `auto`.
//! 2. The model path alone: 64 concurrent callers of the model's scheduler in-process (no
//!    HTTP, no guest), same models and settings: what batching does to the model itself.
//!
//! The models: `digits` (a tiny MLP: per-call overhead dominates), `slow` (a MatMul chain,
//! tests/models), `conv` (a small CNN, benches/models: tract runs it slower per item in
//! batches).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Server, digits_test_split, guest, repo_file};
use edge_infer::inference::scheduler::{Batching, ModelScheduler, SchedulerConfig};
use edge_infer::inference::tensor::{ElementType, Tensor};
use edge_infer::request::{Priority, RequestContext};
use edge_infer_bench::loadgen::{self, Load, Report};

const CLIENTS: usize = 64;
/// Every cell is measured this many times, interleaved with the others; the median counts.
const ROUNDS: usize = 3;
const SETTINGS: [(&str, Batching); 3] =
    [("off", Batching::Off), ("on", Batching::On), ("auto", Batching::Auto)];

/// A benchmarked model: where its file is, and how one request of one item looks.
struct Model {
    name: &'static str,
    file: &'static str,
    input: &'static str,
    item_shape: &'static [usize],
}

const MODELS: [Model; 3] = [
    Model { name: "digits", file: "models/digits/digits.onnx", input: "pixels", item_shape: &[64] },
    Model { name: "slow", file: "tests/models/slow.onnx", input: "x", item_shape: &[256] },
    Model { name: "conv", file: "benches/models/conv.onnx", input: "image", item_shape: &[3, 32, 32] },
];

fn seconds() -> Duration {
    let seconds = std::env::var("EDGE_INFER_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    Duration::from_secs_f64(seconds)
}

fn server_config(batching: &str) -> String {
    let mut config = String::new();
    for model in &MODELS {
        config += &format!(
            "[models.{}]\nfile = \"{}\"\nbatching = \"{batching}\"\n\n",
            model.name,
            repo_file(model.file).display()
        );
    }
    config += &format!(
        "[[routes]]\npath = \"/digits\"\ncomponent = \"{}\"\nmodels = [\"digits\"]\n\n\
         [[routes]]\npath = \"/test\"\ncomponent = \"{}\"\nmodels = [\"slow\", \"conv\"]\n",
        guest("digits").display(),
        guest("testing").display()
    );
    config
}

/// The request one HTTP client sends for `model`: one item.
fn http_load(server: &Server, model: &Model) -> Load {
    let (url, method, body, content_type) = if model.name == "digits" {
        let (images, _) = digits_test_split();
        let body = serde_json::json!({ "pixels": images[0] }).to_string();
        (server.url("/digits"), http::Method::POST, body, Some("application/json".to_string()))
    } else {
        let dims: Vec<String> =
            std::iter::once(1).chain(model.item_shape.iter().copied()).map(|d| d.to_string()).collect();
        let path = format!("/test/nn/zeros/{}/{}/{}", model.name, model.input, dims.join("x"));
        (server.url(&path), http::Method::GET, String::new(), None)
    };
    Load {
        method,
        bodies: vec![body.into()],
        content_type,
        ..Load::closed(url.parse().unwrap(), CLIENTS, Duration::from_secs(1), seconds())
    }
}

/// A model's scheduler with one batching setting and the config's defaults otherwise, as the
/// server would start it.
fn start_scheduler(model: &Model, batching: Batching) -> Arc<ModelScheduler> {
    let kind = edge_infer::inference::backend::BackendKind::Tract;
    let backend = edge_infer::inference::choice::load_file(model.name, kind, &repo_file(model.file)).unwrap();
    let config: edge_infer::node::config::ModelConfig =
        toml::from_str(&format!("file = \"{}\"", model.file)).unwrap();
    let config = SchedulerConfig { batching, ..edge_infer::node::models::scheduler_config(&config, false) };
    Arc::new(ModelScheduler::start(model.name, Arc::from(backend), &config).unwrap())
}

/// Items per second through a scheduler alone, with `CLIENTS` concurrent callers.
async fn model_path_throughput(scheduler: &Arc<ModelScheduler>, model: &Model) -> f64 {
    let shape: Vec<usize> = std::iter::once(1).chain(model.item_shape.iter().copied()).collect();
    let bytes = 4 * shape.iter().product::<usize>();
    let input = Tensor::new(ElementType::F32, shape, vec![0; bytes]).unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop_at = started + seconds();
    let callers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (scheduler, input, done) = (scheduler.clone(), input.clone(), done.clone());
            let name = model.input.to_string();
            tokio::spawn(async move {
                while Instant::now() < stop_at {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let context = RequestContext::new(deadline, Priority::Normal);
                    scheduler.compute(vec![(name.clone(), input.clone())], &context).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The middle value.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn cell(report: &Report) -> String {
    format!("{:>7.0} ({:>5.2}/{:>6.2})", report.throughput(), report.latency_ms(0.5), report.latency_ms(0.99))
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "edge-infer batching benchmark: {CLIENTS} clients, {:?} per cell, median of {ROUNDS} interleaved rounds, {cores} cores",
        seconds()
    );

    // 1. End to end: one server per setting, all up at once; rounds visit every cell in turn.
    let servers: Vec<Server> =
        SETTINGS.iter().map(|(setting, _)| Server::start(&server_config(setting))).collect();
    let mut http: Vec<Vec<Vec<Report>>> =
        MODELS.iter().map(|_| SETTINGS.iter().map(|_| Vec::new()).collect()).collect();
    for _ in 0..ROUNDS {
        for (m, model) in MODELS.iter().enumerate() {
            for (s, server) in servers.iter().enumerate() {
                let report = tokio.block_on(loadgen::run(&http_load(server, model))).unwrap();
                assert_eq!(
                    report.successes(),
                    report.latencies.len(),
                    "{}: {:?}",
                    model.name,
                    report.statuses
                );
                http[m][s].push(report);
            }
        }
    }
    let auto_metrics = tokio.block_on(common::scrape(&servers[2]));
    println!("\n1. End to end over HTTP: req/s (p50/p99 ms), one item per request");
    println!(
        "{:<7} {:>24} {:>24} {:>24} {:>8} {:>10} {:>6}",
        "model", "batching off", "on", "auto", "on/off", "auto/best", "auto"
    );
    for (model, cells) in MODELS.iter().zip(&http) {
        // The report of the median round, per setting.
        let medians: Vec<&Report> = cells
            .iter()
            .map(|rounds| {
                let middle = median(rounds.iter().map(Report::throughput).collect());
                rounds.iter().find(|r| r.throughput() == middle).unwrap()
            })
            .collect();
        let rates: Vec<f64> = medians.iter().map(|r| r.throughput()).collect();
        let best = rates[0].max(rates[1]);
        let series = format!("edge_infer_model_max_batch_size{{model=\"{}\"}}", model.name);
        println!(
            "{:<7} {:>24} {:>24} {:>24} {:>7.2}x {:>9.1}% {:>6}",
            model.name,
            cell(medians[0]),
            cell(medians[1]),
            cell(medians[2]),
            rates[1] / rates[0],
            100.0 * rates[2] / best,
            format!("b={}", common::metric(&auto_metrics, &series)),
        );
    }
    drop(servers);

    // 2. The model path alone.
    println!("\n2. The model path alone (scheduler in-process, no HTTP or guest): items/s");
    println!(
        "{:<7} {:>12} {:>12} {:>12} {:>8} {:>10} {:>6}",
        "model", "off", "on", "auto", "on/off", "auto/best", "auto"
    );
    for model in &MODELS {
        let schedulers: Vec<_> =
            SETTINGS.iter().map(|(_, batching)| start_scheduler(model, *batching)).collect();
        let mut rates: Vec<Vec<f64>> = schedulers.iter().map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            for (scheduler, rounds) in schedulers.iter().zip(&mut rates) {
                rounds.push(tokio.block_on(model_path_throughput(scheduler, model)));
            }
        }
        let rates: Vec<f64> = rates.into_iter().map(median).collect();
        let best = rates[0].max(rates[1]);
        println!(
            "{:<7} {:>12.0} {:>12.0} {:>12.0} {:>7.2}x {:>9.1}% {:>6}",
            model.name,
            rates[0],
            rates[1],
            rates[2],
            rates[1] / rates[0],
            100.0 * rates[2] / best,
            format!("b={}", schedulers[2].max_batch_items()),
        );
    }
}
