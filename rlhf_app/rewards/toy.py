"""Toy reward for tests and the `tiny` recipe: how often a target string occurs in the completion."""

from __future__ import annotations


def build(cfg, device=None):
    """reward = occurrences of `reward.target` per character of the completion (0 when empty)."""
    target = cfg.reward.target
    if not target:
        raise ValueError("reward.target must be a non-empty string for the toy reward")

    def toy_reward(prompts: list[str], completions: list[str], **columns) -> list[float]:
        return [c.count(target) * len(target) / max(len(c), 1) for c in completions]

    return toy_reward
