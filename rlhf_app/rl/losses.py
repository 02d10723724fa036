"""The loss of one PPO micro-batch and the statistics row logged for it.

Policy loss (PPO clip, https://arxiv.org/abs/1707.06347), optional clipped value loss, an entropy
bonus and GRPO's in-loss KL to the reference (k3, https://arxiv.org/abs/2402.03300), all divided by
the whole mini-batch's normaliser (see `micro.loss_normaliser`), so micro-batches sum to its loss.
`ppo.ent_cap` counts each token's entropy in the bonus up to the cap: the bonus stops pushing a token
there, so it cannot run the policy away into near-uniform noise (the logged entropy stays uncapped).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rlhf_app.rl.core import aggregate_loss, kl_penalty, policy_loss, value_loss


class CriticTerms(NamedTuple):
    """What the value loss reads, each (m, R): the critic's values with grad, the rollout's, the returns."""

    values: torch.Tensor
    old_values: torch.Tensor
    returns: torch.Tensor


def micro_batch_loss(ppo, alg, logprobs: torch.Tensor, entropy: torch.Tensor, old_logprobs: torch.Tensor,
                     advantages: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor,
                     norm, critic: CriticTerms | None = None) -> tuple[torch.Tensor, dict]:
    """-> (loss, row) for m episodes of a mini-batch of `tokens` policy tokens; `norm` is its normaliser
    under `alg.loss_agg_mode` (tokens or sequences).

    logprobs, entropy (m, R) from the policy with grad; old_logprobs, advantages, ref_logprobs, mask
    (m, R) from the rollout, `mask` the policy's tokens (tool results 0: no loss, KL, entropy or value
    on them); `critic` (a model with a critic: GAE) adds the clipped value loss.
    loss is a scalar tensor; row maps each logged key to a scalar tensor, per-token means weighted by
    this micro-batch's share of the mini-batch's tokens, so rows sum to the mini-batch's.
    """
    pg_loss, pg_clip, approx_kl = policy_loss(
        logprobs, old_logprobs, advantages, mask, ppo.cliprange,
        alg.cliprange_high, alg.importance_sampling_level, alg.loss_agg_mode, norm)
    mb_entropy = aggregate_loss(entropy, mask, "token-mean", tokens)
    bonus = mb_entropy if ppo.ent_cap is None else aggregate_loss(entropy.clamp(max=ppo.ent_cap), mask, "token-mean",
                                                                    tokens)
    loss = pg_loss - ppo.ent_coef * bonus
    share = mask.sum() / tokens  # per-token means of this micro-batch, weighted
    row = {"loss/policy_avg": pg_loss, "policy/clipfrac_avg": pg_clip * share,
           "policy/approxkl_avg": approx_kl * share, "policy/entropy_avg": mb_entropy}
    if critic is not None:
        vf_loss, vf_clip = value_loss(critic.values, critic.old_values, critic.returns, mask, ppo.cliprange_value,
                                      tokens)
        loss = loss + ppo.vf_coef * vf_loss
        row.update({"loss/value_avg": vf_loss, "val/clipfrac_avg": vf_clip * share})
    if alg.beta:  # GRPO's KL term: k3 to the reference, inside the loss
        kl_loss = aggregate_loss(kl_penalty(logprobs, ref_logprobs, "k3"), mask, alg.loss_agg_mode, norm)
        loss = loss + alg.beta * kl_loss
        row["loss/kl_avg"] = kl_loss
    return loss, row
