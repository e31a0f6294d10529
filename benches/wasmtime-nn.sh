#!/usr/bin/env bash
# Builds the `wasmtime` CLI 50.0.1 with `wasmtime-wasi-nn`'s ONNX backend, the build that
# `wasmtime serve -S nn` needs to run our guests' models (the released binaries have no ONNX
# backend: they answer `unsupported backend: onnx`). Used by `cargo bench --bench suite`, not
# by CI: it is a long build (~15 minutes on 2 cores), done once and kept.
#
# - Source: the `wasmtime-cli` 50.0.1 crate from crates.io, built with its own Cargo.lock
#   (cargo adds only what the ONNX feature needs: `ort` 2.0.0-rc.10, the version
#   wasmtime-wasi-nn was written for).
# - Features: `run` and `serve` with `wasi-nn` and its `onnx` backend, nothing else of the CLI's
#   defaults (no Winch, GC, debugger or Wizer), which halves the build.
# - ONNX Runtime: the 1.31.1 library models/onnxruntime/fetch.py fetches (pinned checksum),
#   linked dynamically; `ort` rc.10 asks it for API version 22, which it serves.
#
# Usage: benches/wasmtime-nn.sh   (prints the binary's path on its last line)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
version=50.0.1
home="$HOME/.cache/edge-infer-peers/wasmtime-nn-$version"
binary="$home/bin/wasmtime"
# The library under the names the linker and the loader look for (run the binary with
# LD_LIBRARY_PATH="$home/ort").
python3 "$repo/models/onnxruntime/fetch.py" >&2
library=$(ls "$repo"/models/onnxruntime/libonnxruntime.so.* | head -1)
mkdir -p "$home/ort"
ln -sf "$library" "$home/ort/libonnxruntime.so"
ln -sf "$library" "$home/ort/libonnxruntime.so.1"
if [ ! -x "$binary" ]; then
  # The crate's source, unpacked by cargo from crates.io into a folder of our own.
  source="$home/src"
  if [ ! -f "$source/Cargo.toml" ]; then
    mkdir -p "$home/fetch"
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nwasmtime-cli = "=%s"\n' \
      "$version" > "$home/fetch/Cargo.toml"
    mkdir -p "$home/fetch/src" && : > "$home/fetch/src/lib.rs"
    (cd "$repo" && cargo fetch --quiet --manifest-path "$home/fetch/Cargo.toml")
    crate=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/wasmtime-cli-$version | head -1)
    cp -r "$crate" "$source"
    # wasmtime-wasi-nn asks for `ort` ^2.0.0-rc.10, which newer release candidates also
    # match; they changed its API. An optional dependency of the crate itself holds it at
    # rc.10.
    printf '\n[dependencies.ort-rc10]\npackage = "ort"\nversion = "=2.0.0-rc.10"\ndefault-features = false\noptional = true\n' \
      >> "$source/Cargo.toml"
  fi
  # From the repository, so that its rust-toolchain.toml picks the compiler (wasmtime 50
  # needs Rust 1.97).
  (cd "$repo" &&
    ORT_LIB_LOCATION="$home/ort" ORT_PREFER_DYNAMIC_LINK=1 \
      cargo build --release --manifest-path "$source/Cargo.toml" --target-dir "$home/target" --no-default-features \
      --features run,serve,wasi-nn,wasmtime-wasi-nn/onnx,component-model-async,cranelift,pooling-allocator,parallel-compilation >&2)
  mkdir -p "$home/bin"
  cp "$home/target/release/wasmtime" "$binary"
fi
echo "$binary"
