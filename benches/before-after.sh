#!/usr/bin/env bash
# Before and after a change, in one run on one machine: two builds of edge-infer serve the
# same guests and the digits model at the same time, and `edge-infer bench` (of the new
# build) runs each cell on each in turn, for three rounds, so a slow spell of the machine
# touches both alike. The new build also serves the wasi:http 0.3 testing guest at /p3, whose
# /p3/served answers what /hello answers: the price of a 0.3 request beside a 0.2 one. Last,
# each node's mean instance creation time.
# Usage: benches/before-after.sh OLD_BINARY [NEW_BINARY]   (after a release build)
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$HOME/.cache/edge-infer-target}
W=$target/wasm-guests/wasm32-wasip2/release
OLD=${1:?usage: before-after.sh OLD_BINARY [NEW_BINARY]}
NEW=${2:-$target/release/edge-infer}
D=$(mktemp -d)
base="[models.digits]
file = \"$repo/models/digits/digits.onnx\"

[[routes]]
path = \"/digits\"
component = \"$W/digits.wasm\"
models = [\"digits\"]

[[routes]]
path = \"/hello\"
component = \"$W/hello.wasm\"
"
printf '%s' "$base" > $D/old.toml
printf '%s\n[[routes]]\npath = "/p3"\ncomponent = "%s"\n' "$base" "$W/testing_p3.wasm" > $D/new.toml
RUST_LOG=warn $OLD serve --config $D/old.toml --listen 127.0.0.1:18201 --admin-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 > $D/old.log 2>&1 &
o=$!
RUST_LOG=warn $NEW serve --config $D/new.toml --listen 127.0.0.1:18202 --admin-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 > $D/new.log 2>&1 &
n=$!
# Ports 18201 (old) and 18202 (new) must be free; each node has a minute to start.
for p in 18201 18202; do
  for _ in $(seq 300); do curl -sf localhost:$p/hello >/dev/null && break; sleep 0.2; done
  curl -sf localhost:$p/hello >/dev/null || { echo "the node on port $p did not start: $D" >&2; kill $o $n; exit 1; }
done
bench() { $NEW bench "$@" --duration 3 --warm-up 1 --format csv 2>/dev/null | tail -n +2; }
for round in 1 2 3; do
  for cell in "hello 1" "hello 64" "digits 1" "digits 16"; do
    set -- $cell
    for side in old:18201 new:18202; do
      echo "round=$round side=${side%%:*} route=/$1 clients=$2 $(bench http://127.0.0.1:${side#*:}/$1 --example $1 --concurrency $2)"
    done
  done
  for c in 1 64; do
    echo "round=$round side=new route=/p3/served clients=$c $(bench http://127.0.0.1:18202/p3/served --concurrency $c)"
  done
done
for side in old:18201 new:18202; do
  curl -s localhost:${side#*:}/metrics | grep '^edge_infer_instance_creation_duration_seconds_\(sum\|count\){route="/hello"}' | sed "s/^/${side%%:*} /"
done
curl -s localhost:18202/metrics | grep '^edge_infer_instance_creation_duration_seconds_\(sum\|count\){route="/p3"}' | sed "s/^/new /"
kill $o $n
rm -rf "$D"
