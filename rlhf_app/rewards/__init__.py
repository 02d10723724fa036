"""Reward sources. Every one is built into TRL's callable signature:

    reward_fn(prompts: list[str], completions: list[str], **columns) -> list[float]

where dataset columns (e.g. `answer`) arrive by name. A plain dict maps `reward.name` to a builder.
"""

from __future__ import annotations

import math
from typing import Callable

from rlhf_app.rewards import toy

RewardFn = Callable[..., list[float]]

BUILDERS = {"toy": toy.build}


def build_reward(cfg, device=None) -> RewardFn:
    """The checked reward callable named by `cfg.reward.name`."""
    name = cfg.reward.name
    if name not in BUILDERS:
        raise ValueError(f"unknown reward.name={name!r}: choose one of {', '.join(BUILDERS)}")
    return checked(name, BUILDERS[name](cfg, device))


def checked(name: str, fn: RewardFn) -> RewardFn:
    """Wrap a reward so that a wrong length, NaN or inf fails with a message naming the reward."""

    def reward_fn(prompts: list[str], completions: list[str], **columns) -> list[float]:
        scores = list(fn(prompts, completions, **columns))
        if len(scores) != len(completions):
            raise ValueError(f"reward {name!r} returned {len(scores)} scores for {len(completions)} completions")
        for i, s in enumerate(scores):
            if s is None or not math.isfinite(float(s)):
                raise ValueError(f"reward {name!r} returned {s} for completion {completions[i]!r}")
        return [float(s) for s in scores]

    reward_fn.__wrapped__ = fn
    return reward_fn
