"""Classify the digits held-out split through edge-infer with the tritonclient[http] package.

A compatibility check with a client nobody here wrote: Triton's own Python HTTP client
speaks the Open Inference Protocol (KServe v2). It checks the server's health and the
model's metadata, then infers every image, in batches, once with binary tensor data (the
client's default) and once with JSON tensor data, and prints the labels as a JSON list.

Run: python tests/compat/tritonclient_digits.py HOST:PORT models/digits/test_split.json
"""

import json
import sys

import numpy as np
import tritonclient.http as http_client

BATCH = 40


def infer(client, images, binary):
    pixels = http_client.InferInput("pixels", list(images.shape), "FP32")
    pixels.set_data_from_numpy(images, binary_data=binary)
    wanted = http_client.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer("digits", inputs=[pixels], outputs=[wanted])
    return result.as_numpy("probabilities")


def main():
    url, split_path = sys.argv[1], sys.argv[2]
    client = http_client.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert client.is_model_ready("digits"), "digits not ready"
    metadata = client.get_model_metadata("digits")
    assert metadata["inputs"][0]["name"] == "pixels", metadata
    assert metadata["outputs"][0]["name"] == "probabilities", metadata
    index = client.get_model_repository_index()
    assert {"name": "digits", "version": "1", "state": "READY", "reason": ""} in index, index
    # Triton's model configuration: with batching, dims leave the batch axis out.
    config = client.get_model_config("digits")
    batch = [] if config["max_batch_size"] > 0 else [-1]
    assert config["input"] == [{"name": "pixels", "data_type": "TYPE_FP32", "dims": batch + [64]}], config
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": batch + [10]}], config
    assert ("dynamic_batching" in config) == (config["max_batch_size"] > 0), config
    assert config["instance_group"] == [{"name": "digits", "count": 2, "kind": "KIND_CPU"}], config

    images = np.array(json.load(open(split_path))["pixels"], dtype=np.float32)
    labels = []
    for start in range(0, len(images), BATCH):
        chunk = images[start:start + BATCH]
        binary = infer(client, chunk, binary=True)
        as_json = infer(client, chunk, binary=False)
        assert np.allclose(binary, as_json, atol=1e-6), "binary and JSON answers differ"
        labels.extend(int(label) for label in binary.argmax(axis=1))
    print(json.dumps(labels))


if __name__ == "__main__":
    main()
