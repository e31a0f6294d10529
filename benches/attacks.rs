//! The attack suite: each attack of issue 27 against a real node while a legitimate client
//! runs, measured in one run.
//!
//! Run: `cargo bench --bench attacks` (EDGE_INFER_BENCH_SECONDS: seconds of legitimate load
//! per attack, default 6; the slot attacks run until their slots come back).
//!
//! For each attack it prints: the node's peak resident memory over what it held before
//! (MiB), `/healthz` asked every 20 ms meanwhile (p99, max, and answers that failed or took
//! over 5 s), the legitimate client's goodput during the attack against the same client
//! alone just before, its errors, and for attacks that pin slots, how long after the attack
//! began a slot served `/healthz` again. The node runs with default settings but where a
//! row says otherwise.
//!
//! The tenant flood is measured apart: tenant `calm` (4 closed-loop clients) alone, tenant
//! `flood` (64 clients, all asking `x-edge-priority: high`, which it is allowed) alone, then
//! both at once, on one model executor. `calm`'s fair share is the smaller of what it takes
//! alone and half of what the two get together; the suite prints its goodput against it.
//! With EDGE_INFER_BASELINE_BIN naming an earlier build, the same flood sent without
//! credentials (everyone anonymous) is run on it and on this build, side by side.

#[path = "../tests/common/mod.rs"]
mod common;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use common::raw::{ZeroWindowClient, connect, grpc_call_from, grpc_frame};
use common::{Server, guest, repo_file};
use edge_infer_bench::loadgen::{self, Load, Report};
use http::{HeaderName, HeaderValue};
use tokio::io::AsyncWriteExt;

const DIGITS_BODY: &str = r#"{"pixels":[0,0,3,11,7,1,0,0,0,0,10,15,14,14,0,0,0,2,16,10,1,12,4,0,0,2,16,3,0,4,8,0,0,5,12,0,0,6,8,0,0,1,12,0,0,11,9,0,0,0,15,9,14,15,1,0,0,0,4,15,15,4,0,0]}"#;
/// The legitimate client: closed-loop clients on `/digits`.
const LEGIT_CLIENTS: usize = 4;
/// Rows of each request in the tenant flood (a few ms of the slow model each).
const FLOOD_ROWS: usize = 16;
/// Where the attacks come from: another loopback address than the legitimate client's
/// (127.0.0.1), as another machine would, so the per-address cap can tell them apart.
const ATTACKER: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
/// The longest any one phase may take before the suite gives up on it.
const PHASE_LIMIT: Duration = Duration::from_secs(120);

/// `phase`, given up (with a panic naming `what`) after [`PHASE_LIMIT`].
async fn bounded<T>(what: &str, phase: impl Future<Output = T>) -> T {
    tokio::time::timeout(PHASE_LIMIT, phase)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {PHASE_LIMIT:?}"))
}

fn seconds() -> Duration {
    Duration::from_secs_f64(
        std::env::var("EDGE_INFER_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6.0),
    )
}

fn config(server: &str, extra: &str) -> String {
    format!(
        r#"
[server]
{server}

[models.digits]
file = "{digits}"

[models.slow]
file = "{slow}"
executors = 1
batching = "off"

[[routes]]
path = "/digits"
component = "{digits_guest}"
models = ["digits"]

[[routes]]
path = "/test"
component = "{testing}"
models = ["digits"]
memory_mib = 128
max_concurrency = 8
timeout_ms = 60000
{extra}
"#,
        digits = repo_file("models/digits/digits.onnx").display(),
        slow = repo_file("tests/models/slow.onnx").display(),
        digits_guest = guest("digits").display(),
        testing = guest("testing").display(),
    )
}

/// What one attack did to the node and to the legitimate client.
struct Row {
    attack: String,
    grown_mib: f64,
    health: Health,
    legit_alone: f64,
    legit_during: Report,
    slots_back: Option<Duration>,
    outcome: String,
}

/// `/healthz` asked every 20 ms.
#[derive(Default)]
struct Health {
    latencies: Vec<Duration>,
    failed: usize,
}

impl Health {
    fn quantile_ms(&self, q: f64) -> f64 {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    }
}

/// Asks `/healthz` every 20 ms until `stop`; notes when the first answer after `since` came.
async fn watch_health(url: String, stop: Arc<AtomicBool>) -> (Health, Option<Instant>) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut health = Health::default();
    let mut first_answer = None;
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        match client.get(&url).send().await {
            Ok(response) if response.status() == 200 => {
                health.latencies.push(asked.elapsed());
                first_answer.get_or_insert_with(Instant::now);
            }
            _ => health.failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(20).saturating_sub(asked.elapsed())).await;
    }
    (health, first_answer)
}

