#!/usr/bin/env bash
# Do `edge-infer bench`'s percentiles agree with an independent load generator? Runs both
# with the same parameters against the same server, alternately (3 rounds each, the median
# counts), and prints p50/p90/p99 side by side with the relative difference.
#   benches/agreement.sh [CLIENTS] [SECONDS]      (default 16 clients, 5 s)
# Needs the release build and `oha` (cargo install oha --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-16}
seconds=${2:-5}
command -v oha > /dev/null || { echo "oha is not installed: cargo install oha --locked" >&2; exit 1; }
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/edge-infer"
port=18282
"$bin" serve --listen "127.0.0.1:$port" --admin-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 > /dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
until curl -sf "127.0.0.1:$port/v2/health/ready" > /dev/null; do sleep 0.2; done
url="http://127.0.0.1:$port/digits"
body=$(mktemp)
python3 - "$body" <<'PY'
import json, sys
pixels = [0,0,3,11,7,1,0,0,0,0,10,15,14,14,0,0,0,2,16,10,1,12,4,0,0,2,16,3,0,4,8,0,0,5,12,0,0,6,8,0,0,1,12,0,0,11,9,0,0,0,15,9,14,15,1,0,0,0,4,15,15,4,0,0]
json.dump({"pixels": pixels}, open(sys.argv[1], "w"))
PY
ours=(); theirs=()
for round in 1 2 3; do
  ours+=("$("$bin" bench "$url" --body "$body" --content-type application/json --concurrency "$clients" \
    --duration "$seconds" --warm-up 0 --format json)")
  theirs+=("$(oha "$url" -m POST -H 'content-type: application/json' -D "$body" -c "$clients" -z "${seconds}s" \
    --no-tui --output-format json)")
done
python3 - "$clients" "$seconds" "${ours[@]}" "${theirs[@]}" <<'PY'
import json, statistics, sys
clients, seconds, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
ours = [json.loads(r)[0] for r in runs[:3]]
theirs = [json.loads(r) for r in runs[3:]]
print(f"POST /digits, {clients} clients, {seconds} s, median of 3 alternating rounds")
print(f"{'':10} {'edge-infer bench':>17} {'oha':>10} {'difference':>11}")
rate = statistics.median(r["req_per_s"] for r in ours), statistics.median(t["summary"]["requestsPerSec"] for t in theirs)
print(f"{'req/s':10} {rate[0]:>17.0f} {rate[1]:>10.0f} {100 * (rate[0] / rate[1] - 1):>+10.1f}%")
for name, key in [("p50", "p50"), ("p90", "p90"), ("p99", "p99")]:
    a = statistics.median(r["latency_ms"][name] for r in ours)
    b = statistics.median(t["latencyPercentiles"][key] * 1000 for t in theirs)
    print(f"{name + ' ms':10} {a:>17.3f} {b:>10.3f} {100 * (a / b - 1):>+10.1f}%")
PY
