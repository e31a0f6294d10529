//! The guest guide (guest/README.md) is true: the complete guest it shows in each language,
//! copied into a folder outside the repo, builds with the guide's commands against the SDKs
//! and serves, giving the bundled Rust guest's labels; the Rust SDK's doc examples compile,
//! and the WIT it vendors is the repo's.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    Server, build_python_guest, client, digits_config, digits_test_split, guest, interpreted_guests,
    post_json, repo_file, run_tool,
};
use serde_json::{Value, json};

/// How the guide names the repo in paths the reader replaces.
const REPO_PLACEHOLDER: &str = "/path/to/edge-infer";

/// The files the guide marks with `<!-- file: PATH -->` before a fenced block, written under
/// `folder` with the placeholder replaced by this repo's path. Returns the paths written.
fn write_guide_files(folder: &Path) -> Vec<String> {
    let guide = std::fs::read_to_string(repo_file("guest/README.md")).unwrap();
    let repo = repo_file("").display().to_string();
    let mut written = Vec::new();
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        let Some(path) = line.strip_prefix("<!-- file: ").and_then(|rest| rest.strip_suffix(" -->")) else {
            continue;
        };
        assert!(lines.next().is_some_and(|fence| fence.starts_with("```")), "{path}: no code block follows");
        let body: Vec<&str> = lines.by_ref().take_while(|line| !line.starts_with("```")).collect();
        let text = body.join("\n").replace(REPO_PLACEHOLDER, repo.trim_end_matches('/')) + "\n";
        let file = folder.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, text).unwrap();
        written.push(path.to_string());
    }
    written
}

/// Lines of user code in a guide file: not blank, not only a comment.
fn code_lines(file: &Path) -> usize {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with('#'))
        .count()
}

/// The toolchain rust-toolchain.toml pins (a folder outside the repo would get the default).
fn pinned_toolchain() -> String {
    let text = std::fs::read_to_string(repo_file("rust-toolchain.toml")).unwrap();
    let line = text.lines().find(|l| l.starts_with("channel")).expect("a channel line");
    line.split('"').nth(1).expect("a quoted channel").to_string()
}

/// Cargo's target folder for this build: the guests are built under it.
fn target_dir() -> PathBuf {
    guest("digits").ancestors().nth(4).unwrap().to_path_buf()
}

/// A cargo command for a project outside this build: none of the outer cargo's settings.
fn cargo(folder: &Path, target: &Path) -> Command {
    let mut command = Command::new("cargo");
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("CARGO_") || name.starts_with("RUSTC") || name == "RUSTFLAGS" {
            command.env_remove(name);
        }
    }
    command.current_dir(folder).env("RUSTUP_TOOLCHAIN", pinned_toolchain()).env("CARGO_TARGET_DIR", target);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_guests_build_outside_the_repo_and_serve() {
    let folder = tempfile::tempdir().unwrap();
    assert!(!folder.path().starts_with(repo_file("")), "the guests must be built outside the repo");
    let written = write_guide_files(folder.path());
    assert_eq!(written, ["rust/Cargo.toml", "rust/src/lib.rs", "python/app.py", "js/app.js"]);
    for user_code in ["rust/src/lib.rs", "python/app.py", "js/app.js"] {
        let lines = code_lines(&folder.path().join(user_code));
        assert!(lines < 30, "{user_code} has {lines} lines of code; the guide promises under 30");
    }

    // Rust: the guide's `cargo build`, in a target folder kept between runs.
    let rust = folder.path().join("rust");
    let rust_target = target_dir().join("wasm-guide");
    run_tool(
        cargo(&rust, &rust_target).args(["build", "--release", "--target", "wasm32-wasip2"]),
        "cargo build",
    );
    let rust_wasm = rust_target.join("wasm32-wasip2/release/my_guest.wasm");

    // Python and JavaScript: the guide's commands, with the tools build-py-js.sh installs
    // (the same pinned componentize-py, and guest/sdk-js's node_modules).
    interpreted_guests();
    let python = folder.path().join("python");
    build_python_guest(&python, &python.join("app.wasm"));
    let js = folder.path().join("js");
    run_tool(
        Command::new("node").current_dir(&js).args([
            repo_file("guest/sdk-js/build.mjs").display().to_string().as_str(),
            "app.js",
            "app.wasm",
        ]),
        "guest/sdk-js/build.mjs",
    );

    let config = format!(
        "{digits}\n{routes}",
        digits = digits_config(),
        routes = [
            ("/rust", rust_wasm, ""),
            ("/python", python.join("app.wasm"), "memory_mib = 256"),
            ("/js", js.join("app.wasm"), "memory_mib = 256"),
        ]
        .iter()
        .map(|(path, wasm, extra)| {
            format!(
                "[[routes]]\npath = \"{path}\"\ncomponent = \"{}\"\nmodels = [\"digits\"]\n{extra}\n",
                wasm.display()
            )
        })
        .collect::<String>()
    );
    let server = tokio::task::spawn_blocking(move || Server::in_process(&config)).await.unwrap();
    let (images, _) = digits_test_split();
    for image in images.iter().take(20) {
        let (_, bundled) = post_json(&client(), &server.url("/digits"), &json!({ "pixels": image })).await;
        for route in ["/rust", "/python", "/js"] {
            let (status, answer) = post_json(&client(), &server.url(route), &json!(image)).await;
            assert_eq!(status, 200, "{route}: {answer}");
            assert_eq!(answer["label"], bundled["label"], "{route} disagrees with /digits");
            let probabilities = answer["probabilities"].as_array().unwrap();
            let expected = bundled["probabilities"].as_array().unwrap();
            let close = |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-6;
            assert!(probabilities.iter().zip(expected).all(|(a, b)| close(a, b)), "{route}: {answer}");
        }
    }
    for route in ["/rust", "/python", "/js"] {
        let (status, answer) = post_json(&client(), &server.url(route), &json!([1, 2, 3])).await;
        assert_eq!(status, 400, "{route}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("64 numbers"), "{route}: {answer}");
        let response = client().post(server.url(route)).body("not json").send().await.unwrap();
        assert_eq!(response.status(), 400, "{route}: malformed JSON");
        let answer: Value = response.json().await.unwrap();
        assert!(answer["error"].as_str().unwrap().starts_with("malformed JSON"), "{route}: {answer}");
    }
}

#[test]
fn the_rust_sdks_doc_examples_compile() {
    let sdk = repo_file("guest/sdk");
    run_tool(
        cargo(&sdk, &target_dir().join("guest-sdk-doc")).args(["test", "--doc"]),
        "cargo test --doc in guest/sdk",
    );
}

#[test]
fn the_rust_sdk_vendors_the_repos_wasi_nn() {
    let vendored = std::fs::read_to_string(repo_file("guest/sdk/wit/nn.wit")).unwrap();
    let repo = std::fs::read_to_string(repo_file("wit/deps/nn.wit")).unwrap();
    assert!(vendored == repo, "guest/sdk/wit/nn.wit differs from wit/deps/nn.wit: copy it again");
}