fn legit_load(server: &Server, duration: Duration) -> Load {
    Load {
        method: http::Method::POST,
        bodies: vec![Bytes::from_static(DIGITS_BODY.as_bytes())],
        content_type: Some("application/json".into()),
        ..Load::closed(server.url("/digits").parse().unwrap(), LEGIT_CLIENTS, Duration::ZERO, duration)
    }
}

/// Runs `attack` (which returns what it saw) while the legitimate client and the health
/// watch run for the legit window; `pins` says the attack holds slots until the node frees
/// them, so the watch runs on until health is answered after the attack began.
async fn measure<F: Future<Output = String> + Send + 'static>(
    name: &str,
    server: &Server,
    pins: bool,
    attack: impl FnOnce(Arc<AtomicBool>) -> F,
) -> Row {
    eprintln!("attack: {name}");
    let alone = bounded("the legitimate client alone", loadgen::run(&legit_load(server, seconds())))
        .await
        .unwrap()
        .throughput();
    let began = Instant::now();
    let attacked = server.memory_growth_mib(async {
        let stop = Arc::new(AtomicBool::new(false));
        let attacking = tokio::spawn(attack(stop.clone()));
        // The attack has started sending before the watch and the client begin.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let watch_stop = Arc::new(AtomicBool::new(false));
        let watch = tokio::spawn(watch_health(server.url("/healthz"), watch_stop.clone()));
        let legit = legit_load(server, seconds());
        let during = bounded("the legitimate client", loadgen::run(&legit)).await.unwrap();
        stop.store(true, Ordering::Relaxed);
        let outcome = bounded("the attack", attacking).await.unwrap();
        watch_stop.store(true, Ordering::Relaxed);
        let watched = bounded("the health watch", watch).await.unwrap();
        (during, outcome, watched)
    });
    let ((during, outcome, (health, first_answer)), grown_mib) = attacked.await;
    Row {
        attack: name.to_string(),
        grown_mib,
        health,
        legit_alone: alone,
        legit_during: during,
        slots_back: if pins { first_answer.map(|at| at - began) } else { None },
        outcome,
    }
}

