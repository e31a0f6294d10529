//! Pipeline parallelism, side by side in one run: `/ocr` (PP-OCRv4 detection, direction and
//! recognition on ONNX Runtime, batching off) over the generated test
//! images, taken in turn,
//!
//! - back to back: one client, so one request at a time goes through the three models in
//!   turn and nothing overlaps (what one thread running the three models would do);
//! - pipelined: several clients, so while one request is in recognition the next can be in
//!   detection; with one executor per stage, and balanced (the slowest stage gets two).
//!
//! A layout's limit is the lower of two. The slowest stage's throughput: from the
//! back-to-back run, each stage's compute time per request (from the server's metrics), and
//! the stage's executors over it. And an estimate of the machine's: back to back, a request
//! occupies at most one core at a time, so the cores serve about cores × the back-to-back
//! rate (stages share the cores, so the slowest stage reaches its own limit only if the
//! others leave it its cores). It is an estimate, not a bound: back to back, a core also
//! idles while the client and the HTTP exchange run. Each pipelined run is printed against
//! its limit and against back to back.
//!
//! Run: `cargo bench --bench ocr` (the models are fetched from PyPI the first time);
//! EDGE_INFER_BENCH_SECONDS sets the seconds per measurement (default 15).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Server, metric, ocr};
use edge_infer_bench::loadgen::{self, Load};

/// Clients of the pipelined runs.
const CLIENTS: usize = 4;
const STAGES: [&str; 3] = ["ocr-det", "ocr-cls", "ocr-rec"];
/// The layouts measured: executors per stage, in `STAGES` order.
const LAYOUTS: [(&str, [usize; 3]); 2] =
    [("one executor per stage", [1, 1, 1]), ("balanced: recognition, the slowest, gets 2", [1, 1, 2])];

fn seconds() -> Duration {
    Duration::from_secs_f64(
        std::env::var("EDGE_INFER_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15.0),
    )
}

/// One run: requests per second, p50 in ms, and each stage's compute time per request in s.
struct Run {
    per_second: f64,
    p50_ms: f64,
    stage_seconds: [f64; 3],
}

/// `clients` clients sending the test images in turn for `duration`, with no warm-up: the
/// server's metrics cover exactly the requests the report counts.
fn load(server: &Server, clients: usize, duration: Duration) -> Load {
    let bodies: Vec<Bytes> = ocr::images().into_iter().map(|(_, image, _)| Bytes::from(image)).collect();
    let url = server.url("/ocr").parse().unwrap();
    Load { method: http::Method::POST, bodies, ..Load::closed(url, clients, Duration::ZERO, duration) }
}

/// Requests per second and stage times come from the server's metrics over the whole run
/// (requests still in flight when the clients stop included), p50 from the clients.
fn run(tokio: &tokio::runtime::Runtime, server: &Server, clients: usize) -> Run {
    let load = load(server, clients, seconds());
    let scrape = || tokio.block_on(common::scrape(server));
    let before = scrape();
    let started = Instant::now();
    let report = tokio.block_on(loadgen::run(&load)).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let after = scrape();
    assert_eq!(report.successes(), report.latencies.len(), "{:?}", report.statuses);
    let delta = |series: &str| metric(&after, series) - metric(&before, series);
    let requests = delta("edge_infer_requests_total{outcome=\"success\",route=\"/ocr\"}");
    let stage_seconds = STAGES.map(|model| {
        delta(&format!("edge_infer_model_compute_duration_seconds_sum{{model=\"{model}\"}}")) / requests
    });
    Run { per_second: requests / elapsed, p50_ms: report.latency_ms(0.5), stage_seconds }
}

/// A server with `executors` per stage, warmed up (ONNX Runtime's first run at each input
/// shape is slower).
fn start(tokio: &tokio::runtime::Runtime, executors: [usize; 3]) -> Server {
    let server = Server::start(&ocr::config(executors, "off"));
    tokio.block_on(loadgen::run(&load(&server, CLIENTS, Duration::from_secs(3)))).unwrap();
    server
}

fn row(label: &str, run: &Run) {
    let [det, cls, rec] = run.stage_seconds.map(|s| s * 1e3);
    println!("| {label} | {:.2} | {:.0} | {det:.1} | {cls:.1} | {rec:.1} |", run.per_second, run.p50_ms);
}

fn main() {
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (first_layout, first_executors) = LAYOUTS[0];
    let server = start(&tokio, first_executors);
    let back_to_back = run(&tokio, &server, 1);
    let mut pipelined = vec![(first_layout, first_executors, run(&tokio, &server, CLIENTS))];
    drop(server);
    for &(layout, executors) in &LAYOUTS[1..] {
        let server = start(&tokio, executors);
        pipelined.push((layout, executors, run(&tokio, &server, CLIENTS)));
    }
    println!(
        "/ocr over the {} generated images in turn, ONNX Runtime (one thread per executor), batching off, {cores} cores",
        ocr::images().len()
    );
    println!("| run | req/s | p50 ms | det ms/req | cls ms/req | rec ms/req |");
    println!("| --- | --- | --- | --- | --- | --- |");
    row("back to back (1 client)", &back_to_back);
    for (layout, executors, run) in &pipelined {
        row(&format!("pipelined, {CLIENTS} clients, {layout} {executors:?}"), run);
    }
    // Back to back, a request takes at most one core at a time: the cores serve about this.
    let cores_bound = cores as f64 * back_to_back.per_second;
    for (layout, executors, run) in &pipelined {
        // The slowest stage alone: its executors, each taking its uncontended time per request.
        let slowest = executors
            .iter()
            .zip(back_to_back.stage_seconds)
            .map(|(&executors, seconds)| executors as f64 / seconds)
            .fold(f64::INFINITY, f64::min);
        let limit = slowest.min(cores_bound);
        println!(
            "{layout}: {:.2} req/s; limit {limit:.2} req/s (the slowest stage {slowest:.2}, the cores {cores_bound:.2}): \
             {:.2}x (goal >= 0.85); vs back to back: {:.2}x (goal >= 1.5)",
            run.per_second,
            run.per_second / limit,
            run.per_second / back_to_back.per_second
        );
    }
}
