//! Backends side by side: tract, ONNX Runtime on the CPU, and ONNX Runtime on a CUDA GPU
//! where one is usable. For each bundled or fixture model and batch sizes 1, 8 and 64: items
//! per second of the backend alone (one session, one thread of the caller), and the largest
//! difference of its outputs from tract's on the same inputs.
//!
//! Run: `cargo bench --bench backends` with ORT_DYLIB_PATH pointing at libonnxruntime.so (the
//! `onnxruntime` wheel has one; `onnxruntime-gpu` for the GPU); `benches/gpu.sh` does the
//! set-up on a GPU machine. EDGE_INFER_BENCH_SECONDS sets the seconds per cell (default 2).

use std::path::Path;
use std::time::{Duration, Instant};

use edge_infer::inference::backend::{Backend, BackendKind};
use edge_infer::inference::choice::load_file;
use edge_infer::inference::tensor::{Dim, ElementType, Tensor};

/// The models measured (MiniLM needs `models/minilm/fetch.py` first).
const MODELS: [(&str, &str); 6] = [
    ("digits", "models/digits/digits.onnx"),
    ("minilm", "models/minilm/model.onnx"),
    ("minilm-float", "models/minilm/model-float.onnx"),
    ("vad", "models/vad/silero_vad_16k.onnx"),
    ("slow", "tests/models/slow.onnx"),
    ("conv", "benches/models/conv.onnx"),
];
const BATCHES: [usize; 3] = [1, 8, 64];

/// Tokens per text for models with a sequence axis (MiniLM).
const SEQUENCE: usize = 128;

/// Deterministic inputs for `batch` items: a slow ramp for float inputs; for integer ones
/// (MiniLM's), token id 1000, a mask of ones and token types of zero; other symbolic axes (a
/// sequence) get `SEQUENCE`.
fn inputs(backend: &dyn Backend, batch: usize) -> Option<Vec<Tensor>> {
    backend
        .signature()
        .inputs
        .iter()
        .map(|spec| {
            if spec.batch_axis.is_none() && batch != 1 {
                return None;
            }
            let shape: Vec<usize> = spec
                .shape
                .iter()
                .enumerate()
                .map(|(axis, dim)| match dim {
                    _ if Some(axis) == spec.batch_axis => batch,
                    Dim::Fixed(size) => *size,
                    Dim::Any => SEQUENCE,
                })
                .collect();
            let count: usize = shape.iter().product();
            let data: Vec<u8> = match spec.element_type {
                ElementType::F32 => (0..count).flat_map(|i| ((i % 97) as f32 / 97.0).to_le_bytes()).collect(),
                ElementType::I64 => {
                    // Token ids, an attention mask of ones, token types of zero.
                    let value: i64 = match spec.name.as_str() {
                        name if name.contains("mask") => 1,
                        name if name.contains("type") => 0,
                        _ => 1000,
                    };
                    (0..count).flat_map(|_| value.to_le_bytes()).collect()
                }
                _ => return None,
            };
            Some(Tensor::new(spec.element_type, shape, data).unwrap())
        })
        .collect()
}

fn items_per_second(backend: &dyn Backend, inputs: &[Tensor], batch: usize, seconds: f64) -> f64 {
    let mut session = backend.new_session().unwrap();
    session.run(inputs.to_vec()).unwrap();
    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed() < Duration::from_secs_f64(seconds) {
        session.run(inputs.to_vec()).unwrap();
        runs += 1;
    }
    (runs * batch) as f64 / started.elapsed().as_secs_f64()
}

fn largest_difference(a: &[Tensor], b: &[Tensor]) -> f32 {
    let floats = |t: &Tensor| {
        t.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect::<Vec<_>>()
    };
    a.iter()
        .zip(b)
        .flat_map(|(a, b)| floats(a).into_iter().zip(floats(b)).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

fn main() {
    let seconds = std::env::var("EDGE_INFER_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fetched = std::process::Command::new("python3").arg(root.join("models/minilm/fetch.py")).status();
    assert!(fetched.is_ok_and(|s| s.success()), "models/minilm/fetch.py failed");
    println!(
        "edge-infer backends: items/s of one session (max |difference| from tract), {seconds} s per cell"
    );
    println!("{:<8} {:<10} {:>22} {:>22} {:>22}", "model", "backend", "batch 1", "batch 8", "batch 64");
    for (name, file) in MODELS {
        let path = root.join(file);
        let tract = load_file(name, BackendKind::Tract, &path).unwrap();
        let mut backends: Vec<Box<dyn Backend>> = vec![];
        if let Ok(ort) = load_file(name, BackendKind::Ort, &path)
            && ort.name() == "ort"
        {
            backends.push(ort);
        }
        match load_file(name, BackendKind::Gpu, &path) {
            Ok(gpu) => backends.push(gpu),
            Err(reason) => eprintln!("{name}: no GPU run ({reason:#})"),
        }
        for backend in std::iter::once(&tract).chain(&backends) {
            let cells: Vec<String> = BATCHES
                .iter()
                .map(|&batch| match inputs(backend.as_ref(), batch) {
                    None => "-".to_string(),
                    Some(inputs) => {
                        let rate = items_per_second(backend.as_ref(), &inputs, batch, seconds);
                        let theirs = backend.new_session().unwrap().run(inputs.clone()).unwrap();
                        let ours = tract.new_session().unwrap().run(inputs).unwrap();
                        format!("{rate:>10.0} ({:.1e})", largest_difference(&theirs, &ours))
                    }
                })
                .collect();
            println!("{:<8} {:<10} {:>22} {:>22} {:>22}", name, backend.name(), cells[0], cells[1], cells[2]);
        }
    }
}
