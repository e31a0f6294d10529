"""Load, use and unload a model at run time through edge-infer's model repository API with
Triton's own Python client, tritonclient[http].

It loads a second copy of the digits model, "digits-copy", with a Triton model
configuration and the ONNX file (as `load_model(name, config=..., files=...)` sends them),
checks its configuration, readiness and place in the repository index, infers with it and
compares the labels with the served "digits" model, then unloads it (it stays in the
repository, unavailable), loads it again by name alone, and unloads it. Mutating calls without
the admin token must be refused (401); a broken model file and unloading a model that a
route uses must be refused with the reason. Prints "ok".

Run: python tests/compat/tritonclient_repository.py HOST:PORT TOKEN models/digits/digits.onnx
"""

import json
import sys

import numpy as np
import tritonclient.http as http_client
from tritonclient.utils import InferenceServerException

COPY = "digits-copy"


def refused(call, expected_status, expected_words):
    try:
        call()
    except InferenceServerException as error:
        assert str(error.status()) == str(expected_status), (error.status(), str(error))
        assert expected_words in str(error), str(error)
        return
    raise AssertionError(f"expected a {expected_status} refusal")


def labels(client, model, images):
    pixels = http_client.InferInput("pixels", list(images.shape), "FP32")
    pixels.set_data_from_numpy(images)
    result = client.infer(model, inputs=[pixels])
    return result.as_numpy("probabilities").argmax(axis=1).tolist()


def main():
    url, token, model_path = sys.argv[1], sys.argv[2], sys.argv[3]
    admin = {"Authorization": f"Bearer {token}"}
    client = http_client.InferenceServerClient(url=url)
    with open(model_path, "rb") as f:
        onnx = f.read()
    config = json.dumps({
        "name": COPY,
        "max_batch_size": 8,
        "dynamic_batching": {"max_queue_delay_microseconds": 300},
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    })
    files = {"file:1/model.onnx": onnx}

    refused(lambda: client.load_model(COPY, config=config, files=files), 401, "admin token")
    refused(lambda: client.load_model(COPY, headers={"Authorization": "Bearer wrong"}, config=config, files=files),
            401, "admin token")
    assert not client.is_model_ready(COPY), "a refused load loads nothing"

    client.load_model(COPY, headers=admin, config=config, files=files)
    assert client.is_model_ready(COPY)
    loaded = client.get_model_config(COPY)
    assert loaded["max_batch_size"] == 8, loaded
    assert loaded["dynamic_batching"]["max_queue_delay_microseconds"] == 300, loaded
    assert loaded["instance_group"][0]["count"] == 1, loaded
    assert loaded["input"][0]["name"] == "pixels" and loaded["input"][0]["dims"] == [64], loaded
    index = client.get_model_repository_index()
    assert {"name": COPY, "version": "1", "state": "READY", "reason": ""} in index, index

    images = np.random.default_rng(7).integers(0, 17, size=(8, 64)).astype(np.float32)
    assert labels(client, COPY, images) == labels(client, "digits", images)

    refused(lambda: client.load_model("broken", headers=admin, config=config,
                                      files={"file:1/model.onnx": b"not an onnx file"}), 422, "broken")
    assert not client.is_model_ready("broken")
    refused(lambda: client.unload_model("digits", headers=admin), 409, "used by")
    assert client.is_model_ready("digits")

    refused(lambda: client.unload_model(COPY), 401, "admin token")
    assert client.is_model_ready(COPY)
    client.unload_model(COPY, headers=admin)
    assert not client.is_model_ready(COPY)
    # Triton's unload: the model stays in the repository, unavailable, and a load by name
    # brings it back as it was.
    index = client.get_model_repository_index()
    assert {"name": COPY, "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"} in index, index
    refused(lambda: client.load_model(COPY), 401, "admin token")
    client.load_model(COPY, headers=admin)
    assert client.is_model_ready(COPY)
    assert client.get_model_config(COPY)["max_batch_size"] == 8
    assert labels(client, COPY, images) == labels(client, "digits", images)
    client.unload_model(COPY, headers=admin)
    assert not client.is_model_ready(COPY)
    print("ok")


if __name__ == "__main__":
    main()
