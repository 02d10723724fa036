"""Micro-batches of a PPO mini-batch: fixed episode counts, or a token budget (veRL's dynamic batch size).

A mini-batch is one optimizer step; its micro-batches are backward passes whose gradients add up.
The split never changes the gradient: the loss of every micro-batch is divided by the whole
mini-batch's normaliser (`loss_normaliser`), so the pieces sum to the mini-batch's loss. Episodes are
left-padded prompts followed by right-padded responses; each micro-batch drops the columns that are
padding in all of its rows (`trim_padding`), and under a token budget it groups episodes of similar
length, so little compute goes to padding. Packing several episodes into one padding-free row would
need a varlen attention kernel (flash-attention on GPUs); it is not done here.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def micro_batches(prompt_lens: torch.Tensor, response_lens: torch.Tensor, batch_size: int,
                  max_tokens: int | None = None) -> list[torch.Tensor]:
    """Split n episodes into micro-batches. prompt_lens, response_lens (n,) real tokens -> index tensors into 0..n-1.

    Without `max_tokens`: chunks of `batch_size` episodes in the given order. With it: episodes sorted
    by length (longest first), each micro-batch as many as keep rows × (longest prompt + longest
    response), the padded tokens it computes, within `max_tokens`; an episode longer than the budget
    goes alone.
    """
    n = prompt_lens.shape[0]
    if max_tokens is None:
        return [torch.arange(s, min(s + batch_size, n), device=prompt_lens.device) for s in range(0, n, batch_size)]
    order = torch.argsort(prompt_lens + response_lens, descending=True, stable=True).tolist()
    p, r = prompt_lens.tolist(), response_lens.tolist()
    groups, current, width_p, width_r = [], [], 0, 0
    for i in order:
        wp, wr = max(width_p, p[i]), max(width_r, r[i])
        if current and (len(current) + 1) * (wp + wr) > max_tokens:
            groups.append(current)
            current, wp, wr = [], p[i], r[i]
        current.append(i)
        width_p, width_r = wp, wr
    groups.append(current)
    return [torch.tensor(g, dtype=torch.long, device=prompt_lens.device) for g in groups]


def trim_padding(query: torch.Tensor, query_mask: torch.Tensor, response: torch.Tensor, mask: torch.Tensor):
    """Drop the columns that are padding in every row: left of the longest prompt, right of the longest response.

    query, query_mask (m, P), response, mask (m, R) -> the same four, (m, P') and (m, R'), P' <= P, R' <= R.
    Positions count from each row's first real token, so the model's outputs on real tokens are unchanged.
    """
    p_keep = max(int(query_mask.sum(1).max()), 1)
    r_keep = max(int(mask.sum(1).max()), 1)
    return query[:, -p_keep:], query_mask[:, -p_keep:], response[:, :r_keep], mask[:, :r_keep]


def pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad per-token values of a trimmed micro-batch back to the rollout's width with 0. (m, R') -> (m, R)"""
    return F.pad(x, (0, width - x.shape[1]))


def loss_normaliser(mask: torch.Tensor, mode: str = "token-mean") -> torch.Tensor | int:
    """What the mini-batch's loss is divided by under `core.aggregate_loss`'s `mode`: its real tokens for
    token-mean, its sequences for the seq-mean modes. mask (B, R) of the whole mini-batch -> scalar."""
    return mask.sum() if mode == "token-mean" else mask.shape[0]


@contextlib.contextmanager
def accumulating(accelerator, model, last: bool):
    """One micro-batch's backward: gradients are all-reduced across processes only on a mini-batch's last."""
    with contextlib.nullcontext() if last else accelerator.no_sync(model):
        yield


def backward(accelerator, loss: torch.Tensor) -> None:
    """`accelerator.backward` of a loss that is already normalised over the whole mini-batch.

    accelerate (and DeepSpeed) divide every loss by gradient_accumulation_steps, which assumes a
    mini-batch of exactly that many equal micro-batches; the normaliser already did that division.
    """
    accelerator.backward(loss * accelerator.gradient_accumulation_steps)
