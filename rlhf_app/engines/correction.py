"""The sampling correction of an engine that samples with its own copy of the policy (vLLM): how far
its log-probs are from the trainer's, and TRL's truncated importance weights for the gap."""

from __future__ import annotations

import math

import torch


def importance_weights(logprobs: torch.Tensor, sampling_logprobs: torch.Tensor, mask: torch.Tensor,
                       mode: str, cap: float) -> torch.Tensor:
    """TRL's vLLM importance-sampling correction (GRPOTrainer, `vllm_importance_sampling_mode`).

    logprobs (B, R) of the trainer's forward, sampling_logprobs (B, R) of the engine, mask (B, R)
    -> weights (B, R) >= 0 that multiply each token's policy-gradient term: exp(logprobs - sampling)
    per token (`token_*`) or per sequence (`sequence_*`), clipped at `cap` (`*_truncate`) or zeroed
    above it (`*_mask`). Truncated IS: https://fengyao.notion.site/off-policy-rl
    """
    diff = torch.nan_to_num((logprobs - sampling_logprobs) * mask, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    ratio = ratio.clamp(max=cap) if mode.endswith("truncate") else ratio.masked_fill(ratio > cap, 0.0)
    return ratio.expand_as(logprobs) * mask


def sampling_correction(sampling_logprobs: torch.Tensor, b_logprobs: torch.Tensor, b_mask: torch.Tensor, rcfg,
                        accelerator) -> tuple[dict, torch.Tensor | None]:
    """(metrics, weights or None) for an engine whose log-probs `sampling_logprobs` (B, R) may differ
    from the trainer's `b_logprobs` (B, R) over the real tokens of `b_mask` (B, R).

    Metrics: |engine - trainer| log-prob over real tokens, mean and max over all processes.
    Weights (B, R): `importance_weights` when the correction is on (`rcfg.importance_sampling`: TRL's
    `vllm_importance_sampling_correction`, on by default with asynchronous rollouts); then their mean and
    spread (std) over real tokens are logged too: with one update of staleness the spread shows how far
    the sampling policy lagged.
    The policy loss is linear in the advantage with a non-negative per-token factor, so scaling
    the advantages by the weights equals TRL's scaling of the per-token loss.
    """
    diff = (sampling_logprobs - b_logprobs).abs() * b_mask
    local = torch.stack([diff.sum(), b_mask.sum(), diff.max()])
    gathered = accelerator.gather(local[None]) if accelerator.num_processes > 1 else local[None]
    metrics = {"rollout/logprob_diff_mean": (gathered[:, 0].sum() / gathered[:, 1].sum().clamp(min=1)).item(),
               "rollout/logprob_diff_max": gathered[:, 2].max().item()}
    if not rcfg.importance_sampling:
        return metrics, None
    weights = importance_weights(b_logprobs, sampling_logprobs, b_mask, rcfg.vllm_importance_sampling_mode,
                                 rcfg.vllm_importance_sampling_cap)
    real = weights[b_mask.bool()]
    metrics["rollout/importance_weight_mean"] = real.mean().item() if real.numel() else math.nan
    metrics["rollout/importance_weight_std"] = real.std().item() if real.numel() > 1 else math.nan
    return metrics, weights
