//! The source layout follows the request flow: each folder of `host/` is a layer, and no
//! module imports from a layer above its own (see `host/README.md`). This test reads every
//! `crate::`, `super::` and `self::` path in the library's sources and fails on an arrow that
//! points up, on a circle of imports between files, and on a source file over
//! [`MAX_LINES`] lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top to bottom: a module may use its own layer and those after it.
const LAYERS: [&str; 7] = ["serving", "http", "node", "sandbox", "inference", "telemetry", "request"];

/// The longest a source file in `host/` may be, tests included.
const MAX_LINES: usize = 600;

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

/// Every `.rs` file under `host/`, with its text.
fn host_sources() -> Vec<(PathBuf, String)> {
    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("host");
    let mut files = Vec::new();
    sources(&host, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|file| {
            (file.strip_prefix(&host).unwrap().to_path_buf(), std::fs::read_to_string(&file).unwrap())
        })
        .collect()
}

/// The layer a library source belongs to: its folder under `host/`, or its
/// own name for a file directly in `host/`. `None` for the crate root and the binary.
fn layer_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (!["lib", "main", "cli", "build"].contains(&name.as_str())).then_some(name)
}

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

/// The module a library source is (`http/server.rs` is `["http", "server"]`, `http/mod.rs`
/// is `["http"]`, `lib.rs` is `[]`); `None` for the binary's files.
fn module_of(relative: &Path) -> Option<Vec<String>> {
    layer_of(relative).or_else(|| (relative == Path::new("lib.rs")).then(String::new))?;
    let mut path: Vec<String> =
        relative.iter().map(|part| part.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    if path.last().is_some_and(|last| last == "mod" || last == "lib") {
        path.pop();
    }
    Some(path)
}

/// Reads one `use` tree (`a::{b, c::d as e}`, `a::*`) from `text`, each path it names added
/// to `paths` after `prefix`.
fn read_tree(
    text: &mut std::iter::Peekable<std::str::Chars>,
    prefix: Vec<String>,
    paths: &mut Vec<Vec<String>>,
) {
    let mut path = prefix;
    loop {
        while text.next_if(|c| c.is_whitespace()).is_some() {}
        match text.peek() {
            Some('{') => {
                text.next();
                loop {
                    read_tree(text, path.clone(), paths);
                    while text.next_if(|c| c.is_whitespace()).is_some() {}
                    match text.next() {
                        Some(',') => {
                            while text.next_if(|c| c.is_whitespace()).is_some() {}
                            if text.next_if_eq(&'}').is_some() {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let mut ident = String::new();
                while let Some(c) = text.next_if(|c| c.is_ascii_alphanumeric() || *c == '_') {
                    ident.push(c);
                }
                if ident != "self" {
                    path.push(ident);
                }
                if text.clone().take(2).collect::<String>() == "::" {
                    text.next();
                    text.next();
                    continue;
                }
                paths.push(path);
                return;
            }
            _ => {
                paths.push(path);
                return;
            }
        }
    }
}

/// Every module path `text` names through `crate::`, `super::` or `self::`, made absolute
/// from `module`, the module `text` is.
fn named_paths(module: &[String], text: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("::") {
        let head_start =
            text[..at].rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
        let head = &text[head_start..at];
        let before = text[..head_start].chars().next_back();
        if before == Some(':') || !["crate", "super", "self"].contains(&head) {
            continue;
        }
        let mut base = match head {
            "crate" => Vec::new(),
            _ => module.to_vec(),
        };
        let mut rest = &text[at + 2..];
        if head == "super" {
            base.pop();
            while let Some(after) = rest.strip_prefix("super::") {
                base.pop();
                rest = after;
            }
        }
        read_tree(&mut rest.chars().peekable(), base, &mut found);
    }
    found
}

/// The text of a source without its test modules (`#[cfg(test)] mod ...` to the end of the
/// file), which import their own module's parent as `super` without being part of the
/// import graph.
fn without_tests(text: &str) -> &str {
    let cut = text
        .match_indices("#[cfg(test)]\nmod ")
        .chain(text.match_indices("#[cfg(test)]\npub mod "))
        .map(|(at, _)| at)
        .min();
    &text[..cut.unwrap_or(text.len())]
}

/// The import arrows between files: for each file, the files whose items it names. A name
/// is resolved to the deepest module that is a file. Arrows from a module to its own
/// submodules are its inside, not imports, and are left out.
fn arrows(files: &[(PathBuf, String)]) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let modules: BTreeMap<Vec<String>, &PathBuf> =
        files.iter().filter_map(|(file, _)| Some((module_of(file)?, file))).collect();
    let mut graph = BTreeMap::new();
    for (file, text) in files {
        let Some(own) = module_of(file) else { continue };
        let targets: &mut BTreeSet<PathBuf> = graph.entry(file.clone()).or_default();
        for mut path in named_paths(&own, without_tests(text)) {
            while !path.is_empty() && !modules.contains_key(&path) {
                path.pop();
            }
            if path.is_empty() || path.starts_with(&own) {
                continue;
            }
            targets.insert(modules[&path].clone());
        }
    }
    graph
}

/// The circles in `graph`: each set of two or more files that reach one another.
fn circles(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    let reach = |from: &PathBuf| -> BTreeSet<PathBuf> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(file) = todo.pop() {
            for next in graph.get(&file).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&PathBuf, BTreeSet<PathBuf>> = graph.keys().map(|f| (f, reach(f))).collect();
    let mut found: Vec<Vec<PathBuf>> = Vec::new();
    for (file, reached) in &reachable {
        if !reached.contains(*file) || found.iter().any(|circle| circle.contains(file)) {
            continue;
        }
        let circle: Vec<PathBuf> = reached
            .iter()
            .filter(|other| reachable.get(other).is_some_and(|back| back.contains(*file)))
            .cloned()
            .collect();
        found.push(circle);
    }
    found
}

/// Each circle as its files and the arrows among them.
fn describe(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>, circles: &[Vec<PathBuf>]) -> String {
    let mut lines = Vec::new();
    for circle in circles {
        lines.push("circle:".to_string());
        for file in circle {
            for target in graph[file].iter().filter(|t| circle.contains(t)) {
                lines.push(format!("  {} -> {}", file.display(), target.display()));
            }
        }
    }
    lines.join("\n")
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let files = host_sources();
    let mut checked = 0;
    let mut upward = Vec::new();
    for (file, text) in &files {
        let Some(own) = layer_of(file) else { continue };
        let module = module_of(file).unwrap();
        for target in named_paths(&module, text).into_iter().filter_map(|path| path.first().cloned()) {
            checked += 1;
            let (own_rank, target_rank) = (rank(&own), rank(&target));
            assert!(own_rank.is_some(), "{} is in no layer: add its folder to LAYERS", file.display());
            if target_rank.is_some() && target_rank < own_rank {
                upward.push(format!("{} ({own}) uses crate::{target}", file.display()));
            }
        }
    }
    assert!(checked > 50, "only {checked} imports found: is the test reading the sources?");
    assert!(upward.is_empty(), "imports that point up the request flow:\n{}", upward.join("\n"));
}

#[test]
fn no_files_import_one_another_in_a_circle() {
    let files = host_sources();
    let graph = arrows(&files);
    let arrow_count: usize = graph.values().map(BTreeSet::len).sum();
    assert!(arrow_count > 100, "only {arrow_count} arrows found: is the test reading the sources?");
    let found = circles(&graph);
    assert!(found.is_empty(), "files that import one another:\n{}", describe(&graph, &found));
}

#[test]
fn no_source_file_is_too_long() {
    let files = host_sources();
    let long: Vec<String> = files
        .iter()
        .map(|(file, text)| (file, text.lines().count()))
        .filter(|(_, lines)| *lines > MAX_LINES)
        .map(|(file, lines)| format!("{}: {lines} lines", file.display()))
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: split them by job:\n{}", long.join("\n"));
}

#[test]
fn the_checker_reads_paths_and_finds_circles() {
    let module = |path: &str| path.split('/').map(String::from).collect::<Vec<_>>();
    assert_eq!(
        named_paths(&module("http/router"), "use crate::http::{server::Client, oip::{self, Endpoint as E}};"),
        [module("http/server/Client"), module("http/oip"), module("http/oip/Endpoint")]
    );
    assert_eq!(
        named_paths(&module("inference/backend/tract"), "use super::super::tensor::*; x::crate::y"),
        [module("inference/tensor")]
    );
    let files: Vec<(PathBuf, String)> = [
        ("node/a.rs", "use crate::node::b::Thing;"),
        ("node/b.rs", "pub fn f() { crate::node::c::g() }"),
        ("node/c.rs", "use super::a;\n#[cfg(test)]\nmod tests { use crate::node::b; }"),
        ("node/mod.rs", "pub mod a; pub use self::a::Thing;"),
        ("node/d.rs", "use crate::node::a;"),
    ]
    .into_iter()
    .map(|(file, text)| (PathBuf::from(file), text.to_string()))
    .collect();
    let graph = arrows(&files);
    assert!(graph[Path::new("node/mod.rs")].is_empty(), "a folder's own modules are its inside");
    let found = circles(&graph);
    assert_eq!(found, [["node/a.rs", "node/b.rs", "node/c.rs"].map(PathBuf::from).to_vec()]);
    assert!(describe(&graph, &found).contains("node/c.rs -> node/a.rs"));
    assert!(rank("inference") > rank("sandbox"));
}

#[test]
fn the_runtime_library_uses_none_of_the_binarys_crates() {
    // The command line and the load generator are the binary's (feature `cli`); a library
    // source naming them would break `default-features = false` users.
    let files = host_sources();
    let library: Vec<_> = files.iter().filter(|(file, _)| layer_of(file).is_some()).collect();
    assert!(library.len() > 20, "only {} library sources found", library.len());
    for (file, text) in library {
        for binary_only in ["edge_infer_bench", "clap::", "tracing_subscriber"] {
            assert!(!text.contains(binary_only), "{} uses {binary_only}", file.display());
        }
    }
}
