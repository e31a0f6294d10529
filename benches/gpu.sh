#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: compare the GPU backend with tract and ONNX Runtime on the
# CPU, outputs and throughput at batch 1, 8 and 64, in one command:
#   benches/gpu.sh
# It installs onnxruntime-gpu with the CUDA and cuDNN libraries it is built for (its `cuda`
# and `cudnn` extras, from PyPI) into a virtual environment (~/.cache/edge-infer-gpu-venv),
# points edge-infer at them, and runs
# `cargo bench --bench backends`. Without a usable GPU the GPU rows are missing and the
# reason is printed.
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
