"""The peer for `cargo bench --bench generation`: SmolLM2's reference generation loop on
onnxruntime in Python, on the same exported model (`models/smollm2/model.onnx`), one
sequence per thread, each thread feeding the model its prompt then each greedy token with
the cache it got back: what a Python service without batching does.

Prints one JSON line: tokens, seconds, tokens/s, TTFT p50/p99 and ITL p50/p99 in ms.

Run: python3 benches/python/generate_peer.py STREAMS SEQUENCES_PER_STREAM INTRA_OP_THREADS
     (the prompts and lengths come from the bench, on stdin, as JSON)
"""

import json
import sys
import threading
import time

import numpy as np
import onnxruntime

MODEL = sys.argv[4] if len(sys.argv) > 4 else "models/smollm2/model.onnx"


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def generate(session, prompt, new_tokens, ttft, itl):
    start = time.perf_counter()
    ids = np.array([prompt], dtype=np.int64)
    mask = np.ones((1, len(prompt)), dtype=np.int64)
    positions = np.arange(len(prompt), dtype=np.int64)[None, :]
    past = np.zeros((30, 2, 1, 3, 0, 64), dtype=np.float32)
    last = start
    for produced in range(new_tokens):
        token, present = session.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "past": past})
        now = time.perf_counter()
        (ttft if produced == 0 else itl).append((now - last if produced else now - start) * 1000)
        last = now
        past = np.concatenate([past, present], axis=4)
        ids = token[:, None]
        positions = positions[:, -1:] + 1
        mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)


def main():
    streams, per_stream, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    work = json.load(sys.stdin)
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(MODEL, options, providers=["CPUExecutionProvider"])
    ttft, itl = [], []

    def stream(index):
        for k in range(per_stream):
            case = work[(index * per_stream + k) % len(work)]
            generate(session, case["prompt"], case["new_tokens"], ttft, itl)

    start = time.perf_counter()
    runners = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()
    seconds = time.perf_counter() - start
    tokens = len(ttft) + len(itl)
    print(json.dumps({
        "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
        "ttft_p50": percentile(ttft, 0.5), "ttft_p99": percentile(ttft, 0.99),
        "itl_p50": percentile(itl, 0.5), "itl_p99": percentile(itl, 0.99),
    }))


if __name__ == "__main__":
    main()
