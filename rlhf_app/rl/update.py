"""One PPO update: epochs over shuffled mini-batches (one optimizer step each), each mini-batch
a gradient accumulation over micro-batches (see micro.py for why any split gives the same gradient).

Prefixes follow cleanrl: `b_` for the whole rollout batch, `mb_` for a mini- or micro-batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rlhf_app.rl.losses import CriticTerms, micro_batch_loss
from rlhf_app.rl.micro import accumulating, backward, loss_normaliser, micro_batches, pad_to, trim_padding
from rlhf_app.rl.rollout import logprobs_values


class UpdateBatch(NamedTuple):
    """The rollout as the update reads it: n episodes, P prompt and R response tokens."""

    query: torch.Tensor  # (n, P)
    query_mask: torch.Tensor  # (n, P)
    response: torch.Tensor  # (n, R)
    mask: torch.Tensor  # (n, R) every real response token: attention, and what a micro-batch computes
    logprobs: torch.Tensor  # (n, R) as sampled; filled in by the update itself when it reuses its own
    advantages: torch.Tensor  # (n, R)
    ref_logprobs: torch.Tensor  # (n, R)
    values: torch.Tensor | None  # (n, R), None without a critic
    returns: torch.Tensor | None  # (n, R), None without a critic
    policy_mask: torch.Tensor | None = None  # (n, R) the tokens the policy wrote (Rollout.policy_mask); None: mask

    def loss_mask(self) -> torch.Tensor:
        """What the losses, their normalisers and statistics count: the policy's tokens. -> (n, R)"""
        return self.mask if self.policy_mask is None else self.policy_mask


class Optimization(NamedTuple):
    """What takes an optimizer step: the trainable parameters (for clipping), the optimizer, its schedule."""

    params: list
    optimizer: torch.optim.Optimizer
    scheduler: object


def shuffled_groups(n: int, group: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random order of n episodes that keeps each group of `group` consecutive ones together, drawn from
    `generator` (a CPU one; None: torch's global generator). -> (n,)"""
    if group == 1:
        return torch.randperm(n, generator=generator).to(device)
    starts = torch.randperm(n // group, generator=generator) * group
    return (starts[:, None] + torch.arange(group)).flatten().to(device)


def ppo_update(cfg, accelerator, model, opt: Optimization, batch: UpdateBatch, reuse_logprobs: bool,
               shuffle_seed: int | None = None) -> tuple[list[torch.Tensor], list[str]]:
    """ppo.num_ppo_epochs passes over the batch in mini-batches of whole groups, one optimizer step each.

    `reuse_logprobs`: the rollout's log-probs are the update's own, detached (see loop.reuses_update_logprobs):
    written into `batch.logprobs` in place as each micro-batch computes them.
    `shuffle_seed`: the mini-batches' shuffles draw from a generator of their own seeded with it (None: torch's
    global one). -> (one stats row (k,) per mini-batch, the k keys of a row)."""
    ppo, n = cfg.ppo, batch.response.shape[0]
    generator = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    mini_batch = ppo.local_batch_size // ppo.num_mini_batches
    stats = []
    for _ in range(ppo.num_ppo_epochs):
        order = shuffled_groups(n, cfg.algorithm.group_size, accelerator.device, generator)
        for mb_start in range(0, n, mini_batch):
            row, keys = _mini_batch(cfg, accelerator, model, batch, order[mb_start:mb_start + mini_batch],
                                    reuse_logprobs)
            if ppo.max_grad_norm:
                accelerator.clip_grad_norm_(opt.params, ppo.max_grad_norm)
            opt.optimizer.step()
            opt.scheduler.step()
            opt.optimizer.zero_grad()
            stats.append(row)
    return stats, keys


def _mini_batch(cfg, accelerator, model, batch: UpdateBatch, mb_idx: torch.Tensor, reuse_logprobs: bool):
    """The gradients of one mini-batch (episodes `mb_idx`), accumulated over its micro-batches.
    -> (the stats row summed over micro-batches (k,), its keys)."""
    ppo, alg, b_mask, b_policy = cfg.ppo, cfg.algorithm, batch.mask, batch.loss_mask()
    # Every micro-batch's loss is divided by the mini-batch's policy tokens: any split, the same gradient.
    mb_tokens = loss_normaliser(b_policy[mb_idx])
    mb_norm = loss_normaliser(b_policy[mb_idx], alg.loss_agg_mode)  # sequences for the seq-mean modes
    # The token budget counts what a forward computes: every real token, tool results included.
    micros = micro_batches(batch.query_mask[mb_idx].sum(1), b_mask[mb_idx].sum(1),
                           ppo.per_device_train_batch_size, ppo.max_tokens_per_micro_batch)
    mb_stats = 0
    for k, micro in enumerate(micros):
        mb = mb_idx[micro]
        with accumulating(accelerator, model, last=k == len(micros) - 1):
            loss, row = _micro_batch_loss(cfg, model, batch, mb, mb_tokens, mb_norm, reuse_logprobs)
            backward(accelerator, loss)
        mb_stats = mb_stats + torch.stack(list(row.values())).detach()
    return mb_stats, list(row)


def _micro_batch_loss(cfg, model, batch: UpdateBatch, mb: torch.Tensor, mb_tokens, mb_norm, reuse_logprobs: bool):
    """The forward of episodes `mb` with grad, on their trimmed columns, and their loss; `mb_tokens` and
    `mb_norm` are the mini-batch's normalisers (micro.loss_normaliser). -> (loss, row)"""
    ppo, width = cfg.ppo, batch.mask.shape[1]
    mb_mask = batch.loss_mask()[mb]  # the policy's tokens; the forward attends to every real one
    logprobs, values, entropy = logprobs_values(
        model, *trim_padding(batch.query[mb], batch.query_mask[mb], batch.response[mb], batch.mask[mb]),
        ppo.temperature, with_entropy=True, entropy_grad=ppo.ent_coef != 0)
    mb_logprobs, mb_entropy = pad_to(logprobs, width), pad_to(entropy, width)
    if reuse_logprobs:
        batch.logprobs[mb] = mb_logprobs.detach() * mb_mask
    critic = None if batch.values is None else CriticTerms(pad_to(values, width), batch.values[mb], batch.returns[mb])
    return micro_batch_loss(ppo, cfg.algorithm, mb_logprobs, mb_entropy, batch.logprobs[mb], batch.advantages[mb],
                            batch.ref_logprobs[mb], mb_mask, mb_tokens, mb_norm, critic)
