//! Generation under load: SmolLM2-135M-Instruct's sequences stepped by the host's scheduler
//! (`inference::generation`) with continuous batching, static batching and one sequence at a
//! time, and the model's reference loop on onnxruntime in Python as the peer, side by side
//! in one run, at 1, 8 and 32 concurrent streams.
//!
//! Run: `cargo bench --bench generation`. Each stream runs `EDGE_INFER_BENCH_SEQUENCES`
//! sequences (default 2) back to back, closed loop: the 20 reference prompts in turn, each
//! generating a fixed 8 to 48 tokens (end-of-turn ignored), so every setting does exactly
//! the same work and sequences of different lengths meet. Printed per stream count and
//! setting: tokens/s, time to first token (TTFT) p50/p99 and inter-token latency (ITL)
//! p50/p99, then the ratios the goals name. The peer runs one Python thread per stream over
//! one shared session, with onnxruntime's default intra-op threads (one per core) and with
//! one, and the better of the two counts.
//!
//! This measures the scheduler in process: the HTTP path (an OpenAI-compatible guest) is not
//! built yet. `EDGE_INFER_BENCH_STREAMS` (default `1,8,32`) sets the stream counts.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{compat_python, onnxruntime_library, repo_file};
use edge_infer::inference::backend::use_onnxruntime_library;
use edge_infer::inference::generation::{GenerationBatching, GenerationConfig, Generator};
use serde_json::{Value, json};

const MODES: [(&str, GenerationBatching); 3] = [
    ("continuous", GenerationBatching::Continuous),
    ("static", GenerationBatching::Static),
    ("one-at-a-time", GenerationBatching::OneAtATime),
];

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Clone)]
struct Work {
    prompt: Vec<i64>,
    new_tokens: usize,
}

