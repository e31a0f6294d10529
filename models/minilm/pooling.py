"""Write `pooling.onnx`: sentence-transformers' mean pooling and L2 normalisation, as a model.

The second step of the `sentence-embedding` ensemble (after all-MiniLM-L6-v2): the token
embeddings are averaged over the tokens the attention mask marks (padding left out), and
the average is scaled to unit length, as the `embed` guest does in its own code. It has no
weights; the graph is spelt out with `export_float.py`'s hand-written protobuf.

Inputs: `token_embeddings` float32 [batch, sequence, 384], `attention_mask` int64
[batch, sequence] -> `sentence_embedding` float32 [batch, 384].

Run: python3 models/minilm/pooling.py   (writes models/minilm/pooling.onnx; standard library only)
"""

import pathlib

from export_float import FLOAT, HIDDEN, INT64, Graph, float_scalar, int64_tensor, value_info

HERE = pathlib.Path(__file__).resolve().parent


def main():
    g = Graph()
    mask = g.node("Cast", ["attention_mask"], to=FLOAT)
    mask = g.node("Unsqueeze", [mask, g.constant(int64_tensor("axis_2", [2]), "axis_2")])
    tokens_axis = g.constant(int64_tensor("axis_1", [1]), "axis_1")
    summed = g.node("ReduceSum", [g.node("Mul", ["token_embeddings", mask]), tokens_axis], keepdims=0)
    counted = g.node("ReduceSum", [mask, tokens_axis], keepdims=0)
    counted = g.node("Max", [counted, g.constant(float_scalar("least_count", 1e-9), "least_count")])
    mean = g.node("Div", [summed, counted])
    length = g.node("Sqrt", [g.node("ReduceSum", [g.node("Mul", [mean, mean]), tokens_axis], keepdims=1)])
    length = g.node("Max", [length, g.constant(float_scalar("least_length", 1e-12), "least_length")])
    g.node("Div", [mean, length], output_name="sentence_embedding")
    inputs = [
        value_info("token_embeddings", FLOAT, ["batch", "sequence", HIDDEN]),
        value_info("attention_mask", INT64, ["batch", "sequence"]),
    ]
    outputs = [value_info("sentence_embedding", FLOAT, ["batch", HIDDEN])]
    model = g.model(inputs, outputs, name="mean-pooling", producer="edge-infer models/minilm/pooling.py")
    (HERE / "pooling.onnx").write_bytes(model)
    print(f"wrote pooling.onnx ({len(model)} bytes)")


if __name__ == "__main__":
    main()
