"""Read a GGUF file (llama.cpp's model format) with the standard library and numpy: its
metadata, and its tensors dequantized to float32 (the F32, Q8_0 and Q4_1 types the
SmolLM2-135M-Instruct Q4_1 file uses), exactly as gguf-py and transformers dequantize them.

Q and K projections come back in Hugging Face's layout: llama.cpp's converter permutes their
rows for its interleaved rotary embedding, and `unpermute` undoes it.
"""

import struct

import numpy as np

# GGUF metadata value types.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# ggml tensor types, and their blocks: (elements, bytes).
F32, Q4_1, Q8_0 = 0, 3, 8
_BLOCKS = {Q4_1: (32, 20), Q8_0: (32, 34)}


class _Reader:
    def __init__(self, data):
        self.data = data
        self.at = 0

    def take(self, fmt):
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string(self):
        length = self.take("Q")
        text = bytes(self.data[self.at : self.at + length]).decode("utf-8")
        self.at += length
        return text

    def value(self, kind):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.take("I"), self.take("Q")
            return [self.value(item_kind) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {kind}")


def read(path):
    """Returns (metadata dict, {name: (ggml type, dims innermost first, raw bytes)})."""
    data = memoryview(open(path, "rb").read())
    reader = _Reader(data)
    magic, version = reader.take("4s"), reader.take("I")
    if magic != b"GGUF" or version != 3:
        raise ValueError(f"{path}: not a GGUF v3 file")
    tensor_count, kv_count = reader.take("Q"), reader.take("Q")
    metadata = {}
    for _ in range(kv_count):
        name = reader.string()
        metadata[name] = reader.value(reader.take("I"))
    infos = []
    for _ in range(tensor_count):
        name = reader.string()
        dims = [reader.take("Q") for _ in range(reader.take("I"))]
        infos.append((name, dims, reader.take("I"), reader.take("Q")))
    alignment = metadata.get("general.alignment", 32)
    start = (reader.at + alignment - 1) // alignment * alignment
    tensors = {}
    for name, dims, kind, offset in infos:
        count = int(np.prod(dims))
        if kind == F32:
            size = count * 4
        else:
            elements, block_bytes = _BLOCKS[kind]
            size = count // elements * block_bytes
        tensors[name] = (kind, dims, bytes(data[start + offset : start + offset + size]))
    return metadata, tensors


def dequantize(kind, dims, raw):
    """A tensor as float32, shaped outermost first (rows x columns for a matrix)."""
    shape = tuple(reversed(dims))
    if kind == F32:
        return np.frombuffer(raw, dtype=np.float32).reshape(shape).copy()
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _BLOCKS[kind][1])
    if kind == Q8_0:
        scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        quants = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
        return (scale * quants).reshape(shape)
    if kind == Q4_1:
        scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        low = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        packed = blocks[:, 4:]
        quants = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)
        return (scale * quants + low).reshape(shape)
    raise ValueError(f"ggml type {kind} is not supported")


def unpermute(weight, heads):
    """Undoes llama.cpp's row permutation of a Q or K projection ([heads * head_dim, in])."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
