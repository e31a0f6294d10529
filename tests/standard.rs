//! Standard `wasi:http/proxy` components built without edge-infer's SDKs, by three
//! toolchains (Rust with the `wasip2` bindings and std, componentize-py and componentize-js
//! for the plain `wasi:http/proxy` world), load with the default imports and serve; what
//! they try to reach outside the sandbox (a file, the environment, outgoing HTTP) fails.
//! Under `strict_imports`, a component importing more than the guest world is refused.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Server, build_plain_python_app, client, guest, interpreted_guests, repo_file, run_tool};
use serde_json::Value;

fn route(path: &str, component: &Path, extra: &str) -> String {
    format!(
        "[[routes]]\npath = \"{path}\"\ncomponent = \"{}\"\nmemory_mib = 256\n{extra}\n",
        component.display()
    )
}

async fn get(server: &Server, path: &str) -> Value {
    let response = client().get(server.url(path)).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_from_other_toolchains_serve_and_cannot_reach_out() {
    // The tools guest/build-py-js.sh installs: the pinned componentize-py and componentize-js.
    interpreted_guests();
    let built = tempfile::tempdir().unwrap();
    let (python, javascript) = (built.path().join("plain-py.wasm"), built.path().join("plain-js.wasm"));
    build_plain_python_app("guest/plain-py", &python);
    run_tool(
        Command::new("node")
            .arg(repo_file("guest/sdk-js/build.mjs"))
            .arg(repo_file("guest/plain-js/app.js"))
            .arg(&javascript)
            .arg("wasi:http/proxy@0.2.10"),
        "componentize-js",
    );

    let config = [("/rust", guest("plain")), ("/python", python), ("/javascript", javascript)]
        .iter()
        .map(|(path, component)| route(path, component, ""))
        .collect::<String>();
    let server = tokio::task::spawn_blocking(move || Server::in_process(&config)).await.unwrap();
    for path in ["/rust", "/python", "/javascript"] {
        let answer = get(&server, path).await;
        let outbound = answer["outbound"].as_str().unwrap();
        assert!(outbound.starts_with("refused"), "{path}: outgoing HTTP must fail: {answer}");
        if path != "/javascript" {
            assert!(answer["file"].as_str().unwrap().starts_with("refused"), "{path}: no file: {answer}");
            assert_eq!(answer["env_vars"], 0, "{path}: an empty environment: {answer}");
        }
    }
    assert_eq!(
        get(&server, "/rust").await["seeded_map"],
        3,
        "std's HashMap, seeded by wasi:random/insecure-seed"
    );
}

#[test]
fn under_strict_imports_a_component_importing_the_filesystem_is_refused() {
    let stderr = Server::try_in_process(&route("/rust", &guest("plain"), "strict_imports = true"))
        .err()
        .expect("std::fs imports wasi:filesystem, outside the guest world");
    assert!(stderr.contains("`wasi:filesystem/"), "the import is named: {stderr}");
    assert!(stderr.contains("strict_imports"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_opens_outbound_http_to_listed_hosts_and_folders_to_read() {
    // Another node, for the guest to call over real HTTP.
    let target = tokio::task::spawn_blocking(|| Server::in_process(&route("/hello", &guest("hello"), "")))
        .await
        .unwrap();
    let authority = target.base.trim_start_matches("http://").to_string();
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(folder.path().join("note.txt"), "twelve bytes").unwrap();
    let opened = format!(
        "outbound_http = [\"{authority}\"]\n[routes.read_only_dirs]\n\"/data\" = \"{}\"",
        folder.path().display()
    );
    let config = route("/open", &guest("plain"), &opened) + &route("/closed", &guest("plain"), "");
    let server = tokio::task::spawn_blocking(move || Server::in_process(&config)).await.unwrap();
    let ask = |path: &'static str, outbound: String, file: &'static str| {
        let url = server.url(path);
        async move {
            let request = client().get(url).header("x-outbound", outbound).header("x-file", file);
            let answer: Value = request.send().await.unwrap().json().await.unwrap();
            answer
        }
    };

    let open = ask("/open", authority.clone(), "/data/note.txt").await;
    assert_eq!(open["outbound"], "reached: 200", "a listed host is reachable: {open}");
    assert_eq!(open["file"], "read 12 bytes", "{open}");
    assert!(open["write"].as_str().unwrap().starts_with("refused"), "read-only: {open}");
    assert!(!folder.path().join("written.txt").exists());
    let unlisted = ask("/open", "example.com".to_string(), "/etc/hostname").await;
    assert!(unlisted["outbound"].as_str().unwrap().contains("HttpRequestDenied"), "{unlisted}");
    assert!(unlisted["file"].as_str().unwrap().starts_with("refused"), "only the opened folder: {unlisted}");

    let closed = ask("/closed", authority, "/data/note.txt").await;
    assert!(closed["outbound"].as_str().unwrap().contains("HttpRequestDenied"), "{closed}");
    assert!(closed["file"].as_str().unwrap().starts_with("refused"), "{closed}");
}
