"""Train the bundled digit classifier and export it to ONNX.

Data: scikit-learn's bundled `digits` set (1,797 8x8 images, pixel values 0..16, 10 classes).
It ships inside the scikit-learn package, so nothing is downloaded.

Model: a multi-layer perceptron (64 -> 64 ReLU -> 10 softmax) trained by scikit-learn. The
ONNX graph is written by hand with `onnx.helper` so that
  * the input takes raw pixel values 0..16 (the 1/16 scaling is the graph's first node),
  * the batch dimension is symbolic ("batch"), so the host can batch requests later,
  * the output is the softmax probabilities (the guest does the argmax).

Outputs, beside this script:
  digits.onnx       the model (opset 13)
  test_split.json   the held-out test split: {"pixels": [[64 ints]...], "labels": [...]}
  PROVENANCE.md     is written by hand; re-check its accuracy figure after re-training.

Run: python3 models/digits/train.py   (needs scikit-learn, onnx, numpy; onnxruntime optional
for a cross-check). Training is deterministic (fixed seeds).
"""

import json
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = pathlib.Path(__file__).resolve().parent
SEED = 7
HIDDEN = 64


def train():
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.2, random_state=SEED, stratify=digits.target
    )
    clf = MLPClassifier(
        hidden_layer_sizes=(HIDDEN,), activation="relu", max_iter=600, random_state=SEED
    )
    clf.fit(x_train / 16.0, y_train)
    accuracy = clf.score(x_test / 16.0, y_test)
    return clf, x_test.astype(int), y_test.astype(int), accuracy


def to_onnx(clf):
    w1, w2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    initializers = [
        numpy_helper.from_array(np.array([1.0 / 16.0], dtype=np.float32), "scale"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    nodes = [
        helper.make_node("Mul", ["pixels", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h1b"]),
        helper.make_node("Relu", ["h1b"], ["hidden"]),
        helper.make_node("MatMul", ["hidden", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits-mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edge-infer"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def cross_check(model_path, clf, x_test):
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not installed: skipping the cross-check")
        return
    session = ort.InferenceSession(str(model_path))
    (probs,) = session.run(None, {"pixels": x_test.astype(np.float32)})
    expected = clf.predict_proba(x_test / 16.0)
    assert np.allclose(probs, expected, atol=1e-5), "ONNX graph disagrees with scikit-learn"
    print("onnxruntime agrees with scikit-learn on the test split")


def main():
    clf, x_test, y_test, accuracy = train()
    model = to_onnx(clf)
    model_path = HERE / "digits.onnx"
    onnx.save(model, model_path)
    split = {"pixels": x_test.tolist(), "labels": y_test.tolist()}
    (HERE / "test_split.json").write_text(json.dumps(split, separators=(",", ":")) + "\n")
    cross_check(model_path, clf, x_test)
    print(f"held-out accuracy: {accuracy:.4f} on {len(y_test)} images")


if __name__ == "__main__":
    main()
