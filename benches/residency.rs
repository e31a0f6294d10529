//! Resources that follow demand: models loaded on use and evicted under
//! `server.model_memory_mib`, measured under load, side by side in one run.
//!
//! Run: `cargo bench --bench residency`. The model is the quantized all-MiniLM-L6-v2
//! (models/minilm/model.onnx, 23 MB, on tract), every request eight tokens over the Open
//! Inference Protocol.
//!
//! 1. **More models than fit.** Ten copies of the model, requests cycling over them from
//!    four clients: under a budget for three (each request for a model not loaded waits
//!    for its load, and evicts the least recently used idle one), and with no budget (all
//!    ten loaded) as the reference. Printed: goodput (200s per second), p99, failed
//!    requests, loads and evictions, and the largest resident memory sampled.
//! 2. **Load that moves.** Two models, a budget for one: sixteen clients on A, then on B.
//!    Printed: B's throughput second by second after the move, against a node serving B
//!    alone, and how long until B is within 10% of it.
//!
//! Settings from the environment: `EDGE_INFER_BENCH_SECONDS` (each phase, default 20).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, client, metric, minilm_eight_tokens, post_json, repo_file, scrape};

/// Bytes in a MiB.
const MIB: f64 = (1u64 << 20) as f64;

fn seconds() -> u64 {
    std::env::var("EDGE_INFER_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20)
}

fn model(name: &str) -> String {
    format!(
        "[models.{name}]\nfile = \"{}\"\nbackend = \"tract\"\nbatching = \"off\"\nexecutors = 2\n\n",
        repo_file("models/minilm/model.onnx").display()
    )
}

fn config(models: &[String], budget_mib: Option<u64>) -> String {
    let budget = budget_mib.map_or(String::new(), |mib| format!("model_memory_mib = {mib}\n"));
    let models: String = models.iter().map(|name| model(name)).collect();
    format!("[server]\nmax_connections_per_ip = 4096\n{budget}\n{models}")
}

/// What a run of clients saw: each answer's status and latency, and when it came.
struct Run {
    answers: Vec<(Instant, u16, Duration)>,
    started: Instant,
    elapsed: Duration,
    largest_resident: f64,
}

impl Run {
    fn goodput(&self) -> f64 {
        self.answers.iter().filter(|(_, status, _)| *status == 200).count() as f64
            / self.elapsed.as_secs_f64()
    }

    fn failed(&self) -> usize {
        self.answers.iter().filter(|(_, status, _)| *status != 200).count()
    }

    fn p99_ms(&self) -> f64 {
        let mut latencies: Vec<f64> =
            self.answers.iter().map(|(_, _, took)| took.as_secs_f64() * 1e3).collect();
        latencies.sort_by(f64::total_cmp);
        latencies.get(latencies.len() * 99 / 100).copied().unwrap_or(f64::NAN)
    }

    /// 200s per second in each whole second of the run.
    fn per_second(&self) -> Vec<f64> {
        let mut seconds = vec![0.0; self.elapsed.as_secs() as usize];
        for (at, status, _) in &self.answers {
            let second = (*at - self.started).as_secs() as usize;
            if *status == 200 && second < seconds.len() {
                seconds[second] += 1.0;
            }
        }
        seconds
    }
}

/// `clients` clients for `duration`, each sending to the next of `models` in turn.
async fn run(server: &Server, models: &[String], clients: usize, duration: Duration) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let body = minilm_eight_tokens().to_string();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (next, body) = (next.clone(), body.clone());
            let urls: Vec<String> =
                models.iter().map(|m| server.url(&format!("/v2/models/{m}/infer"))).collect();
            tokio::spawn(async move {
                let http = client();
                let mut answers = Vec::new();
                while Instant::now() < deadline {
                    let url = &urls[next.fetch_add(1, Ordering::Relaxed) % urls.len()];
                    let sent = Instant::now();
                    let response = http
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let status = match response {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let _ = response.bytes().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    answers.push((Instant::now(), status, sent.elapsed()));
                }
                answers
            })
        })
        .collect();
    let mut largest_resident: f64 = 0.0;
    while Instant::now() < deadline {
        largest_resident = largest_resident.max(server.memory_kib("VmRSS") as f64 * 1024.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.extend(task.await.unwrap());
    }
    Run { answers, started, elapsed: started.elapsed(), largest_resident }
}

