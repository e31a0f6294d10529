"""Fetch the ONNX Runtime 1.31.1 CPU library from PyPI, checked against a pinned sha256.

ONNX Runtime (MIT) runs all-MiniLM-L6-v2 faster than tract for one request alone on the
machines we measured; with it here, the bundled config names it (`server.onnxruntime_library`)
and `backend = "auto"` measures both engines per model at start-up and keeps the faster.

Source: the `onnxruntime` 1.31.1 wheel for CPython 3.12, manylinux_2_28, for this machine's
architecture (x86_64 or aarch64). The library inside does not depend on Python. From it we
take `onnxruntime/capi/libonnxruntime.so.1.31.1` unchanged, with `LICENSE` and
`ThirdPartyNotices.txt`. None of it is in git.

Run: python3 models/onnxruntime/fetch.py   (needs pip; models/minilm/fetch.py runs it too).
Skips what is already here and verified.
"""

import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile

HERE = pathlib.Path(__file__).resolve().parent
VERSION = "1.31.1"
LIBRARY = f"libonnxruntime.so.{VERSION}"
# Per machine architecture: the wheel, its sha256, and the sha256 of the library inside.
WHEELS = {
    "aarch64": (
        f"onnxruntime-{VERSION}-cp312-cp312-manylinux_2_28_aarch64.whl",
        "0b9a492176886992e0e875f06bc0367e333f5fff11711a2d642e18b02f3009cc",
        "8aa3b76b28c778a2b1dd660d34161adb1d508c9ccd04ff9dc80e26eca5df8467",
    ),
    "x86_64": (
        f"onnxruntime-{VERSION}-cp312-cp312-manylinux_2_28_x86_64.whl",
        "1f3dea47f2f0e5117c2404cea7d21fd253ae7836a3bf167a501cdfbb2600d536",
        "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3",
    ),
}
MEMBERS = {
    f"onnxruntime/capi/{LIBRARY}": LIBRARY,
    "onnxruntime/LICENSE": "LICENSE",
    "onnxruntime/ThirdPartyNotices.txt": "ThirdPartyNotices.txt",
}


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main():
    machine = platform.machine()
    if sys.platform != "linux" or machine not in WHEELS:
        print(f"no pinned ONNX Runtime wheel for {sys.platform}/{machine}: models run on tract")
        return
    wheel_name, wheel_sha256, library_sha256 = WHEELS[machine]
    library = HERE / LIBRARY
    if library.is_file() and sha256(library) == library_sha256:
        print(f"ONNX Runtime {VERSION} is here already")
        return
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--implementation", "cp", "--python-version", "3.12",
             "--platform", wheel_name.split("-")[-1].removesuffix(".whl"),
             f"onnxruntime=={VERSION}", "-d", folder],
            check=True,
        )
        wheel = pathlib.Path(folder) / wheel_name
        digest = sha256(wheel)
        if digest != wheel_sha256:
            sys.exit(f"{wheel_name}: sha256 {digest}, expected {wheel_sha256}")
        with zipfile.ZipFile(wheel) as archive:
            for member, name in MEMBERS.items():
                # Written beside, checked, then renamed: a server that has the library loaded,
                # or another run of this script (tests run it in parallel), never sees a
                # half-written file; each run stages under a name of its own.
                partial = pathlib.Path(folder) / name
                partial.write_bytes(archive.read(member))
                if name == LIBRARY and sha256(partial) != library_sha256:
                    sys.exit(f"{LIBRARY} from {wheel_name}: sha256 {sha256(partial)}, expected {library_sha256}")
                staged = HERE / f".{name}.{os.getpid()}.partial"
                shutil.move(partial, staged)
                os.replace(staged, HERE / name)
    print(f"wrote {library} ({library.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
