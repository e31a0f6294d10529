//! The same digits guest in Rust, Python and JavaScript, side by side in one run.
//!
//! Run: `cargo bench --bench languages` (EDGE_INFER_BENCH_SECONDS sets the measured seconds,
//! default 5). For each language: component size, the first request's latency after start,
//! the mean time to make an instance, and p50/p99 latency and throughput with 2 closed-loop
//! clients (this machine has 2 cores). One server serves the three routes.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{Server, digits_test_split, guest, interpreted_guests, metric, repo_file, scrape};
use edge_infer_bench::loadgen::{self, Load};

const ROUTES: [(&str, &str, &str); 3] = [
    ("Rust", "/digits", "digits.wasm"),
    ("Python", "/digits-py", "digits-py.wasm"),
    ("JavaScript", "/digits-js", "digits-js.wasm"),
];

fn main() {
    let folder = interpreted_guests();
    let config = format!(
        "[models.digits]\nfile = \"{}\"\n\n\
         [[routes]]\npath = \"/digits\"\ncomponent = \"{}\"\nmodels = [\"digits\"]\n\n\
         [[routes]]\npath = \"/digits-py\"\ncomponent = \"{}\"\nmodels = [\"digits\"]\nmemory_mib = 256\ngrant = [\"wasi:filesystem\", \"wasi:sockets\"]\n\n\
         [[routes]]\npath = \"/digits-js\"\ncomponent = \"{}\"\nmodels = [\"digits\"]\nmemory_mib = 256\ngrant = [\"wasi:filesystem\"]\n",
        repo_file("models/digits/digits.onnx").display(),
        guest("digits").display(),
        folder.join("digits-py.wasm").display(),
        folder.join("digits-js.wasm").display(),
    );
    let seconds = std::env::var("EDGE_INFER_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let server = Server::start(&config);
    let (images, _) = digits_test_split();
    let body = serde_json::json!({ "pixels": images[0] }).to_string();

    println!("edge-infer guests by language: one image per request, 2 clients, {seconds} s, 2 cores");
    println!(
        "{:<11} {:>10} {:>14} {:>13} {:>9} {:>9} {:>9}",
        "language", "size MB", "first req ms", "instance µs", "p50 ms", "p99 ms", "req/s"
    );
    for (language, route, file) in ROUTES {
        let size = std::fs::metadata(folder.join(file)).unwrap().len() as f64 / 1e6;
        let load = Load {
            method: http::Method::POST,
            bodies: vec![body.clone().into()],
            content_type: Some("application/json".into()),
            ..Load::closed(
                server.url(route).parse().unwrap(),
                2,
                Duration::from_secs(1),
                Duration::from_secs_f64(seconds),
            )
        };
        // The first request: one client, one request, nothing warmed up.
        let first = Load { concurrency: 1, warm_up: Duration::ZERO, requests: Some(1), ..load.clone() };
        let first_ms = tokio.block_on(loadgen::run(&first)).unwrap().latency_ms(1.0);
        let steady = load;
        let report = tokio.block_on(loadgen::run(&steady)).unwrap();
        assert_eq!(report.successes(), report.latencies.len(), "{language}: {:?}", report.statuses);
        let text = tokio.block_on(scrape(&server));
        let series = |name: &str| {
            metric(
                &text,
                &format!("edge_infer_instance_creation_duration_seconds_{name}{{route=\"{route}\"}}"),
            )
        };
        let instance_us = 1e6 * series("sum") / series("count");
        println!(
            "{:<11} {:>10.2} {:>14.2} {:>13.0} {:>9.3} {:>9.3} {:>9.0}",
            language,
            size,
            first_ms,
            instance_us,
            report.latency_ms(0.5),
            report.latency_ms(0.99),
            report.throughput()
        );
    }
}
