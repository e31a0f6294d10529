"""Infer the `sentence-embedding` ensemble through edge-infer with Triton's own clients.

The ensemble (all-MiniLM-L6-v2, then mean pooling) is asked over HTTP and over gRPC with
the reference texts' token ids, padded into one batch with an attention mask; both must
agree. The model's metadata and configuration must say it is an ensemble of two steps.
Prints the embeddings as a JSON list.

Run: python tests/compat/tritonclient_ensemble.py HOST:PORT GRPC_HOST:PORT models/minilm/reference.json
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client

MODEL = "sentence-embedding"


def batch(token_ids):
    longest = max(len(ids) for ids in token_ids)
    ids = np.array([ids + [0] * (longest - len(ids)) for ids in token_ids], dtype=np.int64)
    mask = np.array([[1] * len(ids) + [0] * (longest - len(ids)) for ids in token_ids], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def infer(module, client, tensors):
    inputs = []
    for name, array in tensors.items():
        tensor = module.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [module.InferRequestedOutput("sentence_embedding")]
    return client.infer(MODEL, inputs=inputs, outputs=outputs).as_numpy("sentence_embedding")


def main():
    http_url, grpc_url, reference_path = sys.argv[1], sys.argv[2], sys.argv[3]
    tensors = batch(json.load(open(reference_path))["token_ids"])
    http = http_client.InferenceServerClient(url=http_url)
    grpc = grpc_client.InferenceServerClient(url=grpc_url)
    assert http.is_model_ready(MODEL) and grpc.is_model_ready(MODEL), "the ensemble is not ready"
    metadata = http.get_model_metadata(MODEL)
    assert metadata["platform"] == "ensemble", metadata
    assert [i["name"] for i in metadata["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"], metadata
    config = http.get_model_config(MODEL)
    steps = [step["model_name"] for step in config["ensemble_scheduling"]["step"]]
    assert steps == ["minilm", "mean-pooling"], config
    assert grpc.get_model_config(MODEL).config.platform == "ensemble"
    over_http = infer(http_client, http, tensors)
    over_grpc = infer(grpc_client, grpc, tensors)
    assert over_http.shape == (len(tensors["input_ids"]), 384), over_http.shape
    assert np.allclose(over_http, over_grpc, atol=1e-6), "HTTP and gRPC answers differ"
    print(json.dumps(over_http.tolist()))


if __name__ == "__main__":
    main()
