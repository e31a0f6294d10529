"""Make `slow.onnx`, a test fixture: a model whose run time grows with the rows it is given.

Input `x` float32 [batch, 256] → 60 × (MatMul by one shared 256×256 weight, Tanh) → output
`y` float32 [batch, 256]. About 4 M multiply-adds per row, so a few hundred rows keep an
executor busy for a while: the scheduler tests use it to hold a queue in place. The weight
is shared by every layer, so the file stays small. Seeded: the file is reproducible.

Run: python3 tests/models/make_slow.py   (needs onnx, numpy)
"""

import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 256
LAYERS = 60


def main():
    rng = np.random.default_rng(11)
    weight = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    nodes, previous = [], "x"
    for layer in range(LAYERS):
        output = "y" if layer == LAYERS - 1 else f"t{layer}"
        nodes.append(helper.make_node("MatMul", [previous, "w"], [f"m{layer}"]))
        nodes.append(helper.make_node("Tanh", [f"m{layer}"], [output]))
        previous = output
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", WIDTH])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edge-infer")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, pathlib.Path(__file__).resolve().parent / "slow.onnx")


if __name__ == "__main__":
    main()
