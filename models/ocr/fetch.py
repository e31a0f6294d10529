"""Fetch PP-OCRv4's three OCR models from PyPI, checked against pinned sha256s.

Source: the `rapidocr-onnxruntime` 1.4.4 wheel (Apache-2.0, RapidAI; PaddleOCR's models
converted to ONNX). From its `rapidocr_onnxruntime/models/` folder:

- `ch_PP-OCRv4_det_infer.onnx` -> `det.onnx`: text detection (DB), image -> text probability map;
- `ch_ppocr_mobile_v2.0_cls_infer.onnx` -> `cls.onnx`: text direction (0 or 180 degrees);
- `ch_PP-OCRv4_rec_infer.onnx` -> `rec.onnx`: text recognition (CTC over 6,625 classes).

The recognizer's character list lives in its ONNX metadata (`character`, one per line);
this script writes it to `characters.txt`, committed, so a guest can compile it in. The
models (16 MB) are not in git: run this script (the tests and `.ci/run` do).

Run: python3 models/ocr/fetch.py   (needs pip). Skips what is already here and verified.
"""

import hashlib
import os
import pathlib
import sys
import tempfile
import zipfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from wheels import download, sha256  # noqa: E402
REQUIREMENT = "rapidocr-onnxruntime==1.4.4"
WHEEL = ("rapidocr_onnxruntime-1.4.4-py3-none-any.whl", "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf")
# Member of the wheel -> (file here, its sha256).
MODELS = {
    "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": (
        "det.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    ),
    "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx": (
        "cls.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    ),
    "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx": (
        "rec.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
    ),
}
CHARACTERS = "characters.txt"


def present():
    return all((HERE / name).is_file() and sha256(HERE / name) == digest for name, digest in MODELS.values())


def varint(data, at):
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def fields(data):
    """The top-level fields of a protobuf message: (number, wire type, value)."""
    at = 0
    while at < len(data):
        key, at = varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = varint(data, at)
        elif wire == 2:
            length, at = varint(data, at)
            value, at = data[at : at + length], at + length
        elif wire == 5:
            value, at = data[at : at + 4], at + 4
        elif wire == 1:
            value, at = data[at : at + 8], at + 8
        else:
            raise ValueError(f"protobuf wire type {wire} is not expected in an ONNX model")
        yield number, wire, value


def metadata(model):
    """ModelProto.metadata_props (field 14): StringStringEntryProto {key = 1, value = 2}."""
    entries = {}
    for number, _, value in fields(model):
        if number == 14:
            entry = {n: v.decode() for n, _, v in fields(value)}
            entries[entry.get(1, "")] = entry.get(2, "")
    return entries


def main():
    if present() and (HERE / CHARACTERS).is_file():
        print("the OCR models are here already")
        return
    with tempfile.TemporaryDirectory() as folder:
        wheel = download(REQUIREMENT, *WHEEL, folder)
        with zipfile.ZipFile(wheel) as archive:
            for member, (name, digest) in MODELS.items():
                data = archive.read(member)
                if hashlib.sha256(data).hexdigest() != digest:
                    sys.exit(f"{member}: sha256 {hashlib.sha256(data).hexdigest()}, expected {digest}")
                # Written whole under a name of its own run, then renamed: an interrupted or
                # concurrent fetch leaves nothing half-written.
                partial = HERE / f".{name}.{os.getpid()}.partial"
                partial.write_bytes(data)
                partial.replace(HERE / name)
    characters = metadata((HERE / "rec.onnx").read_bytes())["character"]
    (HERE / CHARACTERS).write_text(characters if characters.endswith("\n") else characters + "\n", encoding="utf-8")
    print(f"fetched the OCR models ({len(characters.splitlines())} characters)")


if __name__ == "__main__":
    main()
