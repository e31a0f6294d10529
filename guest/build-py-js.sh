#!/usr/bin/env bash
# Builds the Python and JavaScript guests into components, with pinned tools:
#   componentize-py 0.25.1 (PyPI), in a virtual environment under ~/.cache/edge-infer-guest-tools
#   componentize-js 0.23.0 (npm), installed in guest/digits-js/node_modules as package-lock.json pins it
# Usage: guest/build-py-js.sh OUT_DIR   (writes OUT_DIR/digits-py.wasm and OUT_DIR/digits-js.wasm)
# A component newer than its sources is not rebuilt.
set -euo pipefail
out=$(realpath -m "${1:?usage: build-py-js.sh OUT_DIR}")
guest=$(cd "$(dirname "$0")" && pwd)
wit="$guest/../wit"
mkdir -p "$out"

# True if $1 is missing or older than any file under the other arguments.
stale() {
  local target=$1; shift
  [ ! -e "$target" ] || [ -n "$(find "$@" -type f -newer "$target" -not -path '*/node_modules/*' -print -quit)" ]
}

if stale "$out/digits-py.wasm" "$guest/digits-py" "$wit"; then
  tools="$HOME/.cache/edge-infer-guest-tools"
  [ -x "$tools/bin/componentize-py" ] || {
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check componentize-py==0.25.1
  }
  (cd "$guest/digits-py" && "$tools/bin/componentize-py" -d "$wit" -w edge-infer:guest/inference \
    componentize app -o "$out/digits-py.wasm")
fi

if stale "$out/digits-js.wasm" "$guest/digits-js" "$wit"; then
  (cd "$guest/digits-js" && npm install --no-audit --no-fund --loglevel=error && node build.mjs "$out/digits-js.wasm")
fi
