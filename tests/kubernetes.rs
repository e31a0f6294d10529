//! The Kubernetes manifests in `deploy/kubernetes`: valid against the Kubernetes schemas
//! (kubernetes-validate, offline and strict), and in agreement with the server they run:
//! the config file the ConfigMap is made from parses, the probes' paths and the autoscaler's
//! metric are what a real server answers, and names, ports and labels line up across the
//! objects.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::{Server, client, compat_python, digits_config, repo_file};

fn manifests() -> Vec<PathBuf> {
    let folder = repo_file("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Runs kubernetes-validate --strict on `files`: whether all passed, and what it printed.
fn validate(files: &[PathBuf]) -> (bool, String) {
    let output = Command::new(compat_python())
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(files)
        .output()
        .unwrap();
    let printed =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), printed)
}

#[test]
fn the_manifests_validate_against_the_kubernetes_schemas() {
    let files = manifests();
    let (passed, printed) = validate(&files);
    assert!(passed, "{printed}");
    // Every built-in kind is checked against its schema; only the custom resource (the
    // Prometheus Operator's ServiceMonitor) and kustomize's own file have none.
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        let line =
            printed.lines().find(|line| line.contains(&*name)).unwrap_or_else(|| panic!("{name}: {printed}"));
        let unchecked = ["kustomization.yaml", "servicemonitor.yaml"].contains(&&*name);
        assert_eq!(line.contains(" passed "), !unchecked, "{line}");
    }
    // The validator is not vacuous: a misspelt field fails.
    let folder = tempfile::tempdir().unwrap();
    let broken = folder.path().join("deployment.yaml");
    let text = std::fs::read_to_string(repo_file("deploy/kubernetes/deployment.yaml")).unwrap();
    std::fs::write(&broken, text.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem")).unwrap();
    let (passed, printed) = validate(&[broken]);
    assert!(!passed && printed.contains("readOnlyRootFileSystem"), "{printed}");
}

/// The objects of a manifest file, as JSON.
fn objects(name: &str) -> Vec<Value> {
    let output = Command::new(compat_python())
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(repo_file(&format!("deploy/kubernetes/{name}")))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn object(name: &str) -> Value {
    objects(name).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_agree_with_the_server_and_each_other() {
    let deployment = object("deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);

    // The kustomization makes the ConfigMap the pods mount from config.toml, and applies
    // files that are there.
    let kustomization = object("kustomization.yaml");
    let generated = &kustomization["configMapGenerator"][0];
    assert_eq!(generated["files"][0], "config.toml");
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(volumes.iter().any(|v| v["configMap"]["name"] == generated["name"]), "the config is mounted");
    for resource in kustomization["resources"].as_array().unwrap() {
        assert!(
            repo_file(&format!("deploy/kubernetes/{}", resource.as_str().unwrap())).is_file(),
            "{resource}"
        );
    }

    // The config is one the server takes, and its ports are the container's.
    let text = std::fs::read_to_string(repo_file("deploy/kubernetes/config.toml")).unwrap();
    let config = edge_infer::node::config::Config::from_toml(&text, Path::new("/etc/edge-infer")).unwrap();
    let port = |name: &str| {
        container["ports"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["containerPort"]
            .as_u64()
            .unwrap() as u16
    };
    assert_eq!(config.server.listen.port(), port("http"));
    assert_eq!(config.server.grpc_listen.port(), port("grpc"));
    assert!(config.server.admin_listen.ip().is_loopback(), "the admin API stays in the pod");
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mounted = |path: &Path| mounts.iter().any(|m| path.starts_with(m["mountPath"].as_str().unwrap()));
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let state_dir = args[args.iter().position(|a| *a == "--state-dir").unwrap() + 1];
    assert!(mounted(Path::new(state_dir)), "the state folder is on a volume");
    let grace_s = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pause_s = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap();
    assert!(
        config.server.shutdown_grace_ms < (grace_s - pause_s) * 1000,
        "requests in flight finish before SIGKILL"
    );
    assert!(deployment["spec"]["replicas"].is_null(), "the autoscaler owns the replica count");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    // The Service, the budget and the monitor select the pods and name their ports.
    let service = object("service.yaml");
    assert_eq!(&service["spec"]["selector"], labels);
    let service_ports: Vec<&Value> =
        service["spec"]["ports"].as_array().unwrap().iter().map(|p| &p["name"]).collect();
    assert!(!service_ports.contains(&&Value::from("admin")), "the admin API is not exposed");
    assert_eq!(&object("poddisruptionbudget.yaml")["spec"]["selector"]["matchLabels"], labels);
    let monitor = object("servicemonitor.yaml");
    assert!(service_ports.contains(&&monitor["spec"]["endpoints"][0]["port"]));
    let hpa = object("horizontalpodautoscaler.yaml");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"]);

    // A real server answers the probes and exports the series the autoscaler scales on.
    let server = Server::start(&digits_config());
    let http = client();
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().unwrap();
        let status = http.get(server.url(path)).send().await.unwrap().status();
        assert_eq!(status, 200, "{probe} {path}");
    }
    let monitor_path = monitor["spec"]["endpoints"][0]["path"].as_str().unwrap();
    let metrics = http.get(server.url(monitor_path)).send().await.unwrap().text().await.unwrap();
    let rules: Value = {
        let adapter = object("prometheus-adapter-rules.yaml");
        let text = adapter["data"]["config.yaml"].as_str().unwrap().to_string();
        let output = Command::new(compat_python())
            .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.argv[1])))"])
            .arg(text)
            .output()
            .unwrap();
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let rule = &rules["rules"][0];
    assert_eq!(rule["name"]["as"], hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]);
    let series = rule["seriesQuery"].as_str().unwrap().split('{').next().unwrap();
    assert!(metrics.lines().any(|line| line.starts_with(&format!("{series}{{"))), "{series} in:\n{metrics}");
}
