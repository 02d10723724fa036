"""Which runs one `bench/learning.py` call makes: each recipe asked for, at `--pairs-scale` where it pairs
prompts, `--quick` at tiny sizes, once per `--seeds` seed (SEEDS by default); each with its entry name in the
JSON (NAME@seedS, NAME@pairs0.5@seedS; NAME, NAME@pairs0.5 for a run at the recipe's own seed) and its own
folder. HELD_OUT: the bench's held-out set where a recipe's own is smaller than the issue's 256 prompts."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

from omegaconf import OmegaConf

SEEDS = (0, 1, 2)  # every recipe, every figure over three seeds (NAME@mean)
# imdb-offline evaluates 64 prompts as shipped; the bench scores 256 (the others: imdb-rlhf-offline 256 as
# shipped; GSM8K all 55 real items, and 300 generated problems in bench/generated_eval.py and bench/phases.py).
HELD_OUT = {"imdb-offline": ["data.num_eval=256"]}
# --variant NAME: one named change to every run, for hardware that cannot run a recipe as it was measured; its
# entries are NAME@<variant>@seedS (and @mean) in the committed file, beside the recipe's own. fp32: training in
# float32 where the CPU has no bfloat16 arithmetic (torch emulates it there, 13-27x slower: docs/performance.md).
VARIANTS = {"fp32": {"gsm8k-offline": ("ppo.bf16=false",)}}  # variant -> {recipe: its settings}
PAIRS_KEY = {"imdb-rlhf-offline": "per_stage.pairs.data.num_train"}  # the prompts paired: --pairs-scale scales it
# --quick: the recipe at tiny sizes (a handful of pairs, one reward-model step, 2 PPO updates), to check the bench
QUICK = {"imdb-rlhf-offline": ["per_stage.pairs.data.num_train=12", "pairs.tie_threshold=0.0", "rm.max_steps=1",
                               "data.num_train=64", "data.num_eval=8", "ppo.total_episodes=64", "eval_steps=1"]}


class Variant(NamedTuple):
    """One run of a recipe: its entry name in the JSON, the recipe, its settings, its folder, its reports' folder."""
    name: str
    recipe: str
    overrides: tuple[str, ...]
    work: Path
    reports: Path
    seed: int | None = None


def variants(recipes: list[str], seeds: list[int] | None, pairs_scale: float, quick: bool, extra: list[str],
             work: Path, reports: Path, variant: str | None = None) -> list[Variant]:
    """The runs asked for: each recipe (at --pairs-scale where it pairs prompts; with VARIANTS[variant]'s
    settings), once per seed."""
    from rlhf_app.config import load_config

    out = []
    for recipe in recipes:
        if quick and recipe not in QUICK:
            raise SystemExit(f"error: --quick is defined for {', '.join(QUICK)}: drop --quick or choose it with --only")
        if variant is not None and recipe not in VARIANTS[variant]:
            raise SystemExit(f"error: --variant {variant} is defined for {', '.join(VARIANTS[variant])}: choose it with --only")
        if pairs_scale != 1 and recipe not in PAIRS_KEY:
            raise SystemExit(f"error: --pairs-scale: {recipe} trains on no pairs; choose --only {' '.join(PAIRS_KEY)}")
        base, settings = recipe, [*(QUICK[recipe] if quick else HELD_OUT.get(recipe, [])), *extra]
        if variant is not None:
            base, settings = f"{recipe}@{variant}", [*settings, *VARIANTS[variant][recipe]]
        if pairs_scale != 1:
            key = PAIRS_KEY[recipe]
            value = OmegaConf.select(OmegaConf.create(asdict(load_config([f"recipe={recipe}", *settings]))), key)
            settings.append(f"{key}={max(2, round(value * pairs_scale))}")
            base = f"{recipe}@pairs{pairs_scale:g}"
        for seed in seeds if seeds is not None else [None]:
            name = base if seed is None else f"{base}@seed{seed}"
            out.append(Variant(name, recipe, (*settings, *([f"seed={seed}"] if seed is not None else [])),
                               work / name, reports, seed))
    return out


def twin_name(name: str, twins: dict[str, str]) -> str | None:
    """The entry of the same run of a recipe's twin: "gsm8k-tools-offline@seed1" -> "gsm8k-pipeline-offline@seed1"."""
    recipe, at, rest = name.partition("@")
    return f"{twins[recipe]}{at}{rest}" if recipe in twins and rest != "mean" else None


def with_means(recipes: dict) -> dict:
    """`recipes` with NAME@mean set to the mean over seeds (learning_figures.seed_mean) of every NAME@seedS in it."""
    from learning_figures import seed_mean

    bases = {name.rsplit("@seed", 1)[0] for name in recipes if "@seed" in name}
    for base in sorted(bases):
        recipes[f"{base}@mean"] = seed_mean([r for name, r in recipes.items() if name.startswith(f"{base}@seed")])
    return recipes
