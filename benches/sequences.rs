//! Batching on real text: `/embed` (all-MiniLM-L6-v2) with texts of varied lengths, batching
//! `off`, `on` and `auto`, side by side in one run.
//!
//! Run: `cargo bench --bench sequences`. Each request carries one text, taken in turn from
//! the 64 texts of `edge-infer bench --example embed` (1 to 70 words, about 3 to 100 tokens),
//! so requests of different lengths meet in the batcher and are padded. A cell is a whole
//! number of passes over the texts (one per 16 clients, three at least), so every setting
//! measures exactly the same requests. Every cell is
//! measured `EDGE_INFER_BENCH_ROUNDS` times (default 3) in interleaved rounds, the median
//! counts, so drift in the machine's speed hits every setting alike. Printed per client
//! count: req/s and p50/p99 for each setting, the ratios that matter (on/off, auto against
//! the better fixed setting, auto's 1-client p50 against off's), and for the batching
//! settings the mean batch and the share of padding in the batches.
//!
//! Settings from the environment: `EDGE_INFER_BENCH_CLIENTS` (default `1,16,64`),
//! `EDGE_INFER_BENCH_PASSES` multiplies the passes (default 1),
//! `EDGE_INFER_BENCH_MODEL_SETTINGS` (TOML lines added to the model's config, e.g.
//! `max_padding_ratio = 0.2`),
//! `EDGE_INFER_BENCH_BACKEND` (the model's
//! `backend`, default `auto`: the GPU where one is usable; `benches/gpu.sh` runs this bench
//! there with 128 clients too).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{Server, guest, metric, repo_file, scrape};
use edge_infer_bench::loadgen::{self, Load, Report};

const SETTINGS: [&str; 3] = ["off", "on", "auto"];
/// A cell stops after this long even if its requests are not all answered (then it fails).
const MAX_CELL: Duration = Duration::from_secs(120);

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn clients() -> Vec<usize> {
    let list = setting("EDGE_INFER_BENCH_CLIENTS", "1,16,64".to_string());
    list.split(',')
        .map(|n| n.trim().parse().expect("EDGE_INFER_BENCH_CLIENTS: numbers, comma-separated"))
        .collect()
}

fn server_config(batching: &str) -> String {
    let backend = setting("EDGE_INFER_BENCH_BACKEND", "auto".to_string());
    // Extra model settings, e.g. `max_padding_ratio = 0.2`, to compare against the defaults.
    let extra = setting("EDGE_INFER_BENCH_MODEL_SETTINGS", String::new());
    format!(
        "[models.minilm]\nfile = \"{}\"\nbackend = \"{backend}\"\nbatching = \"{batching}\"\n{extra}\n\n\
         [[routes]]\npath = \"/embed\"\ncomponent = \"{}\"\nmodels = [\"minilm\"]\nmax_concurrency = 256\n",
        repo_file("models/minilm/model-float.onnx").display(),
        guest("embed").display()
    )
}

/// The model's counters that say how it batched.
#[derive(Clone, Copy, Default)]
struct Counters {
    executions: f64,
    inferences: f64,
    real: f64,
    padding: f64,
}

impl Counters {
    async fn read(server: &Server) -> Counters {
        let text = scrape(server).await;
        let get = |series: &str| metric(&text, series);
        Counters {
            executions: get("edge_infer_model_executions_total{model=\"minilm\"}"),
            inferences: get("edge_infer_model_inferences_total{model=\"minilm\"}"),
            real: get("edge_infer_model_input_elements_total{kind=\"real\",model=\"minilm\"}"),
            padding: get("edge_infer_model_input_elements_total{kind=\"padding\",model=\"minilm\"}"),
        }
    }

    fn since(self, before: Counters) -> Counters {
        Counters {
            executions: self.executions - before.executions,
            inferences: self.inferences - before.inferences,
            real: self.real - before.real,
            padding: self.padding - before.padding,
        }
    }

    fn add(&mut self, other: Counters) {
        self.executions += other.executions;
        self.inferences += other.inferences;
        self.real += other.real;
        self.padding += other.padding;
    }
}

/// One cell's rounds: what the client measured, and the model's counters.
#[derive(Default)]
struct Cell {
    reports: Vec<Report>,
    counters: Counters,
}

