"""Rollout engines: what samples the responses, behind one protocol. The loop never asks which engine
it has: it calls the methods of `Engine` and nothing else.

`hf` samples with the trained model's own `generate` (engines/hf.py). `vllm` runs a colocated vLLM
engine in each training process (engines/vllm_engine.py) and returns the sampled tokens' log-probs,
which its `correction` compares with the trainer's. With `rollout.async=true` the engine is wrapped
in `overlap.Overlapped`, which samples the next update's batch while this one trains. A new engine: a
class with these members (`generation.InTurn` gives `next_rollout` and `checkpoint_state`),
constructed as `Engine(cfg, accelerator, model, tokenizer)`, and its name in `ENGINES` and in
config/train_config.py's ENGINES.
"""

from __future__ import annotations

from typing import Protocol

import torch

from rlhf_app.engines.hf import HFEngine
from rlhf_app.engines.overlap import Overlapped
from rlhf_app.engines.vllm_engine import VLLMEngine
from rlhf_app.rl.rollout import Rollout


class Engine(Protocol):
    name: str
    # True: the engine samples from the trained weights as they are now (the model itself, or a copy synced
    # before every rollout) and needs none of the trainer's log-probs before the update (no importance
    # weights), so a one-step update may take its own log-probs, detached, as the rollout's "as sampled" ones
    # and skip their separate forward (loop.reuses_update_logprobs); `correction` then reads them afterwards.
    on_policy: bool

    def start_at(self, step: int, saved: dict | None = None) -> None:
        """Once, before the first update: `step` is the resumed run's update (0 for a fresh run), `saved`
        this process's `checkpoint_state()` from the checkpoint it resumes (None: none was saved)."""

    def next_rollout(self, sampler, model, more: bool = True) -> tuple[Rollout, float]:
        """This update's batch: prompts from `sampler` (rl/sampler.py), responses from `model`'s weights (or,
        overlapped, the previous update's). `more`: another update follows. -> (rollout, seconds syncing)"""

    def checkpoint_state(self) -> dict | None:
        """What a checkpoint must hold of this process's sampling (a batch in flight), or None."""

    def sync_weights(self, model) -> float:
        """Make the engine sample from `model`'s current weights. -> seconds taken."""

    def generate(self, rows: list[dict], greedy: bool = False) -> Rollout:
        """One response per dataset row (`prompt`, `input_ids`, answer columns)."""

    def correction(self, rollout: Rollout, b_logprobs: torch.Tensor, b_mask: torch.Tensor
                   ) -> tuple[dict, torch.Tensor | None]:
        """(metrics, weights (B, R) or None) from the trainer's log-probs (B, R) of the rollout's tokens:
        what the update logs about the engine, and importance weights that multiply the advantages."""

    def evaluation_engine(self) -> Engine | None:
        """The engine that samples the held-out evaluations (`generate(rows, seed=...)`), or None: the
        policy's own generate under a fixed seed."""

    def close(self) -> None:
        """Once, after the last evaluation, before the process group ends."""


# rollout.engine -> the engine class.
ENGINES: dict[str, type] = {"hf": HFEngine, "vllm": VLLMEngine}


def build_engine(cfg, accelerator, model, tokenizer) -> Engine:
    """The engine `cfg.rollout.engine` names, for `model` (prepared or not), overlapped with training when
    `cfg.rollout.asynchronous`; `start_at` sets a resumed run's update."""
    engine = ENGINES[cfg.rollout.engine](cfg, accelerator, model, tokenizer)
    return Overlapped(engine, cfg.rollout.max_staleness) if cfg.rollout.asynchronous else engine
