"""Rollout engines: what samples the responses. The trainer calls two methods and nothing else:

    engine.start_at(step)                   # once, before the first update (a resumed run: its step)
    engine.sync_weights(model) -> seconds   # make the engine sample from the model's current weights
    engine.generate(rows, greedy=False) -> Rollout
    engine.close()                          # once, after the last evaluation, before the process group ends

`hf` samples with the trained model's own `generate` (nothing to sync). `vllm` runs a colocated
vLLM engine in each training process (rlhf_app/ppo/vllm_engine.py) and also returns the sampled
tokens' log-probs, which `sampling_correction` compares with the trainer's.
"""

from __future__ import annotations

import math

import torch
from trl.models.utils import unwrap_model_for_generation

from rlhf_app.rl.rollout import Rollout, generate

GC_KWARGS = {"use_reentrant": False}


class HFEngine:
    """transformers' `generate` on the (unwrapped, ZeRO-3-gathered) policy being trained."""

    name = "hf"

    def __init__(self, accelerator, model, tokenizer, ppo):
        self.accelerator, self.model, self.tokenizer, self.ppo = accelerator, model, tokenizer, ppo

    def start_at(self, step: int) -> None:
        """Nothing to do: the trained model's own generate draws from torch's (checkpointed) RNG."""

    def close(self) -> None:
        """Nothing to free: the engine is the trained model."""

    def sync_weights(self, model) -> float:
        self.model = model  # the engine *is* the trained model: nothing to copy
        return 0.0

    def generate(self, rows: list[dict], greedy: bool = False) -> Rollout:
        with unwrap_model_for_generation(self.model, self.accelerator,
                                         gradient_checkpointing_kwargs=GC_KWARGS) as unwrapped:
            return generate(unwrapped.policy, self.tokenizer, rows, self.ppo, self.accelerator.device, greedy=greedy)


def build_engine(cfg, accelerator, model, tokenizer):
    """The engine `cfg.rollout.engine` names, for `model` (prepared or not); `start_at` sets a resumed run's update."""
    if cfg.rollout.engine == "vllm":
        from rlhf_app.engines.vllm_engine import VLLMEngine

        return VLLMEngine(cfg, accelerator, model, tokenizer)
    return HFEngine(accelerator, model, tokenizer, cfg.ppo)


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


def sampling_correction(rollout: Rollout, b_logprobs: torch.Tensor, b_mask: torch.Tensor, rcfg, accelerator):
    """(metrics, weights or None) for an engine that returned its own log-probs.

    Metrics: |engine - trainer| log-prob over real tokens, mean and max over all processes.
    Weights: `importance_weights` when `rollout.vllm_importance_sampling_correction` is on.
    The policy loss is linear in the advantage with a non-negative per-token factor, so scaling
    the advantages by the weights equals TRL's scaling of the per-token loss.
    """
    if rollout.logprobs is None:
        return {}, None
    diff = (rollout.logprobs - b_logprobs).abs() * b_mask
    local = torch.stack([diff.sum(), b_mask.sum(), diff.max()])
    gathered = accelerator.gather(local[None]) if accelerator.num_processes > 1 else local[None]
    metrics = {"rollout/logprob_diff_mean": (gathered[:, 0].sum() / gathered[:, 1].sum().clamp(min=1)).item(),
               "rollout/logprob_diff_max": gathered[:, 2].max().item()}
    if not rcfg.vllm_importance_sampling_correction:
        return metrics, None
    weights = importance_weights(b_logprobs, rollout.logprobs, b_mask, rcfg.vllm_importance_sampling_mode,
                                 rcfg.vllm_importance_sampling_cap)
    real = weights[b_mask.bool()]
    metrics["rollout/importance_weight_mean"] = real.mean().item() if real.numel() else math.nan
    return metrics, weights
