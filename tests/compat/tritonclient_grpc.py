"""Classify the digits held-out split through edge-infer's gRPC endpoint with Triton's own
client, tritonclient[grpc], and check the protocol's other calls on the way.

It checks liveness, readiness, server and model metadata, the model configuration and the
repository index; then infers every image in batches three ways: with the client's raw
tensor contents, with typed contents (`fp32_contents`, through the client's generated stub),
and over one bidirectional stream (`ModelStreamInfer`). The three must agree; it prints the
labels as a JSON list. With the admin token and the model file, it also loads a copy of the
model through the repository API (refused without the token), and unloads it.

Run: python tests/compat/tritonclient_grpc.py HOST:PORT models/digits/test_split.json TOKEN MODEL.onnx
"""

import json
import queue
import sys

import grpc
import numpy as np
import tritonclient.grpc as grpc_client
from tritonclient.grpc import service_pb2, service_pb2_grpc

BATCH = 40


def raw_infer(client, images):
    pixels = grpc_client.InferInput("pixels", list(images.shape), "FP32")
    pixels.set_data_from_numpy(images)
    return client.infer("digits", inputs=[pixels]).as_numpy("probabilities")


def typed_infer(stub, images):
    request = service_pb2.ModelInferRequest(model_name="digits", id="typed")
    tensor = request.inputs.add(name="pixels", datatype="FP32", shape=list(images.shape))
    tensor.contents.fp32_contents.extend(images.flatten().tolist())
    response = stub.ModelInfer(request)
    assert response.id == "typed", response.id
    output = response.outputs[0]
    assert output.name == "probabilities" and list(output.shape) == [len(images), 10], output
    return np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(len(images), 10)


def streamed_infer(client, batches):
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for index, images in enumerate(batches):
        pixels = grpc_client.InferInput("pixels", list(images.shape), "FP32")
        pixels.set_data_from_numpy(images)
        client.async_stream_infer("digits", inputs=[pixels], request_id=str(index))
    results = {}
    for _ in batches:
        result, error = answers.get(timeout=60)
        assert error is None, error
        results[int(result.get_response().id)] = result.as_numpy("probabilities")
    client.stop_stream()
    return [results[index] for index in range(len(batches))]


def repository(client, token, model_path):
    files = {"file:1/model.onnx": open(model_path, "rb").read()}
    config = json.dumps({"max_batch_size": 4, "dynamic_batching": {}})
    try:
        client.load_model("digits-copy", config=config, files=files)
        raise AssertionError("a load without the token must be refused")
    except grpc_client.InferenceServerException as error:
        assert error.status() == "StatusCode.UNAUTHENTICATED", error.status()
    admin = {"authorization": f"Bearer {token}"}
    client.load_model("digits-copy", headers=admin, config=config, files=files)
    assert client.is_model_ready("digits-copy")
    assert client.get_model_config("digits-copy", as_json=True)["config"]["max_batch_size"] == 4
    client.unload_model("digits-copy", headers=admin)
    assert not client.is_model_ready("digits-copy")


def main():
    url, split_path, token, model_path = sys.argv[1:5]
    client = grpc_client.InferenceServerClient(url=url)
    assert client.is_server_live(), "server not live"
    assert client.is_server_ready(), "server not ready"
    assert client.is_model_ready("digits"), "digits not ready"
    assert not client.is_model_ready("no-such-model")
    assert client.get_server_metadata().name == "edge-infer"
    metadata = client.get_model_metadata("digits", as_json=True)
    assert metadata["inputs"][0]["name"] == "pixels" and metadata["inputs"][0]["datatype"] == "FP32", metadata
    assert metadata["outputs"][0]["name"] == "probabilities", metadata
    config = client.get_model_config("digits", as_json=True)["config"]
    assert config["input"][0]["name"] == "pixels" and config["input"][0]["data_type"] == "TYPE_FP32", config
    assert config["instance_group"][0]["kind"] == "KIND_CPU", config
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "digits", "version": "1", "state": "READY"} in index, index
    try:
        client.get_model_metadata("no-such-model")
        raise AssertionError("an unknown model must be NOT_FOUND")
    except grpc_client.InferenceServerException as error:
        assert error.status() == "StatusCode.NOT_FOUND", error.status()

    repository(client, token, model_path)

    images = np.array(json.load(open(split_path))["pixels"], dtype=np.float32)
    batches = [images[start:start + BATCH] for start in range(0, len(images), BATCH)]
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))
    streamed = streamed_infer(client, batches)
    labels = []
    for batch, from_stream in zip(batches, streamed):
        raw = raw_infer(client, batch)
        typed = typed_infer(stub, batch)
        assert np.allclose(raw, typed, atol=1e-6) and np.allclose(raw, from_stream, atol=1e-6), "answers differ"
        labels.extend(int(label) for label in raw.argmax(axis=1))
    print(json.dumps(labels))


if __name__ == "__main__":
    main()
