"""One update's logged metrics: the objective, the mini-batches' stats, timings and the reward's own
metrics, averaged over processes. Keys follow TRL's PPOTrainer (objective/, policy/, val/, loss/)."""

from __future__ import annotations

import math
import time

import torch
from accelerate.utils import gather_object

from rlhf_app.rl.core import explained_variance
from rlhf_app.rl.estimators import as_groups
from rlhf_app.rl.rollout import RewardLog


class NonFiniteError(RuntimeError):
    pass


def objective_metrics(rollout, scores, b_scores, b_kl, b_non_score, b_logprobs, b_mask, b_values, b_returns,
                      num_generations: int = 1) -> dict:
    """The update's objective/ and val/ entries, local to this process, as scalar tensors.

    scores, b_scores (n,); b_kl, b_non_score, b_logprobs, b_mask (n, R); b_values, b_returns (n, R)
    or None without a critic (then no explained variance). `b_mask` is the policy's tokens: the response
    length counts what the policy wrote, tool results left out (TRL's completion lengths with tool_mask).
    With groups (num_generations G > 1, G consecutive rows a prompt) it adds TRL GRPOTrainer's
    frac_reward_zero_std: the share of groups whose adjusted scores are all equal, e.g. all at
    reward_clip, which leaves the KL in the reward as the group's only signal."""
    objective = {"objective/scores": scores.mean(), "objective/kl": b_kl.sum(1).mean(),
                 "objective/entropy": (-b_logprobs).sum(1).mean(),
                 "objective/non_score_reward": b_non_score.sum(1).mean(),
                 "objective/rlhf_reward": (b_scores + b_non_score.sum(1)).mean(),
                 "val/mean_response_length": b_mask.sum(1).mean(),
                 "val/eos_fraction": rollout.contains_stop.float().mean(),
                 # the score trained on: after missing_eos_penalty, reward_scale, reward_clip
                 "objective/scores_adjusted": b_scores.mean()}
    if num_generations > 1:
        stds = as_groups(b_scores.float(), num_generations).std(1)
        objective["frac_reward_zero_std"] = torch.isclose(stds, torch.zeros_like(stds)).float().mean()
    if b_values is not None:
        objective["val/explained_variance"] = explained_variance(b_values, b_returns, b_mask)
    return objective


def reduced_metrics(accelerator, stats: list, stat_keys: list, objective: dict, step: int) -> dict:
    """The mean of the mini-batches' stats rows and the objective, averaged over processes -> {key: float}.
    Raises NonFiniteError when any of them is not finite."""
    local = torch.cat([torch.stack(stats).mean(0), torch.stack(list(objective.values()))])
    reduced = accelerator.reduce(local, reduction="mean").tolist()
    metrics = dict(zip([*stat_keys, *objective], reduced))
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:  # named, so that the message can point at what went first (scores, KL, a loss)
        raise NonFiniteError(f"non-finite {', '.join(bad[:4])}{' …' if len(bad) > 4 else ''} at update {step}")
    return metrics


def timings(episodes: int, tokens: float, t0, t_sync, t_gen, t_reward, t_fwd, t_train) -> dict:
    """The perf/ and time/ entries of one update that began at t0 (perf_counter seconds)."""
    elapsed = time.perf_counter() - t0
    return {"perf/episodes_per_s": episodes / elapsed, "perf/tokens_per_s": tokens / elapsed,
            "time/update_s": elapsed, "time/generate_s": t_gen - t0 - t_sync, "time/reward_s": t_reward - t_gen,
            "time/forward_s": t_fwd - t_reward, "time/train_s": t_train - t_fwd, "time/weight_sync_s": t_sync}


def tool_metrics(accelerator, rollout) -> dict:
    """With tool episodes (the engines' per-episode `tool_calls`, `tool_failures`, `tool_seconds` columns):
    tools/calls_per_episode, tools/failures (this update's, all processes), tools/failure_frequency (TRL's:
    failures / calls) and time/tools_s (seconds in tool calls, per process); {} without tools."""
    columns = rollout.columns
    if "tool_calls" not in columns:
        return {}
    local = torch.tensor([sum(columns["tool_calls"]), sum(columns["tool_failures"]), len(columns["tool_calls"]),
                          sum(columns["tool_seconds"])], dtype=torch.float, device=accelerator.device)
    calls, failures, episodes, seconds = accelerator.reduce(local, reduction="sum").tolist()
    return {"tools/calls_per_episode": calls / max(episodes, 1), "tools/failures": failures,
            "tools/failure_frequency": failures / calls if calls else 0.0,
            "time/tools_s": seconds / accelerator.num_processes}


def reward_metrics(accelerator, log: RewardLog) -> dict:
    """What the reward logged (rewards/<name>/mean|std, its own log_metric calls), averaged over
    processes and over the finite values; a metric with none is left out."""
    means = log.means()
    names = sorted(means)
    if accelerator.num_processes > 1:  # every process must reduce the same names in the same order
        names = sorted({n for keys in gather_object([names]) for n in keys})
    if not names:
        return {}
    values = [means.get(n, math.nan) for n in names]
    local = torch.tensor([[v if math.isfinite(v) else 0.0, float(math.isfinite(v))] for v in values],
                         device=accelerator.device)
    total = accelerator.reduce(local, reduction="sum").tolist()
    return {n: s / c for n, (s, c) in zip(names, total) if c}
