"""What users would run instead of edge-infer: a FastAPI app on uvicorn serving the same ONNX
models with onnxruntime, with the same request and response shapes as edge-infer's `/digits`
and `/embed` guests. The benchmark suite (benches/suite.rs) measures both side by side.

Run: python server.py PORT REPO [THREADS]   (needs benches/python/requirements.txt)

THREADS is onnxruntime's intra-op threads per session: a number (the suite runs 1, which
suits many concurrent requests), or `default` for onnxruntime's own choice (one per core,
which suits one request at a time).
"""

import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from tokenizers import Tokenizer

port, repo = int(sys.argv[1]), sys.argv[2]
threads = sys.argv[3] if len(sys.argv) > 3 else "1"
options = ort.SessionOptions()
if threads != "default":
    options.intra_op_num_threads = int(threads)
digits = ort.InferenceSession(f"{repo}/models/digits/digits.onnx", options)
minilm = ort.InferenceSession(f"{repo}/models/minilm/model-float.onnx", options)
tokenizer = Tokenizer.from_file(f"{repo}/models/minilm/tokenizer.json")
tokenizer.enable_truncation(256)
tokenizer.enable_padding()
app = FastAPI()


@app.post("/digits")
async def classify(request: Request):
    body = await request.json()
    single = "pixels" in body
    images = np.array([body["pixels"]] if single else body["images"], dtype=np.float32)
    if images.ndim != 2 or images.shape[1] != 64:
        raise HTTPException(400, "expected 64 pixels per image")
    (probabilities,) = digits.run(None, {"pixels": images})
    answers = [{"label": int(p.argmax()), "probabilities": p.tolist()} for p in probabilities]
    return answers[0] if single else answers


@app.post("/embed")
async def embed(request: Request):
    texts = (await request.json())["texts"]
    encodings = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    (hidden,) = minilm.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    pooled = (hidden * mask[:, :, None]).sum(axis=1)
    return {"embeddings": (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).tolist()}


@app.get("/hello")
async def hello():
    return {"served": 1}


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
