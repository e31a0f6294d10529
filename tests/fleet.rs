//! Guests and models as OCI artifacts in a real registry (the CNCF distribution registry on
//! loopback): `edge-infer push`, nodes pulling by tag and by digest, the refusals (a digest
//! mismatch, an artifact that is not a component, a registry that wants credentials), and
//! `edge-infer deploy` rolling a new guest out to three nodes under load, and rolling every
//! node back when one fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;

use common::registry::Registry;
use common::{
    Admin, Load, Server, V1, V2, classify_version, client, digits_config, digits_version, edge_infer,
    expect_error, repo_file,
};

const V3: &[u8] = b"digits-guest-v3";
/// The admin token every node of a fleet shares.
const FLEET_TOKEN: &str = "fleet-token-0123456789abcdef";

/// Runs `edge-infer ARGS` with `env`, off the async runtime.
async fn run(args: Vec<String>, env: Vec<(&'static str, PathBuf)>) -> Output {
    tokio::task::spawn_blocking(move || edge_infer().args(args).envs(env).output().unwrap()).await.unwrap()
}

/// `edge-infer push FILE REFERENCE`; returns the pinned reference it printed.
async fn push(bytes: &[u8], reference: &str, folder: &Path) -> String {
    let file = folder.join(format!("push-{}", hex(bytes)));
    std::fs::write(&file, bytes).unwrap();
    let output =
        run(vec!["push".into(), file.display().to_string(), reference.into()], no_docker_config(folder))
            .await;
    assert!(output.status.success(), "push failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The environment that hides any Docker config of the machine's user.
fn no_docker_config(folder: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![("DOCKER_CONFIG", folder.join("no-docker-config"))]
}

fn hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A node's config: `/digits` on the bundled model and guest, the shared admin token, and
/// `server` settings.
fn node_config(folder: &Path, server: &str) -> String {
    let token = folder.join("admin-token");
    std::fs::write(&token, FLEET_TOKEN).unwrap();
    format!("[server]\nadmin_token_file = \"{}\"\n{server}\n{}", token.display(), digits_config())
}

/// PUTs `/digits` from `component` and the digits model from `model` (each `sha256:…` or
/// `oci://…`).
async fn put_digits(admin: &Admin, component: &str, model: &str) -> reqwest::Response {
    let settings = json!({
        "path": "/digits",
        "component": component,
        "models": ["digits"],
        "model_settings": { "digits": { "file": model } },
    });
    admin.request(reqwest::Method::PUT, "/admin/routes/digits").json(&settings).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_pull_by_tag_and_by_digest_and_refuse_what_does_not_check_out() {
    let folder = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let model_bytes = std::fs::read(repo_file("models/digits/digits.onnx")).unwrap();
    let model_tag = format!("{}:v1", registry.reference("models/digits"));
    let model = push(&model_bytes, &model_tag, folder.path()).await;
    let v1 = push(&digits_version(V1), &format!("{}:v1", registry.reference("guests/digits")), folder.path())
        .await;
    let v2_tag = format!("{}:v2", registry.reference("guests/digits"));
    let v2 = push(&digits_version(V2), &v2_tag, folder.path()).await;
    assert!(v2.starts_with(&format!("{}@sha256:", registry.reference("guests/digits"))), "{v2}");
    assert_ne!(v1, v2);

    let state = folder.path().join("state");
    let node = Server::try_start_on_state(&node_config(folder.path(), ""), &state, "info", &[]).unwrap();
    let admin = Admin::with_token(&node, FLEET_TOKEN.into());
    let http = client();

    // By tag: the node pulls, pins the digest, and serves it.
    let response = put_digits(&admin, &v2_tag, &model_tag).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(classify_version(&http, &node.base).await, (200, "digits-guest-v2".into()));
    let route = admin.route("digits").await;
    assert_eq!(route["source"], v2.as_str(), "the tag is pinned to the digest pulled");
    assert_eq!(route["component"], format!("sha256:{}", hex(&digits_version(V2))));
    // By digest.
    let response = put_digits(&admin, &v1, &model).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(classify_version(&http, &node.base).await, (200, "digits-guest-v1".into()));
    assert_eq!(admin.route("digits").await["source"], v1.as_str());

    // Refusals, each naming the reason; the node goes on serving v1.
    let refused = |component: String| {
        let admin = &admin;
        let model = model.clone();
        async move { put_digits(admin, &component, &model).await }
    };
    let not_a_component = expect_error(refused(model_tag.clone()).await, 422).await;
    assert!(not_a_component.contains("is not a component"), "{not_a_component}");
    let v3_bytes = digits_version(V3);
    let v3 = push(&v3_bytes, &format!("{}:v3", registry.reference("guests/digits")), folder.path()).await;
    // The registry's copy of v3's layer is damaged: same size, one byte changed.
    let blob = registry.blob_path(&format!("sha256:{}", hex(&v3_bytes)));
    let mut damaged = std::fs::read(&blob).unwrap();
    assert_eq!(damaged, v3_bytes);
    damaged[1000] ^= 0xff;
    std::fs::write(&blob, &damaged).unwrap();
    let mismatch = expect_error(refused(v3.clone()).await, 502).await;
    assert!(mismatch.contains("digest mismatch"), "{mismatch}");
    let missing =
        expect_error(refused(format!("{}:v9", registry.reference("guests/digits"))).await, 422).await;
    assert!(missing.contains("is not in the registry"), "{missing}");
    let malformed = expect_error(refused("oci://no-registry-named".into()).await, 400).await;
    assert!(malformed.contains("bad OCI reference"), "{malformed}");
    let unreachable = expect_error(refused("oci://127.0.0.1:1/guests/digits:v1".into()).await, 502).await;
    assert!(unreachable.contains("registry for oci://127.0.0.1:1/guests/digits:v1"), "{unreachable}");
    assert_eq!(classify_version(&http, &node.base).await, (200, "digits-guest-v1".into()));

    // A core module is not pushed as a component.
    let core = folder.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let output = run(
        vec![
            "push".into(),
            core.display().to_string(),
            format!("{}:core", registry.reference("guests/core")),
        ],
        no_docker_config(folder.path()),
    )
    .await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("core WebAssembly module"));

    // A config naming artifacts by digest: after the first start pulled them, a restart needs
    // no registry at all.
    drop(node);
    let config = format!(
        "[server]\nadmin_token_file = \"{}\"\n[models.digits]\nfile = \"{model}\"\n[[routes]]\npath = \"/digits\"\ncomponent = \"{v2}\"\nmodels = [\"digits\"]\n",
        folder.path().join("admin-token").display()
    );
    let fresh_state = folder.path().join("fresh-state");
    let node = Server::try_start_on_state(&config, &fresh_state, "info", &[]).unwrap();
    assert_eq!(classify_version(&http, &node.base).await, (200, "digits-guest-v2".into()));
    let pulled = format!("pulled reference={v2}");
    assert!(node.logs().contains(&pulled), "{}", node.logs());
    drop(node);
    drop(registry);
    let node = Server::try_start_on_state(&config, &fresh_state, "info", &[]).unwrap();
    assert_eq!(classify_version(&http, &node.base).await, (200, "digits-guest-v2".into()));
    assert!(!node.logs().contains("pulled reference="), "nothing is pulled again: {}", node.logs());
    assert!(!node.logs().contains("not applied"), "{}", node.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_behind_a_password_takes_credentials_from_a_file_or_the_docker_config() {
    let folder = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_password("ci", "s3cret-pass");
    let component = folder.path().join("digits.wasm");
    std::fs::write(&component, digits_version(V2)).unwrap();
    let reference = format!("{}:v2", registry.reference("guests/digits"));
    let push_args = |extra: &[&str]| {
        let mut args = vec!["push".to_string(), component.display().to_string(), reference.clone()];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    };

    let anonymous = run(push_args(&[]), no_docker_config(folder.path())).await;
    assert!(!anonymous.status.success());
    let refusal = String::from_utf8_lossy(&anonymous.stderr);
    assert!(refusal.contains("refused access"), "{refusal}");

    // The Docker config format: in a file given, or as the user's Docker config.
    let docker = folder.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret-pass");
    let credentials = docker.join("config.json");
    std::fs::write(&credentials, json!({ "auths": { registry.host.clone(): { "auth": auth } } }).to_string())
        .unwrap();
    let with_file = run(
        push_args(&["--credentials", &credentials.display().to_string()]),
        no_docker_config(folder.path()),
    )
    .await;
    assert!(with_file.status.success(), "{}", String::from_utf8_lossy(&with_file.stderr));
    let from_docker_config = run(push_args(&[]), vec![("DOCKER_CONFIG", docker.clone())]).await;
    assert!(from_docker_config.status.success(), "{}", String::from_utf8_lossy(&from_docker_config.stderr));
    assert_eq!(from_docker_config.stdout, with_file.stdout, "the same artifact, the same digest");

    // A node pulls with its configured credentials, and is refused without.
    let hidden = folder.path().join("no-docker-config");
    let with = Server::try_start_with_env(
        &node_config(folder.path(), &format!("registry_credentials = \"{}\"", credentials.display())),
        "info",
        "text",
        &[("DOCKER_CONFIG", &hidden)],
    )
    .unwrap();
    let stored = format!("sha256:{}", hex(&std::fs::read(repo_file("models/digits/digits.onnx")).unwrap()));
    let response = put_digits(&Admin::with_token(&with, FLEET_TOKEN.into()), &reference, &stored).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    assert_eq!(classify_version(&client(), &with.base).await, (200, "digits-guest-v2".into()));
    let without = Server::try_start_with_env(
        &node_config(folder.path(), ""),
        "info",
        "text",
        &[("DOCKER_CONFIG", &hidden)],
    )
    .unwrap();
    let response = put_digits(&Admin::with_token(&without, FLEET_TOKEN.into()), &reference, &stored).await;
    let refusal = expect_error(response, 502).await;
    assert!(refusal.contains("refused access"), "{refusal}");
}

/// `edge-infer deploy FILE` to the nodes `admins`, with a smoke request; returns whether it
/// succeeded and its JSON report.
async fn deploy(file: &Path, admins: &[&Server], folder: &Path) -> (bool, Value) {
    let smoke = folder.join("smoke.json");
    std::fs::write(&smoke, json!({ "pixels": vec![0; 64] }).to_string()).unwrap();
    let token = folder.join("admin-token");
    let mut args = vec![
        "deploy".to_string(),
        file.display().to_string(),
        "--token-file".into(),
        token.display().to_string(),
        "--smoke-body".into(),
        smoke.display().to_string(),
        "--json".into(),
    ];
    for node in admins {
        args.extend(["--node".into(), node.admin.clone()]);
    }
    let output = run(args, no_docker_config(folder)).await;
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("no JSON report: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.success(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roll_out_to_three_nodes_under_load_fails_no_request_and_one_failing_node_rolls_all_back() {
    let folder = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let nodes: Vec<Server> = (0..3).map(|_| Server::start(&node_config(folder.path(), ""))).collect();
    let bases: Vec<String> = nodes.iter().map(|node| node.base.clone()).collect();
    let v2_tag = format!("{}:v2", registry.reference("guests/digits"));
    let v2 = push(&digits_version(V2), &v2_tag, folder.path()).await;
    let model_bytes = std::fs::read(repo_file("models/digits/digits.onnx")).unwrap();
    let model =
        push(&model_bytes, &format!("{}:v1", registry.reference("models/digits")), folder.path()).await;

    // v2 by tag from the registry; the model as a local file, uploaded to each node.
    let file = folder.path().join("digits-v2.toml");
    let deploy_file = |component: &str, model_file: &str| {
        format!(
            "[models.digits]\nfile = \"{model_file}\"\n[[routes]]\npath = \"/digits\"\ncomponent = \"{component}\"\nmodels = [\"digits\"]\n"
        )
    };
    std::fs::write(
        &file,
        deploy_file(&v2_tag, &repo_file("models/digits/digits.onnx").display().to_string()),
    )
    .unwrap();
    let load = Load::start(&bases, 2);
    load.wait_for_requests(100).await;
    let (succeeded, report) = deploy(&file, &nodes.iter().collect::<Vec<_>>(), folder.path()).await;
    let finished = std::time::Instant::now();
    assert!(succeeded, "{report:#}");
    assert_eq!(report["ok"], true);
    let phases: Vec<&str> =
        report["nodes"].as_array().unwrap().iter().map(|n| n["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["canary", "rollout", "rollout"]);
    for node in report["nodes"].as_array().unwrap() {
        assert_eq!(node["outcome"], "replaced", "{report:#}");
        assert_eq!(node["smoke_status"], 200, "{report:#}");
        assert_eq!(node["component"], format!("sha256:{}", hex(&digits_version(V2))));
    }
    load.wait_for_requests(100).await;
    let answers = load.stop().await;
    let failed: Vec<u16> = answers.iter().map(|a| a.status).filter(|s| *s != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), answers.len());
    for base in &bases {
        let after: Vec<&str> = answers
            .iter()
            .filter(|a| &a.base == base && a.started > finished)
            .map(|a| a.version.as_str())
            .collect();
        assert!(!after.is_empty() && after.iter().all(|v| v.as_bytes() == V2), "{base}: {after:?}");
    }
    for node in &nodes {
        assert_eq!(Admin::with_token(node, FLEET_TOKEN.into()).route("digits").await["source"], v2.as_str());
    }

    // v3, model and guest both from the registry, to the three nodes and a fourth that
    // takes no artifact over 1 KiB: it fails, and every node changed goes back to v2.
    let small = Server::start(&node_config(folder.path(), "max_artifact_bytes = 1024"));
    let v3 = push(&digits_version(V3), &format!("{}:v3", registry.reference("guests/digits")), folder.path())
        .await;
    std::fs::write(&file, deploy_file(&v3, &model)).unwrap();
    let load = Load::start(&bases, 2);
    load.wait_for_requests(100).await;
    let fleet = [&nodes[0], &nodes[1], &small, &nodes[2]];
    let (succeeded, report) = deploy(&file, &fleet, folder.path()).await;
    assert!(!succeeded, "{report:#}");
    assert_eq!(report["ok"], false);
    let reports = report["nodes"].as_array().unwrap();
    assert_eq!(reports[2]["outcome"], "failed", "{report:#}");
    let reason = reports[2]["error"].as_str().unwrap();
    assert!(reason.contains("over the limit of 1024 bytes"), "{reason}");
    for i in [0, 1, 3] {
        assert_eq!(reports[i]["outcome"], "replaced", "node {i}: {report:#}");
        assert_eq!(reports[i]["rolled_back"], true, "node {i}: {report:#}");
    }
    assert_eq!(reports[2]["rolled_back"], false, "the failed node changed nothing: {report:#}");
    load.wait_for_requests(100).await;
    let answers = load.stop().await;
    let failed: Vec<u16> = answers.iter().map(|a| a.status).filter(|s| *s != 200).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), answers.len());
    for node in &nodes {
        assert_eq!(classify_version(&client(), &node.base).await, (200, "digits-guest-v2".into()));
        assert_eq!(Admin::with_token(node, FLEET_TOKEN.into()).route("digits").await["source"], v2.as_str());
    }

    // A new route, with new settings for the model it shares: when the roll-out fails, the
    // route goes and the model gets its settings back.
    let admin = Admin::with_token(&nodes[0], FLEET_TOKEN.into());
    let models = |admin: &Admin| {
        let request = admin.request(reqwest::Method::GET, "/admin/models");
        async move { request.send().await.unwrap().json::<Value>().await.unwrap()["models"].clone() }
    };
    let models_before = models(&admin).await;
    std::fs::write(
        &file,
        format!(
            "[models.digits]\nfile = \"{model}\"\nexecutors = 1\n[[routes]]\npath = \"/digits-new\"\ncomponent = \"{v2}\"\nmodels = [\"digits\"]\n"
        ),
    )
    .unwrap();
    let (succeeded, report) = deploy(&file, &[&nodes[0], &small], folder.path()).await;
    assert!(!succeeded, "{report:#}");
    assert_eq!(
        (&report["nodes"][0]["outcome"], &report["nodes"][0]["rolled_back"]),
        (&json!("created"), &json!(true))
    );
    let gone = admin.request(reqwest::Method::GET, "/admin/routes/digits-new").send().await.unwrap();
    assert_eq!(gone.status(), 404);
    assert_eq!(models(&admin).await, models_before, "the model's settings are back");

    // The admin API takes no paths on the node, files or folders.
    let response =
        put_digits(&admin, &repo_file("models/digits/digits.onnx").display().to_string(), &model).await;
    assert!(expect_error(response, 400).await.contains("upload files first"));
    let settings = json!({ "path": "/digits", "component": v2, "models": ["digits"], "read_only_dirs": { "/etc": "/etc" } });
    let response =
        admin.request(reqwest::Method::PUT, "/admin/routes/digits").json(&settings).send().await.unwrap();
    assert!(expect_error(response, 400).await.contains("read_only_dirs"));
}
