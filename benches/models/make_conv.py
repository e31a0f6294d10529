"""Make `conv.onnx`, a benchmark fixture: a small convolutional network on 32×32 images.

Input `image` float32 [batch, 3, 32, 32] → 3 × (Conv 3×3 with 32 channels, padding 1, Relu)
→ global average pool → `features` float32 [batch, 32]. Seeded random weights: only its
speed matters. It is the kind of model tract runs no faster per item in batches, which is
what the batching benchmark needs to show that the `auto` policy does no harm.

Run: python3 benches/models/make_conv.py   (needs onnx, numpy)
"""

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS = 32


def main():
    rng = np.random.default_rng(5)
    nodes, initializers, previous, in_channels = [], [], "image", 3
    for layer in range(3):
        weight = (rng.standard_normal((CHANNELS, in_channels, 3, 3)) * 0.1).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"w{layer}"))
        nodes.append(helper.make_node("Conv", [previous, f"w{layer}"], [f"c{layer}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{layer}"], [f"r{layer}"]))
        previous, in_channels = f"r{layer}", CHANNELS
    nodes.append(helper.make_node("GlobalAveragePool", [previous], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"]))
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", CHANNELS])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edge-infer")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, pathlib.Path(__file__).resolve().parent / "conv.onnx")


if __name__ == "__main__":
    main()
