#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, in one command:
#   benches/gpu.sh
# 1. the backends: the GPU backend against tract and ONNX Runtime on the CPU, outputs and
#    throughput at batch 1, 8 and 64 (`cargo bench --bench backends`);
# 2. batching on real text: `/embed` on the GPU with texts of mixed lengths, batching
#    off/on/auto at 1, 16, 64 and 128 clients (`cargo bench --bench sequences`).
# It installs onnxruntime-gpu with the CUDA and cuDNN libraries it is built for (its `cuda`
# and `cudnn` extras, from PyPI) into a virtual environment (~/.cache/edge-infer-gpu-venv)
# and points edge-infer at them. Without a usable GPU the GPU rows of 1. are missing and the
# reason is printed, and 2. runs on tract. On a machine without cargo, run the compiled
# benchmarks instead with EDGE_INFER_BIN and EDGE_INFER_GUEST_DIR pointing at the binary and
# the guests (see ../shared/gpu/pack.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$HOME/.cache/edge-infer-gpu-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "onnxruntime-gpu[cuda,cudnn]==1.31.1"
site=$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
export ORT_DYLIB_PATH=$(ls "$site"/onnxruntime/capi/libonnxruntime.so.*)
export LD_LIBRARY_PATH="$(find "$site/nvidia" -maxdepth 2 -name lib -type d | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}:$site/onnxruntime/capi"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi: no GPU visible"
python3 models/minilm/fetch.py
cargo bench --bench backends
EDGE_INFER_BENCH_CLIENTS=1,16,64,128 EDGE_INFER_BENCH_BACKEND=auto cargo bench --bench sequences
