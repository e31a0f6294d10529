#!/usr/bin/env bash
# Builds the Python and JavaScript guests into components, with pinned tools:
#   componentize-py 0.25.1 (PyPI), in a virtual environment under ~/.cache/edge-infer-guest-tools
#   componentize-js 0.23.0 and rolldown 1.3.2 (npm), installed in guest/sdk-js/node_modules as
#   guest/sdk-js/package-lock.json pins them
# Each guest is built as a user's guest would be: with its language's helper module,
# guest/sdk-py/edge_infer_guest.py or guest/sdk-js/edge-infer-guest.js (bundled by
# guest/sdk-js/build.mjs).
# Usage: guest/build-py-js.sh OUT_DIR   (writes OUT_DIR/digits-py.wasm and OUT_DIR/digits-js.wasm)
# A component newer than its sources (the guest, its helper module, wit/) is not rebuilt.
set -euo pipefail
out=$(realpath -m "${1:?usage: build-py-js.sh OUT_DIR}")
guest=$(cd "$(dirname "$0")" && pwd)
wit="$guest/../wit"
mkdir -p "$out"

# True if $1 is missing or older than any file under the other arguments.
stale() {
  local target=$1; shift
  [ ! -e "$target" ] || [ -n "$(find "$@" -type f -newer "$target" \
    -not -path '*/node_modules/*' -not -path '*/__pycache__/*' -print -quit)" ]
}

if stale "$out/digits-py.wasm" "$guest/digits-py" "$guest/sdk-py" "$wit"; then
  tools="$HOME/.cache/edge-infer-guest-tools"
  [ -x "$tools/bin/componentize-py" ] || {
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check componentize-py==0.25.1
  }
  (cd "$guest/digits-py" && "$tools/bin/componentize-py" -d "$wit" -w edge-infer:guest/inference \
    componentize -p . -p "$guest/sdk-py" app -o "$out/digits-py.wasm")
fi

if stale "$out/digits-js.wasm" "$guest/digits-js" "$guest/sdk-js" "$wit"; then
  # Install what the lock file pins, unless node_modules is newer than it. (`npm install`, not
  # `npm ci`: the lock lacks other platforms' optional native packages, which `npm ci` refuses.)
  if [ "$guest/sdk-js/package-lock.json" -nt "$guest/sdk-js/node_modules/.package-lock.json" ]; then
    (cd "$guest/sdk-js" && npm install --no-audit --no-fund --loglevel=error)
  fi
  (cd "$guest/digits-js" && node "$guest/sdk-js/build.mjs" digits.js "$out/digits-js.wasm")
fi
