"""Prompt datasets. `load_prompts(cfg, tokenizer)` returns (train, eval) `datasets.Dataset`s whose
rows hold `prompt` (the text the policy sees), `input_ids` (its tokens) and the dataset's answer
columns, which reach the reward function by name. The eval split never overlaps training.
"""

from __future__ import annotations

import random

from datasets import Dataset

TOY_WORDS = ("the movie was a story about an actor who said that this film is not bad and it "
             "had some good parts but i think you will like what they did with the ending").split()


def toy_prompts(n: int, seed: int) -> list[str]:
    """Short prompts of 2-5 common words, deterministic in `seed`."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(TOY_WORDS) for _ in range(rng.randint(2, 5))) for _ in range(n)]


def _tokenize(rows: list[dict], tokenizer, max_len: int) -> Dataset:
    ds = Dataset.from_list(rows)
    return ds.map(lambda r: {"input_ids": tokenizer(r["prompt"], add_special_tokens=False)
                             ["input_ids"][-max_len:]})


def load_prompts(cfg, tokenizer) -> tuple[Dataset, Dataset]:
    name = cfg.data.name
    if name == "toy":
        train = [{"prompt": p} for p in toy_prompts(cfg.data.num_train or 512, cfg.seed)]
        evals = [{"prompt": p} for p in toy_prompts(cfg.data.num_eval, cfg.seed + 10_000)]
    else:
        raise ValueError(f"unknown data.name={name!r}: choose one of toy")
    return (_tokenize(train, tokenizer, cfg.data.max_prompt_length),
            _tokenize(evals, tokenizer, cfg.data.max_prompt_length))
