"""The PPO math as pure functions on tensors.

Shapes: B = episodes in the batch, R = response tokens (right-padded after the first stop
token). `mask` is 1.0 on real response tokens (the stop token included), 0.0 after it.
In an episode with tool calls the response holds the policy's turns and the tool results in order;
every function here is then given the policy's tokens (`policy_tokens`), 0.0 on the tool results too,
and treats a masked-out position inside the response exactly as one after it: not there.
Defaults and details follow "The N implementation details of RLHF with PPO" (Huang et al.,
https://iclr-blogposts.github.io/2024/blog/the-n-implementation-details-of-rlhf-with-ppo/).
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1. x, mask: (B, R) -> scalar, or (B,) with dim=1."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of x over masked positions (Bessel's correction, as TRL). -> scalar"""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    return var * n / (n - 1).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, all_reduce=None) -> torch.Tensor:
    """Normalise x to unit variance (and zero mean if shift_mean) using only masked positions.

    `all_reduce`, if given, sums a tensor over all processes, so that N processes whiten with the
    statistics of the whole batch, exactly as one process holding it would. Padded positions come
    back as 0 so they can never leak into a later sum. (B, R) -> (B, R)
    """
    reduce = all_reduce or (lambda t: t)
    total, n = reduce(torch.stack([(x * mask).sum(), mask.sum()]))
    mean = total / n.clamp(min=1)
    var = reduce(((x - mean) ** 2 * mask).sum()) / (n - 1).clamp(min=1)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def response_mask(responses: torch.Tensor, stop_token_id: int | None) -> torch.Tensor:
    """1.0 up to and including the first stop token of each row, 0.0 after it. (B, R) -> (B, R)

    Rows without a stop token are real in full. With stop_token_id None every token is real.
    """
    if stop_token_id is None:
        return torch.ones_like(responses, dtype=torch.float)
    is_stop = (responses == stop_token_id).int()
    # Number of stop tokens strictly before each position: 0 means "not past the first stop".
    stops_before = is_stop.cumsum(dim=1) - is_stop
    return (stops_before == 0).float()


def policy_tokens(mask: torch.Tensor, tool_mask: torch.Tensor | None) -> torch.Tensor:
    """The tokens the policy wrote: real response tokens outside tool results. mask (B, R),
    tool_mask (B, R) or None (every real token is the policy's) -> (B, R) float.

    As TRL's GRPOTrainer (`completion_mask * tool_mask`, trl/trainer/grpo_trainer.py; `_tool_call_loop`
    builds tool_mask: 0 on tool results, 1 elsewhere)."""
    return mask if tool_mask is None else mask * tool_mask.to(mask)


def stopped(response: torch.Tensor, policy_mask: torch.Tensor, stop_token_id: int | None) -> torch.Tensor:
    """Whether each episode's last policy token is the stop token (a stop token inside a tool result
    does not count): what `missing_eos_penalty` reads. (B, R), (B, R) -> (B,) bool"""
    if stop_token_id is None:
        return torch.zeros(response.shape[0], dtype=torch.bool, device=response.device)
    rows = torch.arange(response.shape[0], device=response.device)
    return (response[rows, last_token_index(policy_mask)] == stop_token_id) & (policy_mask.sum(1) > 0)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens. (B, R) -> (B, R)

    k1 = log p - log q (unbiased, high variance, can be negative);
    k3 = (q/p - 1) - log(q/p) (unbiased, always >= 0). http://joschu.net/blog/kl-approx.html
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}: use k1 or k3")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last masked-in token of each row (0 for an empty row), gaps allowed. (B, R) -> (B,) long"""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * (mask > 0)).amax(dim=1)


