"""Make the embedding test vectors: what onnxruntime and the reference tokenizer give.

For each text below: tokenize with the model's own `tokenizer.json` (Hugging Face
`tokenizers`; [CLS] ... [SEP], at most 256 tokens), run `model.onnx` with onnxruntime,
mean-pool the last hidden state over the tokens, and L2-normalise. The texts exercise the
tokenizer: case, accents, punctuation, numbers, Chinese characters, an emoji, long words.

Output: reference.json {"texts": [...], "token_ids": [[ids], ...], "embeddings": [[384 floats], ...]}
(the token ids let protocol clients, which send tensors, test the same texts)
Run: python3 models/minilm/fetch.py && python3 models/minilm/reference.py
     (needs numpy, onnxruntime==1.31.1, tokenizers)
"""

import json
import pathlib

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

HERE = pathlib.Path(__file__).resolve().parent
MAX_TOKENS = 256
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "WebAssembly components run inference at the edge!",
    "Café déjà vu: naïve coöperation, Ångström and Ñandú.",
    "Numbers like 3.14159, 2026-11-22 and $1,000,000 matter.",
    "你好，世界。机器学习很有趣。",
    "Emoji are unknown to BERT 🙂 but the rest is fine.",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism.",
    "tokenization,punctuation;and(brackets)[nested]{curly}",
    "   leading and trailing   spaces\tand\ttabs\n",
    "a",
]


def main():
    tokenizer = Tokenizer.from_file(str(HERE / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    session = ort.InferenceSession(str(HERE / "model-float.onnx"))
    embeddings, token_ids = [], []
    for text in TEXTS:
        token_ids.append(tokenizer.encode(text).ids)
        ids = np.array([token_ids[-1]], dtype=np.int64)
        mask = np.ones_like(ids)
        (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        pooled = hidden[0].mean(axis=0)
        embeddings.append((pooled / np.linalg.norm(pooled)).tolist())
    (HERE / "reference.json").write_text(json.dumps({"texts": TEXTS, "token_ids": token_ids, "embeddings": embeddings}) + "\n")
    print(f"wrote {len(TEXTS)} reference embeddings")


if __name__ == "__main__":
    main()
