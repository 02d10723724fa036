"""Rollouts as the loop sees them: the batch an engine returns (engines/), its log-probs and values
under the policy and the reference, and its scores.

Nothing here knows where prompts or rewards come from, nor which engine sampled: a dataset of rows
with `prompt`, `input_ids` and answer columns, and a reward callable with TRL's signature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import TrainerState
from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

from rlhf_app.models.forward import response_forward
from rlhf_app.rl.core import policy_tokens


@dataclass
class Rollout:
    """One batch of episodes. B episodes, P prompt tokens (left-padded), R response tokens.

    With tools the response is the whole episode after the prompt, the policy's turns and the tool
    results in order; `mask` still marks every real token (attention, and the compute a micro-batch
    costs) and stays 1 up to the episode's end, then 0; `tool_mask` marks which of them the policy
    wrote. Everything trained or penalised reads `policy_mask()` alone (TRL's `completion_mask * tool_mask`).
    """

    query: torch.Tensor  # (B, P) prompt tokens
    query_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    response: torch.Tensor  # (B, R) generated tokens, pad after the first stop token (the episode's end)
    mask: torch.Tensor  # (B, R) float, 1 on real response tokens (stop token included), tool results too
    contains_stop: torch.Tensor  # (B,) bool, the policy's last token is the stop token (core.stopped)
    prompts: list[str]
    completions: list[str]
    columns: dict  # dataset columns by name, each a list of B values
    logprobs: torch.Tensor | None = None  # (B, R) the engine's log-probs of the sampled tokens (vllm), 0 on pad
    # (B, R) float, 1 on tokens the policy wrote, 0 on tool/environment tokens inside the response;
    # None = every response token is the policy's
    tool_mask: torch.Tensor | None = None

    def policy_mask(self) -> torch.Tensor:
        """The tokens the policy wrote, mask * tool_mask (core.policy_tokens). -> (B, R) float"""
        return policy_tokens(self.mask, self.tool_mask)


def logprobs_values(model, query, query_mask, response, mask, temperature: float, with_entropy: bool = False,
                    entropy_grad: bool = True):
    """Log-probs of the response tokens, values before each of them, optionally entropy.

    query (B, P), response (B, R) -> logprobs (B, R), values (B, R)[, entropy (B, R)], all fp32.
    The model returns logits for the R response positions only, already divided by the sampling
    temperature, so log-probs match the sampling policy. Log-prob and entropy come from one helper
    (trl's, fused on GPUs); `entropy_grad=False` computes the entropy outside autograd: without an
    entropy bonus it is only logged, and its full-vocabulary softmax would otherwise be kept for backward.
    """
    input_ids = torch.cat([query, response], dim=1)
    attention = torch.cat([query_mask, mask.long()], dim=1)
    logits, values = model(input_ids, attention, response_length=response.shape[1], temperature=temperature)
    if not with_entropy:
        return selective_log_softmax(logits, response), values
    logprobs, entropy = selective_log_softmax_and_entropy(
        logits, response, entropy_requires_grad=torch.is_grad_enabled() and entropy_grad)
    return logprobs, values, entropy


def ref_logprobs(ref_policy, query, query_mask, response, mask, temperature: float) -> torch.Tensor:
    """Log-probs of the response tokens under the reference policy (LM head on response positions only). -> (B, R)"""
    input_ids = torch.cat([query, response], dim=1)
    attention = torch.cat([query_mask, mask.long()], dim=1)
    logits, _ = response_forward(ref_policy, input_ids, attention, response.shape[1], temperature)
    return selective_log_softmax(logits, response)


REWARD_PREFIX = "rewards/"  # every metric a reward logs is under it; the loop logs nothing there


class RewardLog:
    """TRL's logging hooks for reward functions: `log_metric(name, value)` (averaged over the
    batch's calls) and `log_extra(column, values)` (one value per completion, a samples column).

    A metric name outside `rewards/` is logged as `rewards/<name>`, so a reward can never overwrite
    the run's own columns (`step`, `episode`, `objective/kl`, ...); TRL's `rewards/<func>/mean|std` stay as they are."""

    def __init__(self):
        self.metrics: dict[str, list[float]] = {}
        self.extra: dict[str, list] = {}

    def log_metric(self, name: str, value: float) -> None:
        name = str(name)
        if not name.startswith(REWARD_PREFIX):
            name = REWARD_PREFIX + name
        self.metrics.setdefault(name, []).append(float(value))

    def log_extra(self, column: str, values: list) -> None:
        self.extra.setdefault(column, []).extend(values)

    def means(self) -> dict[str, float]:
        """Each logged metric's mean over its finite values (NaN when it had none)."""
        out = {}
        for name, values in self.metrics.items():
            finite = [v for v in values if math.isfinite(v)]
            out[name] = sum(finite) / len(finite) if finite else math.nan
        return out


def completion_ids(rollout: Rollout) -> list[list[int]]:
    """The response tokens of each episode up to and including its stop token (TRL's completion_ids)."""
    return [r[m.bool()].tolist() for r, m in zip(rollout.response, rollout.mask)]


def score(reward_fn, rollout: Rollout, device, trainer_state=None, log: RewardLog | None = None) -> torch.Tensor:
    """External reward of each episode, called with TRL's reward arguments. -> (B,)

    `trainer_state` is a transformers `TrainerState` (TRL passes its trainer's); `log` collects
    what the reward logs through TRL's `log_metric` / `log_extra` hooks. None scores become NaN.
    """
    log = log if log is not None else RewardLog()
    scores = reward_fn(rollout.prompts, rollout.completions, completion_ids=completion_ids(rollout),
                       trainer_state=trainer_state if trainer_state is not None else TrainerState(),
                       log_extra=log.log_extra, log_metric=log.log_metric, **rollout.columns)
    return torch.tensor([math.nan if s is None else s for s in scores], dtype=torch.float, device=device)


def sample_and_score(sample, dataset, reward_fn, device, batch_size: int = 32, trainer_state=None,
                     gold_fn=None) -> dict:
    """`sample(rows) -> Rollout` for every row of `dataset`, in batches, and score it:
    {"mean_score", "extra", "samples"}; `extra` holds the reward's extra metrics and what it logged
    (e.g. rewards/<name>/mean). `gold_fn`: a second reward scoring the same completions (what it logs is
    dropped): "gold_score" (its mean), "gold_extra" (its extra metrics, e.g. the classifier's positive_share)
    and each sample's "gold" join the result."""
    prompts, completions, scores, gold, columns, log = [], [], [], [], {}, RewardLog()
    for start in range(0, len(dataset), batch_size):
        rollout = sample([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        scores += score(reward_fn, rollout, device, trainer_state, log).tolist()
        if gold_fn is not None:
            gold += score(gold_fn, rollout, device, trainer_state).tolist()
        prompts += rollout.prompts
        completions += rollout.completions
        for k, v in rollout.columns.items():
            columns.setdefault(k, []).extend(v)
    extra_fn = getattr(reward_fn, "extra_metrics", None)
    extra = dict(extra_fn(prompts, completions, **columns)) if extra_fn else {}
    # Each function's mean (a batch-averaged std would mislead, so it stays out).
    extra.update({k: v for k, v in log.means().items() if math.isfinite(v) and not k.endswith("/std")})
    result = {"mean_score": sum(scores) / max(len(scores), 1), "extra": extra,
              "samples": [{"prompt": p, "completion": c, "score": s}
                          for p, c, s in zip(prompts, completions, scores)]}
    if gold_fn is not None:
        result["gold_score"] = sum(gold) / max(len(gold), 1)
        gold_extra_fn = getattr(gold_fn, "extra_metrics", None)
        result["gold_extra"] = dict(gold_extra_fn(prompts, completions, **columns)) if gold_extra_fn else {}
        for sample_row, g in zip(result["samples"], gold):
            sample_row["gold"] = g
    return result
