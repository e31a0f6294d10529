//! Guests in other languages, and strict imports.
//!
//! The Python and JavaScript digits guests must give exactly the Rust guest's labels on the
//! held-out split. They are built by guest/build-py-js.sh (componentize-py from PyPI,
//! componentize-js from npm); the first test to need them runs it. They load with the
//! default imports (all of WASI, capabilities closed); under `strict_imports`, a component
//! importing what its route does not grant is refused at start-up, the import named.

mod common;

use std::process::Command;

use common::{
    Server, build_python_guest, client, digits_config, digits_test_split, guest, interpreted_guests,
    post_json, repo_file, run_tool,
};
use edge_infer::sandbox::imports::{GUEST_WORLD, imports};
use serde_json::{Value, json};

fn config(js_imports: &str) -> String {
    let folder = interpreted_guests();
    format!(
        r#"{digits}
[[routes]]
path = "/digits-py"
component = "{py}"
models = ["digits"]
memory_mib = 256

[[routes]]
path = "/digits-js"
component = "{js}"
models = ["digits"]
memory_mib = 256
{js_imports}
"#,
        digits = digits_config(),
        py = folder.join("digits-py.wasm").display(),
        js = folder.join("digits-js.wasm").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_guests_give_the_rust_guests_labels() {
    let server = tokio::task::spawn_blocking(|| Server::in_process(&config(""))).await.unwrap();
    let (images, _) = digits_test_split();
    let label_all = |route: &'static str| {
        let (url, images) = (server.url(route), images.clone());
        async move {
            let (status, answer) = post_json(&client(), &url, &json!({ "images": images })).await;
            assert_eq!(status, 200, "{route}: {answer}");
            answer.as_array().unwrap().iter().map(|p| p["label"].as_u64().unwrap()).collect::<Vec<_>>()
        }
    };
    let rust = label_all("/digits").await;
    assert_eq!(rust.len(), images.len());
    assert_eq!(label_all("/digits-py").await, rust, "Python and Rust disagree");
    assert_eq!(label_all("/digits-js").await, rust, "JavaScript and Rust disagree");

    for route in ["/digits-py", "/digits-js"] {
        // One image at a time gives the same answer as in a list, probabilities included.
        let (status, single) =
            post_json(&client(), &server.url(route), &json!({ "pixels": images[9] })).await;
        let (_, rust_single) =
            post_json(&client(), &server.url("/digits"), &json!({ "pixels": images[9] })).await;
        assert_eq!(status, 200);
        assert_eq!(single["label"], rust_single["label"]);
        let close = |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-6;
        let (a, b) =
            (single["probabilities"].as_array().unwrap(), rust_single["probabilities"].as_array().unwrap());
        assert!(a.iter().zip(b).all(|(a, b)| close(a, b)), "{route}: {single} vs {rust_single}");
        // Malformed input gets the same 400 as from the Rust guest.
        let (status, error) = post_json(&client(), &server.url(route), &json!({ "pixels": [1, 2] })).await;
        assert_eq!((status, error["error"].as_str()), (400, Some("pixels must hold 64 numbers, got 2")));
    }
}

#[test]
fn the_rust_guests_import_exactly_the_guest_world() {
    let engine = wasmtime::Engine::default();
    for name in ["digits", "hello", "vad"] {
        let component = wasmtime::component::Component::from_file(&engine, guest(name)).unwrap();
        let imported: Vec<String> = imports(&engine, &component)
            .into_iter()
            .map(|import| import.split('@').next().unwrap().to_string())
            .collect();
        for import in &imported {
            assert!(
                GUEST_WORLD.contains(&import.as_str()),
                "{name} imports {import}, outside the guest world"
            );
        }
        if name != "hello" {
            for nn in ["wasi:nn/graph", "wasi:nn/tensor", "wasi:nn/inference", "wasi:nn/errors"] {
                assert!(imported.iter().any(|i| i == nn), "{name} does not import {nn}: {imported:?}");
            }
        }
    }
}

#[test]
fn under_strict_imports_a_component_importing_the_filesystem_is_refused_unless_granted() {
    let granted = Server::try_in_process(&config("strict_imports = true\ngrant = [\"wasi:filesystem\"]"));
    assert!(granted.is_ok(), "granted, it loads: {:?}", granted.err());
    let stderr = Server::try_in_process(&config("strict_imports = true"))
        .err()
        .expect("the JavaScript guest imports wasi:filesystem");
    assert!(stderr.contains("/digits-js"), "{stderr}");
    assert!(stderr.contains("`wasi:filesystem/types@"), "the import is named: {stderr}");
    assert!(stderr.contains("grant"), "{stderr}");
}

/// The Python and JavaScript SDKs read a body as it arrives (Python in less memory than the
/// body: StarlingMonkey keeps JavaScript's pieces, and a host handle for each, until its
/// collector runs, so JavaScript's is not held to less), and make and read back tensors of
/// types beyond f32 and i64 through the host's `wasi:nn`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdks_stream_bodies_and_cover_the_tensor_types() {
    interpreted_guests(); // installs the pinned tools
    let folder = tempfile::tempdir().unwrap();
    let python = folder.path().join("app-py.wasm");
    build_python_guest(&repo_file("tests/sdk"), &python);
    let js = folder.path().join("app-js.wasm");
    run_tool(
        Command::new("node").current_dir(repo_file("tests/sdk")).args([
            repo_file("guest/sdk-js/build.mjs").display().to_string().as_str(),
            "app.js",
            &js.display().to_string(),
        ]),
        "guest/sdk-js/build.mjs",
    );
    // 64 MB into Python instances of 48 MiB: read whole, it could not be held.
    let config = format!(
        "[[routes]]\npath = \"/py\"\ncomponent = \"{}\"\nmemory_mib = 48\nmax_body_bytes = {size}\n\n\
         [[routes]]\npath = \"/js\"\ncomponent = \"{}\"\nmemory_mib = 48\nmax_body_bytes = {size}\n\n\
         [server]\nmemory_budget_mib = 512\n",
        python.display(),
        js.display(),
        size = 64 << 20,
    );
    let server = tokio::task::spawn_blocking(move || Server::in_process(&config)).await.unwrap();
    for (route, size) in [("/py", 64_000_000u32), ("/js", 4_000_000)] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let response = client().post(server.url(route)).body(body.clone()).send().await.unwrap();
        assert_eq!(response.status(), 200, "{route}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["bytes"], body.len(), "{route}: {answer}");
        assert_eq!(answer["head"], json!(body[..8]), "{route}");
        assert_eq!(answer["tail"], json!(body[body.len() - 8..]), "{route}");
        let types = &answer["types"];
        assert_eq!(types["i32"], json!([7, -9]), "{route}");
        assert_eq!(types["u8"], json!([97, 98, 99]), "{route}");
        assert_eq!(
            types["f16"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect::<Vec<_>>(),
            [0.5, 65504.0]
        );
        assert_eq!(types["bf16"][0].as_f64(), Some(-3.0), "{route}");
        assert_eq!(types["f64"][0].as_f64(), Some(0.1), "{route}");
    }
}
