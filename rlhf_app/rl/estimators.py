"""Advantage estimators: GAE with a critic, and the critic-free ones that compare responses.

Shapes: B = episodes (responses), R = response tokens, G = responses per prompt
(`num_generations`). A group is G consecutive rows: the sampler repeats each prompt G times in a
row, and a group never straddles processes. `rewards` are the per-token rewards of
`core.token_rewards` (the score on the last real token, -kl_coef·KL on every real token); the
outcome estimators use their sum per sequence, as veRL does (verl/trainer/ppo/core_algos.py).
Every estimator returns (advantages (B, R), returns (B, R) or None), both 0 on pads. The loop passes
the policy's tokens as `mask` (core.policy_tokens): tool results get no advantage and no return.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from rlhf_app.rl.core import gae, masked_whiten


class AdvantageSettings(NamedTuple):
    gamma: float
    lam_actor: float
    lam_critic: float
    num_generations: int
    scale_rewards: str  # group | batch | none
    all_reduce: Callable | None = None  # sums a tensor over processes (None: one process)


def settings_from(cfg, all_reduce=None) -> AdvantageSettings:
    """The estimators' settings from a TrainConfig: λ's default to ppo.lam."""
    alg, ppo = cfg.algorithm, cfg.ppo
    return AdvantageSettings(ppo.gamma, ppo.lam if alg.lam_actor is None else alg.lam_actor,
                             ppo.lam if alg.lam_critic is None else alg.lam_critic, alg.group_size,
                             alg.scale_rewards, all_reduce)


def as_groups(scores: torch.Tensor, num_generations: int) -> torch.Tensor:
    """(B,) -> (B / G, G); raises if the batch does not hold whole groups."""
    if num_generations < 2 or scores.shape[0] % num_generations:
        raise ValueError(f"{scores.shape[0]} scores cannot form groups of {num_generations} (need G >= 2 dividing B)")
    return scores.view(-1, num_generations)


def _reduce(t: torch.Tensor, all_reduce) -> torch.Tensor:
    return all_reduce(t) if all_reduce is not None else t


def gae_decoupled(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam_actor: float,
                  lam_critic: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE with one λ for the policy's advantages and another for the critic's returns.

    VAPO (Yuan et al. 2025, https://arxiv.org/abs/2504.05118; veRL issue #479): a critic trained on
    λ=1 returns is unbiased on long responses, while the actor keeps a lower λ for less variance.
    (B, R) -> (advantages with lam_actor, returns with lam_critic), both (B, R).
    """
    advantages, returns = gae(rewards, values, mask, gamma, lam_actor)
    if lam_critic != lam_actor:
        returns = gae(rewards, values, mask, gamma, lam_critic)[1]
    return advantages, returns


def grpo_advantages(scores: torch.Tensor, mask: torch.Tensor, num_generations: int, scale_rewards: str = "group",
                    all_reduce=None, eps: float = 1e-4) -> torch.Tensor:
    """GRPO (Shao et al. 2024, https://arxiv.org/abs/2402.03300): each score minus its group's mean,
    divided by the group's standard deviation (unbiased, + eps as TRL's GRPOTrainer).

    scale_rewards (TRL's name): "group" as GRPO; "batch" divides by the std of the whole batch (all
    processes); "none" does not divide: Dr. GRPO (Liu et al. 2025, https://arxiv.org/abs/2503.20783).
    A group of equal scores gets advantage 0. scores (B,), mask (B, R) -> (B, R) constant per row.
    """
    groups = as_groups(scores, num_generations)
    centred = groups - groups.mean(1, keepdim=True)
    if scale_rewards == "group":
        centred = centred / (groups.std(1, keepdim=True) + eps)
    elif scale_rewards == "batch":
        n, total, squares = _reduce(torch.stack([scores.new_tensor(scores.numel()), scores.sum(),
                                                 (scores ** 2).sum()]), all_reduce)
        std = ((squares - total ** 2 / n) / (n - 1).clamp(min=1)).clamp(min=0).sqrt()
        centred = centred / (std + eps)
    elif scale_rewards != "none":
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}: use group, batch or none")
    return centred.reshape(-1, 1) * mask


def rloo_advantages(scores: torch.Tensor, mask: torch.Tensor, num_generations: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740): each score minus the mean of the
    other G - 1 scores of its group, i.e. G/(G-1) · (score - group mean). (B,), (B, R) -> (B, R)"""
    groups = as_groups(scores, num_generations)
    g = num_generations
    baseline = (groups.sum(1, keepdim=True) - groups) / (g - 1)
    return (groups - baseline).reshape(-1, 1) * mask


def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, gamma: float, all_reduce=None) -> torch.Tensor:
    """REINFORCE++ (Hu 2025, https://arxiv.org/abs/2501.03262, veRL's reinforce_plus_plus): the discounted
    return-to-go of the per-token rewards, whitened over every real token of the batch (all
    processes). No group is needed. (B, R) -> (B, R)"""
    rewards, real = rewards * mask, mask > 0
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):  # a masked-out token (a tool result) is skipped, as in core.gae
        running = torch.where(real[:, t], rewards[:, t] + gamma * running, running)
        returns[:, t] = running
    return masked_whiten(returns * mask, mask, all_reduce=all_reduce)


def reinforce_pp_baseline_advantages(scores: torch.Tensor, mask: torch.Tensor, num_generations: int,
                                     all_reduce=None) -> torch.Tensor:
    """REINFORCE++-baseline (same paper, veRL's reinforce_plus_plus_baseline): each score minus its group's
    mean, spread over the response's tokens, then whitened over every real token of the batch.
    (B,), (B, R) -> (B, R)"""
    groups = as_groups(scores, num_generations)
    centred = (groups - groups.mean(1, keepdim=True)).reshape(-1, 1) * mask
    return masked_whiten(centred, mask, all_reduce=all_reduce)


def _gae(rewards, values, mask, s: AdvantageSettings):
    advantages, returns = gae_decoupled(rewards, values, mask, s.gamma, s.lam_actor, s.lam_critic)
    return masked_whiten(advantages, mask, all_reduce=s.all_reduce), returns


class Estimator(NamedTuple):
    """An advantage estimator and what it needs from the run.

    `estimate(rewards (B, R), values (B, R) or None, mask (B, R), settings) -> (advantages, returns or None)`;
    `needs_critic`: it reads values, so the model carries a critic that the loss trains;
    `needs_groups`: it compares the G responses to one prompt (num_generations >= 2)."""

    estimate: Callable
    needs_critic: bool = False
    needs_groups: bool = False


# algorithm.advantage_estimator -> its Estimator (config/train_config.py repeats the names, without torch).
ESTIMATORS: dict[str, Estimator] = {
    "gae": Estimator(_gae, needs_critic=True),
    "grpo": Estimator(lambda r, v, m, s: (
        grpo_advantages(r.sum(1), m, s.num_generations, s.scale_rewards, s.all_reduce), None), needs_groups=True),
    "rloo": Estimator(lambda r, v, m, s: (rloo_advantages(r.sum(1), m, s.num_generations), None), needs_groups=True),
    "reinforce_pp": Estimator(lambda r, v, m, s: (reinforce_pp_advantages(r, m, s.gamma, s.all_reduce), None)),
    "reinforce_pp_baseline": Estimator(lambda r, v, m, s: (
        reinforce_pp_baseline_advantages(r.sum(1), m, s.num_generations, s.all_reduce), None), needs_groups=True),
}
