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

use edge_infer::backend::{Backend, BackendKind, load_file};
use edge_infer::tensor::{ElementType, Tensor};

/// A model, and whether its first input takes a batch (VAD's does not).
const MODELS: [(&str, &str); 4] = [
    ("digits", "models/digits/digits.onnx"),
    ("vad", "models/vad/silero_vad_16k.onnx"),
    ("slow", "tests/models/slow.onnx"),
    ("conv", "benches/models/conv.onnx"),
];
const BATCHES: [usize; 3] = [1, 8, 64];

/// Deterministic inputs for `batch` items: a slow ramp, so outputs are not all trivial.
fn inputs(backend: &dyn Backend, batch: usize) -> Option<Vec<Tensor>> {
    backend
        .signature()
        .inputs
        .iter()
        .map(|spec| {
            let shape = spec.shape_for_batch(batch)?;
            let count: usize = shape.iter().product();
            let data = (0..count).flat_map(|i| ((i % 97) as f32 / 97.0).to_le_bytes()).collect();
            (spec.element_type == ElementType::F32)
                .then(|| Tensor::new(ElementType::F32, shape, data).unwrap())
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
