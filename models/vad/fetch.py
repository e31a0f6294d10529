"""Fetch the Silero voice-activity model from PyPI and prepare it for tract.

Source: the `silero-vad` 6.2.3 wheel on PyPI (MIT), checked against a pinned sha256. From it
we take `silero_vad/data/silero_vad_openvino_16k.onnx` unchanged: the 16 kHz model without
`If` nodes, `input [1, 576]` (64 samples of context + 512 new ones) and the recurrent
`state [2, 1, 128]`. The other variants branch on their inputs' values or shapes (`If`),
which tract cannot type with a symbolic batch; this one has a fixed batch of 1, so edge-infer
runs it unbatched.

Outputs, beside this script:
  silero_vad_16k.onnx   the prepared model
  LICENSE               the package's license text

Run: python3 models/vad/fetch.py   (needs pip, onnx, numpy). Then `reference.py` makes the
test vectors.
"""

import hashlib
import pathlib
import subprocess
import sys
import tempfile
import zipfile

import onnx

HERE = pathlib.Path(__file__).resolve().parent
WHEEL = "silero_vad-6.2.3-py3-none-any.whl"
WHEEL_SHA256 = "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8"
MEMBER = "silero_vad/data/silero_vad_openvino_16k.onnx"
LICENSE_MEMBER = "silero_vad-6.2.3.dist-info/licenses/LICENSE"


def fetch_wheel(folder):
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "silero-vad==6.2.3", "-d", str(folder)],
        check=True,
    )
    wheel = pathlib.Path(folder) / WHEEL
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{WHEEL}: sha256 {digest}, expected {WHEEL_SHA256}")
    return wheel


def main():
    with tempfile.TemporaryDirectory() as folder:
        wheel = fetch_wheel(folder)
        with zipfile.ZipFile(wheel) as archive:
            model = archive.read(MEMBER)
            (HERE / "LICENSE").write_bytes(archive.read(LICENSE_MEMBER))
    onnx.checker.check_model(onnx.load_from_string(model))
    model_path = HERE / "silero_vad_16k.onnx"
    model_path.write_bytes(model)
    print(f"wrote {model_path} ({model_path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