def adjust_scores(scores: torch.Tensor, contains_stop: torch.Tensor, missing_eos_penalty: float | None = None,
                  scale: float = 1.0, clip: float | None = None) -> torch.Tensor:
    """Scores as the policy is trained on them: minus `missing_eos_penalty` for responses that never
    stopped, times `scale`, clipped to ±clip. scores (B,), contains_stop (B,) bool -> (B,)"""
    if missing_eos_penalty is not None:
        scores = scores - missing_eos_penalty * (~contains_stop).float()
    scores = scores * scale
    return scores.clamp(-clip, clip) if clip is not None else scores


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef·KL on every real token, plus the score on the last real token
    (with the policy's tokens as mask: the last token the policy wrote, tool results after it or not).

    scores: (B,), kl and mask: (B, R) -> (rewards (B, R), non_score_rewards (B, R)).
    """
    non_score = -kl_coef * kl * mask
    rewards = non_score.clone()
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards, non_score


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over the masked-in tokens of each row.

    A masked-out position is skipped, as if it were not there: after the last real token (the state
    after it is terminal) and inside the response (tool results): the value of the next masked-in
    token bootstraps across it, and neither γ nor λ discounts it. With right-padded masks this is the
    usual recursion. rewards, values, mask: (B, R) -> (advantages (B, R), returns (B, R)), both 0 where
    the mask is 0.
    """
    values = values * mask
    rewards = rewards * mask
    real = mask > 0
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(last)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = torch.where(real[:, t], delta + gamma * lam * last, last)
        next_value = torch.where(real[:, t], values[:, t], next_value)
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def aggregate_loss(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
                   normaliser: float | torch.Tensor | None = None) -> torch.Tensor:
    """A per-token loss to a scalar, as veRL's `agg_loss` (verl/trainer/ppo/core_algos.py). (B, R) -> scalar

    token-mean: sum over real tokens / their number (TRL's "bnpo"/"dapo", DAPO https://arxiv.org/abs/2503.14476);
    seq-mean-token-mean: mean over sequences of each one's token mean (TRL's "grpo", the GRPO paper);
    seq-mean-token-sum: mean over sequences of each one's token sum;
    seq-mean-token-sum-norm: token sum / (sequences x R), R the fixed response length: Dr. GRPO's
    constant normaliser (https://arxiv.org/abs/2503.20783, TRL's "dr_grpo"; veRL omits the 1/sequences).
    `normaliser` is what the mode divides by (real tokens for token-mean, sequences otherwise) when
    this batch is one micro-batch of a larger one: pass the larger batch's count and sum the pieces.
    """
    total_tokens = mask.sum() if normaliser is None else normaliser
    sequences = mask.shape[0] if normaliser is None else normaliser
    if mode == "token-mean":
        return (loss_mat * mask).sum() / torch.as_tensor(total_tokens).clamp(min=1)
    if mode == "seq-mean-token-mean":
        return ((loss_mat * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / max(sequences, 1)
    if mode == "seq-mean-token-sum":
        return (loss_mat * mask).sum() / max(sequences, 1)
    if mode == "seq-mean-token-sum-norm":
        return (loss_mat * mask).sum() / (max(sequences, 1) * mask.shape[1])
    raise ValueError(f"unknown loss aggregation {mode!r}: use one of {', '.join(LOSS_AGG_MODES)}")


def log_importance_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor,
                         level: str = "token") -> torch.Tensor:
    """log(pi / pi_old) per token, or per sequence broadcast to its tokens. (B, R) -> (B, R)

    "sequence" is GSPO's length-normalised sequence ratio (Zheng et al. 2025, https://arxiv.org/abs/2507.18071;
    TRL's importance_sampling_level="sequence"): the mean of the token log-ratios over real tokens.
    """
    log_ratio = (logprobs - old_logprobs) * mask
    if level == "token":
        return log_ratio
    if level == "sequence":
        seq = log_ratio.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
        return seq.expand_as(log_ratio) * mask
    raise ValueError(f"unknown importance_sampling_level {level!r}: use token or sequence")


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float, cliprange_high: float | None = None,
                importance_sampling_level: str = "token", loss_agg_mode: str = "token-mean",
                normaliser: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate objective (PPO, Schulman et al. 2017), to minimise.

    The ratio is clipped to [1 - cliprange, 1 + cliprange_high] (DAPO's clip-higher,
    https://arxiv.org/abs/2503.14476, TRL's epsilon_high; None: symmetric). The ratio is per token or
    per sequence (`log_importance_ratio`); `aggregate_loss` reduces the per-token loss.
    All inputs (B, R) -> (loss, clip fraction, approx KL old->new per token), scalars.
    """
    high = cliprange if cliprange_high is None else cliprange_high
    ratio = torch.exp(log_importance_ratio(logprobs, old_logprobs, mask, importance_sampling_level))
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + high)
    loss = aggregate_loss(torch.max(unclipped, clipped), mask, loss_agg_mode, normaliser)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean(((logprobs - old_logprobs) * mask) ** 2, mask)
    return loss, clipfrac, approx_kl


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float, normaliser: float | torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: 0.5·max((V - R)², (clip(V, V_old ± ε) - R)²), token mean (`normaliser` as in
    aggregate_loss). (B, R) -> (loss, clip fraction)."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * aggregate_loss(torch.max(unclipped, clipped), mask, "token-mean", normaliser)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over real tokens: 1 is a perfect critic. -> scalar"""
    var_returns = masked_var(returns, mask)
    return 1.0 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-8)


class KLController:
    """The KL coefficient: fixed, or adaptive (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593).

    Adaptive: after each batch of n episodes with mean KL `kl`, the coefficient is multiplied by
    1 + clip(kl / target - 1, -0.2, 0.2) · n / horizon.
    """

    def __init__(self, init: float, adaptive: bool = False, target: float = 6.0, horizon: int = 10000):
        self.value, self.adaptive, self.target, self.horizon = init, adaptive, target, horizon

    def update(self, kl: float, n_steps: int) -> None:
        if self.adaptive:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]
