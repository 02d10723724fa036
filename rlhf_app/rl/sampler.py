"""Which prompts each update sees: endless, resumable, seeded batches of dataset rows, sharded over processes."""

from __future__ import annotations

import torch


class PromptSampler:
    """Endless, resumable batches of dataset rows: a fresh seeded permutation every epoch.

    Each process takes its own slice of every global batch, so N processes together see the
    same prompts one process would see with an N times larger batch. With `num_generations` G,
    a batch of `batch_size` episodes holds batch_size / G prompts, each repeated G times in a row:
    a group is consecutive and never straddles processes. The dataset must hold one global batch
    of prompts: `preflight.check_prompts_fill_a_batch` says so before training starts.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_generations: int = 1):
        if batch_size % num_generations:
            raise ValueError(f"a batch of {batch_size} episodes cannot hold whole groups of {num_generations}")
        self.prompts_per_batch = batch_size // num_generations
        global_batch = self.prompts_per_batch * world_size
        self.dataset, self.batch_size, self.seed, self.num_generations = dataset, batch_size, seed, num_generations
        self.rank, self.world_size, self.global_batch = rank, world_size, global_batch
        self.epoch, self.position = 0, 0

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.dataset), generator=g).tolist()

    def next_batch(self) -> list[dict]:
        if self.position + self.global_batch > len(self.dataset):
            self.epoch, self.position = self.epoch + 1, 0
        order = self._order()[self.position:self.position + self.global_batch]
        self.position += self.global_batch
        mine = order[self.rank * self.prompts_per_batch:(self.rank + 1) * self.prompts_per_batch]
        return [self.dataset[i] for i in mine for _ in range(self.num_generations)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
