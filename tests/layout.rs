//! The source layout follows the request flow: each folder of `host/` is a layer, and no
//! module imports from a layer above its own (see `host/README.md`). This test reads every
//! `crate::` path in the library's sources and fails on an arrow that points up.

use std::path::{Path, PathBuf};

/// The layers, top to bottom: a module may use its own layer and those after it.
const LAYERS: [&str; 7] = ["http", "node", "oci", "sandbox", "inference", "telemetry", "request"];

fn sources(folder: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// The layer a library source belongs to: its folder under `host/`, or its
/// own name for a file directly in `host/`. `None` for the crate root and the binary.
fn layer_of(host: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(host).unwrap();
    let first = relative.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (!["lib", "main", "cli", "build"].contains(&name.as_str())).then_some(name)
}

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

/// The first segment of every `crate::…` path in `text`.
fn imported_layers(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(at, _)| {
            text[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("host");
    let mut files = Vec::new();
    sources(&host, &mut files);
    let mut checked = 0;
    let mut upward = Vec::new();
    for file in &files {
        let Some(own) = layer_of(&host, file) else { continue };
        let text = std::fs::read_to_string(file).unwrap();
        for target in imported_layers(&text) {
            checked += 1;
            let (own_rank, target_rank) = (rank(&own), rank(&target));
            assert!(own_rank.is_some(), "{} is in no layer: add its folder to LAYERS", file.display());
            assert!(target_rank.is_some(), "{} uses crate::{target}, which is in no layer", file.display());
            if target_rank < own_rank {
                upward.push(format!(
                    "{} ({own}) uses crate::{target}",
                    file.strip_prefix(&host).unwrap().display()
                ));
            }
        }
    }
    assert!(checked > 50, "only {checked} imports found: is the test reading the sources?");
    assert!(upward.is_empty(), "imports that point up the request flow:\n{}", upward.join("\n"));
}

#[test]
fn the_checker_sees_an_upward_import() {
    assert_eq!(
        imported_layers("use crate::http::router;\nuse crate::request::Priority;"),
        ["http", "request"]
    );
    assert!(rank("inference") > rank("sandbox"));
}

#[test]
fn the_runtime_library_uses_none_of_the_binarys_crates() {
    // The command line and the load generator are the binary's (feature `cli`); a library
    // source naming them would break `default-features = false` users.
    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("host");
    let mut files = Vec::new();
    sources(&host, &mut files);
    let library: Vec<&PathBuf> = files.iter().filter(|file| layer_of(&host, file).is_some()).collect();
    assert!(library.len() > 20, "only {} library sources found", library.len());
    for file in library {
        let text = std::fs::read_to_string(file).unwrap();
        for binary_only in ["edge_infer_bench", "clap::", "tracing_subscriber"] {
            assert!(!text.contains(binary_only), "{} uses {binary_only}", file.display());
        }
    }
}