impl Cell {
    fn median(&self, of: impl Fn(&Report) -> f64) -> f64 {
        let mut values: Vec<f64> = self.reports.iter().map(of).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    }

    fn rate(&self) -> f64 {
        self.median(Report::throughput)
    }

    fn p50(&self) -> f64 {
        self.median(|r| r.latency_ms(0.5))
    }

    fn show(&self) -> String {
        format!("{:>6.0} ({:>6.1}/{:>6.1})", self.rate(), self.p50(), self.median(|r| r.latency_ms(0.99)))
    }

    /// Mean items per model run, and the share of padding in the batches' inputs.
    fn batching(&self) -> String {
        let c = self.counters;
        let batch = c.inferences / c.executions.max(1.0);
        let padding = 100.0 * c.padding / (c.real + c.padding).max(1.0);
        format!("{batch:>5.1} {padding:>5.1}%")
    }
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (clients, rounds) = (clients(), setting("EDGE_INFER_BENCH_ROUNDS", 3usize));
    let passes = setting("EDGE_INFER_BENCH_PASSES", 1usize);
    let texts = edge_infer_bench::embed_bodies();
    println!(
        "edge-infer sequence batching benchmark: /embed, one text per request from {} of 1-70 words; \
         {passes} x max(3, clients/16) passes over them per cell, median of {rounds} interleaved rounds, {cores} cores",
        texts.len()
    );
    let servers: Vec<Server> =
        SETTINGS.iter().map(|s| Server::start_logging(&server_config(s), "info", "text")).collect();
    for server in &servers {
        let logs = server.logs();
        let loaded = logs.lines().find(|l| l.contains("model loaded")).unwrap_or("model not loaded?");
        println!("  {}", loaded.split("INFO").last().unwrap_or(loaded).trim());
    }
    let decision = servers[2].logs().lines().find(|l| l.contains("batching:")).map(str::to_string);
    println!(
        "  auto: {}",
        decision.as_deref().map_or("(no decision logged)", |l| l.split("INFO").last().unwrap().trim())
    );

    let mut cells: Vec<Vec<Cell>> =
        clients.iter().map(|_| SETTINGS.iter().map(|_| Cell::default()).collect()).collect();
    for _ in 0..rounds {
        for (c, &count) in clients.iter().enumerate() {
            for (s, server) in servers.iter().enumerate() {
                let requests = texts.len() * passes * count.div_ceil(16).max(3);
                let load = Load {
                    method: http::Method::POST,
                    bodies: texts.clone(),
                    content_type: Some("application/json".into()),
                    requests: Some(requests as u64),
                    ..Load::closed(
                        server.url("/embed").parse().unwrap(),
                        count,
                        Duration::from_secs(1),
                        MAX_CELL,
                    )
                };
                let before = tokio.block_on(Counters::read(server));
                let report = tokio.block_on(loadgen::run(&load)).unwrap();
                let after = tokio.block_on(Counters::read(server));
                assert_eq!(report.successes(), requests as u64, "{}: {:?}", SETTINGS[s], report.statuses);
                cells[c][s].reports.push(report);
                // The counters include the warm-up's requests: fine for means and shares.
                cells[c][s].counters.add(after.since(before));
            }
        }
    }

    println!("\nreq/s (p50/p99 ms); batch: mean items per run, then padding's share of the batch inputs");
    println!(
        "{:>7} {:>22} {:>22} {:>22} {:>7} {:>9} {:>12} {:>12} {:>12}",
        "clients",
        "batching off",
        "on",
        "auto",
        "on/off",
        "auto/best",
        "p50 auto/off",
        "batch on",
        "batch auto"
    );
    for (&count, row) in clients.iter().zip(&cells) {
        let best = row[0].rate().max(row[1].rate());
        println!(
            "{count:>7} {:>22} {:>22} {:>22} {:>6.2}x {:>8.1}% {:>11.1}% {:>12} {:>12}",
            row[0].show(),
            row[1].show(),
            row[2].show(),
            row[1].rate() / row[0].rate(),
            100.0 * row[2].rate() / best,
            100.0 * row[2].p50() / row[0].p50(),
            row[1].batching(),
            row[2].batching(),
        );
    }
}