fn work() -> Vec<Work> {
    let text = std::fs::read_to_string(repo_file("models/smollm2/reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, case)| Work {
            prompt: case["prompt_ids"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect(),
            new_tokens: 8 + (i * 13) % 41,
        })
        .collect()
}

#[derive(Default, Clone)]
struct Measure {
    tokens: usize,
    seconds: f64,
    ttft: Vec<f64>,
    itl: Vec<f64>,
    /// TTFT p50, p99, ITL p50, p99 as a peer reported them (it keeps no samples).
    reported: Option<[f64; 4]>,
}

fn percentile(values: &[f64], share: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(((share * sorted.len() as f64) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

impl Measure {
    fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds
    }

    /// TTFT p50, p99, ITL p50, p99, in ms.
    fn latencies(&self) -> [f64; 4] {
        self.reported.unwrap_or_else(|| {
            [
                percentile(&self.ttft, 0.5),
                percentile(&self.ttft, 0.99),
                percentile(&self.itl, 0.5),
                percentile(&self.itl, 0.99),
            ]
        })
    }

    fn row(&self, name: &str) -> String {
        let [ttft50, ttft99, itl50, itl99] = self.latencies();
        format!(
            "  {name:<24} {:>8.1} tok/s   TTFT p50 {ttft50:>7.0} ms  p99 {ttft99:>7.0} ms   ITL p50 {itl50:>6.1} ms  p99 {itl99:>6.1} ms",
            self.tokens_per_s()
        )
    }
}

async fn run(generator: Arc<Generator>, streams: usize, per_stream: usize, work: &[Work]) -> Measure {
    let start = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|stream| {
            let generator = generator.clone();
            let cases: Vec<Work> =
                (0..per_stream).map(|k| work[(stream * per_stream + k) % work.len()].clone()).collect();
            tokio::spawn(async move {
                let mut measure = Measure::default();
                for case in cases {
                    let mut sequence = generator.sequence();
                    let begun = Instant::now();
                    let mut next = sequence.append(case.prompt).await.unwrap();
                    let mut last = Instant::now();
                    measure.ttft.push((last - begun).as_secs_f64() * 1000.0);
                    for _ in 1..case.new_tokens {
                        next = sequence.append(vec![next]).await.unwrap();
                        let now = Instant::now();
                        measure.itl.push((now - last).as_secs_f64() * 1000.0);
                        last = now;
                    }
                    measure.tokens += case.new_tokens;
                }
                measure
            })
        })
        .collect();
    let mut total = Measure::default();
    for task in tasks {
        let measure = task.await.unwrap();
        total.tokens += measure.tokens;
        total.ttft.extend(measure.ttft);
        total.itl.extend(measure.itl);
    }
    total.seconds = start.elapsed().as_secs_f64();
    total
}

fn peer(streams: usize, per_stream: usize, threads: usize, work: &[Work]) -> Measure {
    let input: Vec<Value> =
        work.iter().map(|w| json!({"prompt": w.prompt, "new_tokens": w.new_tokens})).collect();
    let mut child = std::process::Command::new(compat_python())
        .arg(repo_file("benches/python/generate_peer.py"))
        .args([streams.to_string(), per_stream.to_string(), threads.to_string()])
        .arg(repo_file("models/smollm2/model.onnx"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(serde_json::to_string(&input).unwrap().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "the Python peer failed");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let number = |key: &str| report[key].as_f64().unwrap();
    Measure {
        tokens: number("tokens") as usize,
        seconds: number("seconds"),
        reported: Some([number("ttft_p50"), number("ttft_p99"), number("itl_p50"), number("itl_p99")]),
        ..Measure::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let fetched = std::process::Command::new(compat_python())
        .arg(repo_file("models/smollm2/fetch.py"))
        .status()
        .unwrap();
    assert!(fetched.success(), "models/smollm2/fetch.py failed");
    use_onnxruntime_library(&onnxruntime_library());
    let model = std::fs::read(repo_file("models/smollm2/model.onnx")).unwrap();
    let work = work();
    let per_stream: usize = setting("EDGE_INFER_BENCH_SEQUENCES", 2);
    let streams: Vec<usize> = setting("EDGE_INFER_BENCH_STREAMS", "1,8,32".to_string())
        .split(',')
        .map(|n| n.trim().parse().expect("EDGE_INFER_BENCH_STREAMS: numbers, comma-separated"))
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "generation: SmolLM2-135M-Instruct (float32) on ONNX Runtime, {cores} cores, {per_stream} sequences per stream"
    );
    for &count in &streams {
        println!("{count} streams:");
        let mut ours = Vec::new();
        for (name, batching) in MODES {
            let config = GenerationConfig { batching, ..GenerationConfig::default() };
            let generator = Arc::new(Generator::start("smollm2", &model, config, None).unwrap());
            let measure = run(generator, count, per_stream, &work).await;
            println!("{}", measure.row(name));
            ours.push(measure);
        }
        let peers: Vec<(usize, Measure)> =
            [0, 1].iter().map(|&t| (t, peer(count, per_stream, t, &work))).collect();
        for (threads, measure) in &peers {
            let label = if *threads == 0 {
                "peer (intra-op: cores)".to_string()
            } else {
                format!("peer (intra-op: {threads})")
            };
            println!("{}", measure.row(&label));
        }
        let best_peer = peers.iter().map(|(_, m)| m.tokens_per_s()).fold(0.0, f64::max);
        let (continuous, fixed, single) = (&ours[0], &ours[1], &ours[2]);
        println!(
            "  continuous / one-at-a-time tokens/s: {:.2}x   continuous / best peer: {:.2}x   p99 TTFT static / continuous: {:.2}x   TTFT p50 continuous / peer's prefill: {:.2}x",
            continuous.tokens_per_s() / single.tokens_per_s(),
            continuous.tokens_per_s() / best_peer,
            fixed.latencies()[1] / continuous.latencies()[1],
            continuous.latencies()[0] / peers.iter().map(|(_, m)| m.latencies()[0]).fold(f64::MAX, f64::min),
        );
    }
}
