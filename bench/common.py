"""Helpers shared by both sides of the benchmark. Imported from `.venv` (rlhf_app) and from
`.venv-peer` (TRL 1.12), so this module needs only torch and transformers, and of rlhf_app only
`rlhf_app.offline` (a leaf that imports nothing but `os`), found through the checkout's path.

Each run is one process reading a JSON spec and writing a JSON result; see run.py for the spec.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rlhf_app import offline  # noqa: E402

OFFLINE_ENV = {**offline.OFFLINE_ENV, "TOKENIZERS_PARALLELISM": "false"}
REWARD_SEED = 1234  # the reward model's random score head: the same in both engines
VALUE_SEED = 4321  # the peer's separate critic


def setup_process() -> dict:
    """Offline, one torch thread: every run is measured under the same conditions. -> the spec."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    import torch

    torch.set_num_threads(1)
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} SPEC.json RESULT.json (run by bench/run.py)")
    return json.loads(Path(sys.argv[1]).read_text())


def bench_tokenizer(path: str):
    """The policy tokenizer as both engines use it: left padding and a pad token distinct from EOS
    (TRL's PPOTrainer treats every pad id as padding, so pad == EOS would hide stop tokens)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        spare = [t for t in tokenizer.all_special_tokens if t not in (tokenizer.eos_token, tokenizer.bos_token)]
        if not spare:
            raise ValueError(f"tokenizer at {path} has no special token to pad with besides EOS/BOS")
        tokenizer.pad_token = spare[0]
    return tokenizer


def seq_classifier(path: str, seed: int, pad_token_id: int):
    """AutoModelForSequenceClassification(num_labels=1) on the policy weights, score head seeded."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = pad_token_id
    return model


def head_checksum(model) -> float:
    """A fingerprint of the score head, so run.py can check both engines scored with the same model."""
    return float(model.score.weight.detach().double().sum())


class RewardModelScore:
    """A sequence-classification reward model behind TRL's reward signature
    `reward_fn(prompts, completions, **columns) -> list[float]`: prompt + completion tokenized with
    the policy tokenizer (left-padded), the score logit at the last token."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.batch_size = tokenizer, batch_size

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> list[float]:
        import torch

        texts = [p + c for p, c in zip(prompts, completions)]
        scores = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[start:start + self.batch_size], padding=True, return_tensors="pt",
                                     add_special_tokens=False)
                # Positions count from each row's first real token, as TRL's get_reward does.
                position_ids = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                logits = self.model(**enc, position_ids=position_ids).logits
                scores += logits[:, 0].float().tolist()
        return scores


def eval_reward(policy, tokenizer, reward_fn, rows: list[dict], spec: dict, seed: int = 0, batch: int = 32) -> dict:
    """Reward of a policy on fixed held-out prompts, sampled as in training from a fixed seed:
    {"mean", "sem" (standard error of the mean), "n"}.

    The same procedure for both engines' final policies: their in-training batch scores come from
    differently sampled prompts, this figure from the same ones.
    """
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=spec["response_length"], do_sample=True, temperature=spec["temperature"],
                              top_k=0, top_p=1.0, eos_token_id=[], pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=None)
    scores = []
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            enc = tokenizer.pad({"input_ids": [r["input_ids"] for r in chunk]}, return_tensors="pt")
            out = policy.generate(**enc, generation_config=config)
            completions = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            scores += reward_fn([r["prompt"] for r in chunk], completions)
    mean = sum(scores) / len(scores)
    var = sum((x - mean) ** 2 for x in scores) / max(len(scores) - 1, 1)
    return {"mean": mean, "sem": (var / len(scores)) ** 0.5, "n": len(scores)}


def matmul_flops(n: int = 2048, reps: int = 3, dtype: str = "float32") -> float:
    """FLOP/s of an n×n torch.mm in `dtype` on this process's one thread: the MFU denominator of a run
    in that precision (a bf16 run is measured against the bf16 peak)."""
    import torch

    a, b = (torch.randn(n, n).to(getattr(torch, dtype)) for _ in range(2))
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux's VmHWM, not getrusage's ru_maxrss: the latter survives fork + exec, so a child would
    report its parent's peak whenever that is higher.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def finish(result: dict, dtype: str = "float32") -> None:
    """Add the process-wide figures and write the result where run.py expects it."""
    result["peak_rss_mib"] = peak_rss_mib()
    result["matmul_flops"] = matmul_flops(dtype=dtype)
    result["matmul_dtype"] = dtype
    Path(sys.argv[2]).write_text(json.dumps(result, indent=1))
