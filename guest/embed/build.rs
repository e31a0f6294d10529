//! Compiles the WordPiece vocabulary (models/minilm/vocab.txt) into a sorted static table, so
//! a fresh instance per request looks tokens up without building anything first.

use std::path::Path;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let vocab = Path::new(&manifest_dir).join("../../models/minilm/vocab.txt");
    println!("cargo:rerun-if-changed={}", vocab.display());
    let text = std::fs::read_to_string(&vocab).expect("models/minilm/vocab.txt (run models/minilm/fetch.py)");
    let mut entries: Vec<(&str, usize)> = text.lines().enumerate().map(|(id, token)| (token, id)).collect();
    entries.sort();
    let rows: String = entries.iter().map(|(token, id)| format!("    ({token:?}, {id}),\n")).collect();
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("vocab.rs");
    std::fs::write(
        out,
        format!(
            "/// Tokens and their ids, sorted by token.\npub static VOCAB: [(&str, u32); {}] = [\n{rows}];\n",
            entries.len()
        ),
    )
    .unwrap();
}