async fn counters(server: &Server, models: &[String]) -> (f64, f64) {
    let text = scrape(server).await;
    let sum = |family: &str| -> f64 {
        models.iter().map(|m| metric(&text, &format!("{family}{{model=\"{m}\"}}"))).sum()
    };
    (sum("edge_infer_model_loads_total"), sum("edge_infer_model_evictions_total"))
}

/// One request to each model in turn, so that every model that fits is loaded before the
/// measurement (a warm start leaves unpinned models to load in the background or on use).
async fn warm_up(server: &Server, models: &[String]) {
    for model in models {
        let (status, answer) =
            post_json(&client(), &server.url(&format!("/v2/models/{model}/infer")), &minilm_eight_tokens())
                .await;
        assert_eq!(status, 200, "{answer}");
    }
}

fn start(config: String) -> Server {
    Server::start(&config)
}

#[tokio::main]
async fn main() {
    let phase = Duration::from_secs(seconds());
    let ten: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let alone = tokio::task::spawn_blocking(|| start(model("alone"))).await.unwrap();
    let charge = metric(&scrape(&alone).await, "edge_infer_model_resident_bytes{model=\"alone\"}");
    drop(alone);
    let budget_mib = (charge * 3.5 / MIB).ceil() as u64;
    println!("one model holds {:.1} MiB loaded; a budget for three: {budget_mib} MiB", charge / MIB);

    println!("\n1. Ten models, requests cycling over them, 4 clients, {} s each", phase.as_secs());
    println!(
        "{:<22} {:>9} {:>9} {:>7} {:>7} {:>10} {:>14}",
        "", "goodput/s", "p99 ms", "failed", "loads", "evictions", "largest RSS MiB"
    );
    for (label, budget) in [("budget for 3", Some(budget_mib)), ("no budget (all 10)", None)] {
        let configured = config(&ten, budget);
        let server = tokio::task::spawn_blocking(move || start(configured)).await.unwrap();
        warm_up(&server, &ten).await;
        let (loads_before, evictions_before) = counters(&server, &ten).await;
        let measured = run(&server, &ten, 4, phase).await;
        let (loads, evictions) = counters(&server, &ten).await;
        println!(
            "{label:<22} {:>9.1} {:>9.1} {:>7} {:>7} {:>10} {:>14.0}",
            measured.goodput(),
            measured.p99_ms(),
            measured.failed(),
            loads - loads_before,
            evictions - evictions_before,
            measured.largest_resident / MIB
        );
    }

    println!("\n2. Sixteen clients on A, then on B (a budget for one); B alone for reference");
    let pair = vec!["a".to_string(), "b".to_string()];
    let single_budget = (charge * 1.5 / MIB).ceil() as u64;
    let configured = config(&pair, Some(single_budget));
    let server = tokio::task::spawn_blocking(move || start(configured)).await.unwrap();
    warm_up(&server, &pair[..1]).await;
    let on_a = run(&server, &pair[..1], 16, phase).await;
    let on_b = run(&server, &pair[1..], 16, phase).await;
    let (loads, evictions) = counters(&server, &pair).await;
    drop(server);
    let only_b = vec!["b".to_string()];
    let configured = config(&only_b, None);
    let server = tokio::task::spawn_blocking(move || start(configured)).await.unwrap();
    warm_up(&server, &only_b).await;
    let reference = run(&server, &only_b, 16, phase).await;
    let settled = reference.goodput();
    println!(
        "A before the move: {:.1}/s; B alone: {settled:.1}/s; loads {loads}, evictions {evictions}",
        on_a.goodput()
    );
    let per_second = on_b.per_second();
    let within = per_second.iter().position(|&rate| rate >= 0.9 * settled);
    let shown: Vec<String> = per_second.iter().map(|rate| format!("{rate:.0}")).collect();
    println!("B after the move, per second: {}", shown.join(" "));
    match within {
        Some(second) => {
            println!("B within 10% of B alone after {second} s (whole run: {:.2}x)", on_b.goodput() / settled)
        }
        None => println!("B never within 10% of B alone (whole run: {:.2}x)", on_b.goodput() / settled),
    }
}