/// Repeats `once` until `stop`, `parallel` at a time; counts the outcomes it returns.
async fn repeat<F, Fut>(stop: Arc<AtomicBool>, parallel: usize, once: F) -> String
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send,
{
    let once = Arc::new(once);
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let (stop, once) = (stop.clone(), once.clone());
            tokio::spawn(async move {
                let mut seen = std::collections::BTreeMap::<String, usize>::new();
                while !stop.load(Ordering::Relaxed) {
                    *seen.entry(once().await).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    let mut all = std::collections::BTreeMap::<String, usize>::new();
    for worker in workers {
        for (outcome, count) in worker.await.unwrap() {
            *all.entry(outcome).or_default() += count;
        }
    }
    all.iter().map(|(outcome, count)| format!("{count}× {outcome}")).collect::<Vec<_>>().join(", ")
}

/// A `ModelInferRequest` of about `bytes` bytes of empty `inputs` entries, then the name.
fn empty_inputs(bytes: usize) -> Bytes {
    let name = b"\x0a\x0bno-such-one";
    let mut message = Vec::with_capacity(bytes + 16);
    while message.len() + 2 + name.len() <= bytes {
        message.extend_from_slice(&[0x2a, 0x00]);
    }
    message.extend_from_slice(name);
    Bytes::from(grpc_frame(&message))
}

fn zeros_body(bytes: usize) -> Bytes {
    let mut body = br#"{"inputs":[{"name":"pixels","shape":[1,64],"datatype":"FP32","data":["#.to_vec();
    while body.len() < bytes {
        body.extend_from_slice(b"0,");
    }
    body.extend_from_slice(b"0]}]}");
    Bytes::from(body)
}

async fn grpc_flood(server: &Server, size: usize) -> Row {
    let (grpc, message) = (server.grpc.clone(), empty_inputs(size));
    let name = format!("gRPC ModelInfer, {} MB of empty `inputs`, 4 at a time", size / 1_000_000);
    measure(&name, server, false, move |stop| {
        repeat(stop, 4, move || {
            let (grpc, message) = (grpc.clone(), message.clone());
            async move {
                let (status, _) = grpc_call_from(ATTACKER, &grpc, "ModelInfer", message, &[]).await;
                format!("status {status}")
            }
        })
    })
    .await
}

async fn json_flood(server: &Server) -> Row {
    let (url, body) = (server.url("/v2/models/digits/infer"), zeros_body(60 << 20));
    measure("REST infer, 60 MiB of JSON zeros, 4 at a time", server, false, move |stop| {
        repeat(stop, 4, move || {
            let (url, body) = (url.clone(), body.clone());
            async move {
                let client = reqwest::Client::builder().local_address(ATTACKER).build().unwrap();
                match client.post(url).body(body).send().await {
                    Ok(response) => format!("{}", response.status().as_u16()),
                    Err(_) => "cut".into(),
                }
            }
        })
    })
    .await
}

async fn zero_window(server: &Server, connections: usize, name: &str) -> Row {
    let address = server.base.trim_start_matches("http://").to_string();
    measure(name, server, true, move |stop| async move {
        let mut pinned = Vec::new();
        let mut refused = 0;
        for _ in 0..connections {
            match tokio::time::timeout(
                Duration::from_secs(2),
                ZeroWindowClient::try_open(ATTACKER, &address, "/healthz"),
            )
            .await
            {
                Ok(Some(client)) => pinned.push(client),
                Ok(None) | Err(_) => refused += 1,
            }
        }
        let held = pinned.len();
        let mut cut = 0;
        for client in pinned {
            if tokio::time::timeout(Duration::from_secs(60), client.closed_by_server()).await.is_ok() {
                cut += 1;
            }
        }
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        format!("{held} held open ({refused} not served), {cut} cut by the node")
    })
    .await
}

async fn slowloris(server: &Server) -> Row {
    let address = server.base.trim_start_matches("http://").to_string();
    measure("slowloris: 1,000 connections sending half a head", server, false, move |stop| async move {
        let mut stalled = Vec::new();
        for _ in 0..1000 {
            if let Ok(Ok(mut stream)) =
                tokio::time::timeout(Duration::from_secs(2), connect(&address, ATTACKER)).await
            {
                let _ = stream.write_all(b"GET /digits HTTP/1.1\r\nHost: edge\r\nX-Half: ").await;
                stalled.push(stream);
            }
        }
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        format!("{} opened", stalled.len())
    })
    .await
}

async fn slow_readers(server: &Server) -> Row {
    let address = server.base.trim_start_matches("http://").to_string();
    let metrics = server.url("/metrics");
    measure(
        "slow readers: /test's 8 slots, 32 MB answers never read",
        server,
        false,
        move |stop| async move {
            let mut readers = Vec::new();
            for _ in 0..8 {
                let mut stream = connect(&address, ATTACKER).await.unwrap();
                stream.write_all(b"GET /test/bytes/32000000 HTTP/1.1\r\nHost: edge\r\n\r\n").await.unwrap();
                readers.push(stream);
            }
            // Once every slot of /test is taken by them, a request there waits for one to be freed.
            let in_use = r#"edge_infer_route_instances_in_use{route="/test"}"#;
            while common::metric(&reqwest::get(&metrics).await.unwrap().text().await.unwrap(), in_use) < 8.0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let began = Instant::now();
            let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
            let status = client
                .get(format!("http://{address}/test/sleep/1"))
                .send()
                .await
                .map(|r| r.status().as_u16());
            let waited = began.elapsed();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(readers);
            format!(
                "with its 8 slots taken, a request to /test waited {:.1} s for one: {status:?}",
                waited.as_secs_f64()
            )
        },
    )
    .await
}

async fn idle_grpc(server: &Server) -> Row {
    let grpc = server.grpc.clone();
    measure("2,400 idle connections to the gRPC listener", server, false, move |stop| async move {
        let mut idle = Vec::new();
        for _ in 0..2400 {
            if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(2), connect(&grpc, ATTACKER)).await {
                idle.push(stream);
            }
        }
        // A legitimate call, from another address, meanwhile.
        let (status, _) = grpc_call_from(None, &grpc, "ServerLive", grpc_frame(&[]), &[]).await;
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        format!("{} connected (the node keeps 256 from one address); a ServerLive call meanwhile: status {status}", idle.len())
    })
    .await
}

fn print_rows(rows: &[Row]) {
    println!(
        "| attack | RSS growth MiB | /healthz p99 / max ms (failed) | legit goodput: alone → during | legit errors | a slot again after | what the attack got |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for row in rows {
        let during = &row.legit_during;
        let errors =
            during.errors + during.statuses.iter().filter(|(s, _)| **s >= 400).map(|(_, n)| n).sum::<u64>();
        println!(
            "| {} | {:.1} | {:.1} / {:.1} ({}) | {:.0} → {:.0} req/s ({:.2}×) | {} | {} | {} |",
            row.attack,
            row.grown_mib,
            row.health.quantile_ms(0.99),
            row.health.quantile_ms(1.0),
            row.health.failed,
            row.legit_alone,
            during.throughput(),
            during.throughput() / row.legit_alone,
            errors,
            row.slots_back.map_or("—".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            row.outcome,
        );
    }
}

/// The hex SHA-256 digest of `key`.
fn digest(key: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A closed loop of `clients` on the slow model over REST, with `headers`.
fn slow_load(server: &Server, clients: usize, headers: &[(&'static str, &'static str)]) -> Load {
    let data = vec!["0"; FLOOD_ROWS * 256].join(",");
    let body = format!(
        r#"{{"inputs":[{{"name":"x","shape":[{FLOOD_ROWS},256],"datatype":"FP32","data":[{data}]}}]}}"#
    );
    Load {
        method: http::Method::POST,
        bodies: vec![Bytes::from(body)],
        content_type: Some("application/json".into()),
        headers: headers
            .iter()
            .map(|(name, value)| (HeaderName::from_static(name), HeaderValue::from_static(value)))
            .collect(),
        ..Load::closed(
            server.url("/v2/models/slow/infer").parse().unwrap(),
            clients,
            Duration::from_millis(500),
            seconds(),
        )
    }
}

/// Goodput (2xx a second) of `report`.
fn goodput(report: &Report) -> f64 {
    report.successes() as f64 / report.elapsed.as_secs_f64()
}

/// The flood against `server`: calm alone, flood alone, both; returns (calm alone, flood
/// alone, calm during, flood during).
async fn flood(
    server: &Server,
    calm: &[(&'static str, &'static str)],
    flood: &[(&'static str, &'static str)],
) -> [f64; 4] {
    let calm_alone = goodput(&loadgen::run(&slow_load(server, 4, calm)).await.unwrap());
    let flood_alone = goodput(&loadgen::run(&slow_load(server, 64, flood)).await.unwrap());
    let (calm_load, flood_load) = (slow_load(server, 4, calm), slow_load(server, 64, flood));
    let flooding = tokio::spawn(async move { loadgen::run(&flood_load).await.unwrap() });
    let calm_during = goodput(&loadgen::run(&calm_load).await.unwrap());
    let flood_during = goodput(&flooding.await.unwrap());
    [calm_alone, flood_alone, calm_during, flood_during]
}

fn print_flood(label: &str, [calm_alone, flood_alone, calm_during, flood_during]: [f64; 4]) {
    let fair = calm_alone.min((calm_during + flood_during) / 2.0);
    println!(
        "| {label} | {calm_alone:.0} | {flood_alone:.0} | {calm_during:.0} | {flood_during:.0} | {fair:.0} | {:.2}× |",
        calm_during / fair
    );
}

fn main() {
    eprintln!("attacks come from {ATTACKER:?}; the legitimate client from 127.0.0.1");
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // The attacks open thousands of sockets from this one process.
    raise_open_files();
    let mut rows = Vec::new();
    tokio.block_on(async {
        let defaults = Server::start(&config("", ""));
        rows.push(grpc_flood(&defaults, 8_000_000).await);
        rows.push(grpc_flood(&defaults, 64 << 20).await);
        rows.push(json_flood(&defaults).await);
        rows.push(slowloris(&defaults).await);
        rows.push(idle_grpc(&defaults).await);
        rows.push(slow_readers(&defaults).await);
        rows.push(
            zero_window(&defaults, 1000, "zero-window HTTP/2 clients: 1,000 from one address (default caps)")
                .await,
        );
        drop(defaults);
        let hundred = Server::start(&config("max_connections = 100", ""));
        rows.push(
            zero_window(&hundred, 100, "zero-window HTTP/2 clients on every slot (`max_connections = 100`)")
                .await,
        );
    });
    print_rows(&rows);

    println!();
    println!(
        "Tenant flood: the slow model, one executor, batching off; {FLOOD_ROWS} rows a request; goodput in req/s."
    );
    println!(
        "| run | calm alone | flood alone | calm during | flood during | calm's fair share | calm / fair share |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    tokio.block_on(async {
        let tenants = format!(
            "\n[tenants.flood]\napi_key_sha256 = [\"{}\"]\nmax_priority = \"high\"\n\n[tenants.calm]\napi_key_sha256 = [\"{}\"]\n",
            digest("flood-key"),
            digest("calm-key")
        );
        let server = Server::start(&format!("{}{tenants}", config("", "")));
        let measured = flood(
            &server,
            &[("x-api-key", "calm-key")],
            &[("x-api-key", "flood-key"), ("x-edge-priority", "high")],
        )
        .await;
        print_flood("tenants `flood` (high priority, allowed) and `calm`, weight 1 each", measured);
        drop(server);
        let anonymous = [("x-edge-priority", "high")];
        let server = Server::start(&config("", ""));
        print_flood("no credentials: the flood asks `high`, calm does not (this build)", flood(&server, &[], &anonymous).await);
        drop(server);
        if let Some(baseline) = std::env::var_os("EDGE_INFER_BASELINE_BIN").map(PathBuf::from) {
            let server = Server::start_from(&baseline, &config("", ""));
            print_flood("no credentials, as above, on EDGE_INFER_BASELINE_BIN", flood(&server, &[], &anonymous).await);
        }
    });
}

/// Raises this process's open-file limit to its hard limit.
fn raise_open_files() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
