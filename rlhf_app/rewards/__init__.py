"""Reward sources. Every one is built into TRL's callable signature:

    reward_fn(prompts: list[str], completions: list[str], **columns) -> list[float]

where dataset columns (e.g. `answer`) arrive by name. A plain dict maps `reward.name` to a builder
`build(cfg, device) -> callable`; a callable may carry `extra_metrics(prompts, completions,
**columns) -> dict[str, float]`, which the before/after evaluation reports.
"""

from __future__ import annotations

import math
from typing import Callable

from rlhf_app.rewards import custom, gsm8k, sentiment, toy

RewardFn = Callable[..., list[float]]

BUILDERS = {"toy": toy.build, "sentiment": sentiment.build, "gsm8k": gsm8k.build, "python": custom.build}


class RewardError(RuntimeError):
    """A reward function failed or returned something unusable; the message names it and the input."""


def build_reward(cfg, device=None) -> RewardFn:
    """The checked reward callable named by `cfg.reward.name`."""
    name = cfg.reward.name
    if name not in BUILDERS:
        raise ValueError(f"unknown reward.name={name!r}: choose one of {', '.join(BUILDERS)}")
    return checked(name, BUILDERS[name](cfg, device))


def _short(text: str, limit: int = 200) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _row(columns: dict, i: int, n: int) -> dict:
    """Row `i` of the per-completion columns, as one-element lists; other values unchanged."""
    return {k: [v[i]] if isinstance(v, (list, tuple)) and len(v) == n else v for k, v in columns.items()}


def _culprit(name: str, fn: RewardFn, prompts, completions, columns, err: Exception) -> RewardError:
    """Re-score one completion at a time to name the one that makes `fn` fail."""
    n = len(completions)
    for i in range(n):
        try:
            fn(prompts[i:i + 1], completions[i:i + 1], **_row(columns, i, n))
        except Exception as single:  # noqa: BLE001 - any failure is reported with its input
            return RewardError(f"reward {name!r} failed on completion {i} {_short(completions[i])}: "
                               f"{type(single).__name__}: {single}")
    return RewardError(f"reward {name!r} failed on a batch of {n} completions (each alone scores fine): "
                       f"{type(err).__name__}: {err}")


def checked(name: str, fn: RewardFn) -> RewardFn:
    """Wrap a reward so that an exception, a wrong length, None, NaN or inf fails with a message
    naming the reward and the completion; `extra_metrics` stays reachable on the wrapper."""

    def reward_fn(prompts: list[str], completions: list[str], **columns) -> list[float]:
        try:
            scores = list(fn(prompts, completions, **columns))
        except Exception as err:  # noqa: BLE001 - re-raised with the offending completion
            raise _culprit(name, fn, prompts, completions, columns, err) from err
        if len(scores) != len(completions):
            raise RewardError(f"reward {name!r} returned {len(scores)} scores for {len(completions)} completions")
        for i, s in enumerate(scores):
            if s is None or not math.isfinite(float(s)):
                raise RewardError(f"reward {name!r} returned {s} for completion {i} {_short(completions[i])}")
        return [float(s) for s in scores]

    reward_fn.__wrapped__ = fn
    if callable(getattr(fn, "extra_metrics", None)):
        reward_fn.extra_metrics = fn.extra_metrics
    return reward_fn
