//! Guests in other languages, and strict imports.
//!
//! The Python and JavaScript digits guests must give exactly the Rust guest's labels on the
//! held-out split. They are built by guest/build-py-js.sh (componentize-py from PyPI,
//! componentize-js from npm); the first test to need them runs it. They load with the
//! default imports (all of WASI, capabilities closed); under `strict_imports`, a component
//! importing what its route does not grant is refused at start-up, the import named.

mod common;

use common::{Server, client, digits_config, digits_test_split, guest, interpreted_guests, post_json};
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
    let server = tokio::task::spawn_blocking(|| Server::start(&config(""))).await.unwrap();
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
    let granted = Server::try_start(&config("strict_imports = true\ngrant = [\"wasi:filesystem\"]"));
    assert!(granted.is_ok(), "granted, it loads: {:?}", granted.err());
    let stderr = Server::try_start(&config("strict_imports = true"))
        .err()
        .expect("the JavaScript guest imports wasi:filesystem");
    assert!(stderr.contains("/digits-js"), "{stderr}");
    assert!(stderr.contains("`wasi:filesystem/types@"), "the import is named: {stderr}");
    assert!(stderr.contains("grant"), "{stderr}");
}
