"""Asynchronous rollouts (`rollout.async=true`): the engine samples the batch of update k+1 in a
background thread while update k trains (veRL's one-step-off-policy PPO, AReaL's decoupled PPO).

Each batch comes from the weights synced at the start of the update before the one that trains on
it: one update stale. The trainer's own no-grad forward gives the current policy's log-probs (the
PPO ratio's old policy), and TRL's truncated importance weights exp(current - as sampled), capped,
multiply the advantages: the staleness is corrected where the engine/trainer mismatch already is
(engines/correction.py; `rollout.vllm_importance_sampling_correction` defaults to on here). Logged
per update: `rollout/staleness`, `rollout/importance_weight_mean|std`, and `time/sampling_s`, the
engine's time on this batch, of which the update waited `time/generate_s`.

Why a thread: vLLM runs in this process (on CPU it starts and samples faster so than in its own
processes), its kernels release the GIL, and the weights reach it by reference at each boundary. The main thread never
touches the engine while a batch is in flight: every entry point below waits for it first (a periodic
evaluation through the engine included). On CPU each thread runs `num_threads` torch threads.

`max_staleness=0` keeps the thread but samples after the sync and waits for it: no overlap, the same
results as `rollout.async=false` (tests/test_overlap.py holds them equal).

Resume: a checkpoint waits for the batch in flight and saves it (`checkpoint_state`, one file per
process), the prompt sampler's position already past it; the resumed run trains on it first, exactly
as the unbroken run did.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent import futures
from typing import NamedTuple

import torch

from rlhf_app.rl.rollout import Rollout


class Batch(NamedTuple):
    rollout: Rollout
    staleness: int  # updates between the weights it was sampled from and those that train on it
    sampling_s: float  # the engine's time sampling it


class Overlapped:
    """Any engine of `engines.ENGINES` (vllm: config/train_config.py refuses hf) behind the Engine
    protocol, its rollout step overlapped with training."""

    on_policy = False  # sampled from the weights before the update's: never the trainer's own

    def __init__(self, engine, max_staleness: int = 1):
        self.engine, self.name, self.max_staleness = engine, engine.name, max_staleness
        # A new thread's OpenMP count is the machine's default until torch first runs there; vLLM's CPU attention
        # plans with one count and runs with the other (2 vs 1: "Check failed: thread_num"), so the thread takes
        # this one's count before anything runs in it.
        self._pool = futures.ThreadPoolExecutor(1, thread_name_prefix="rollout", initializer=torch.set_num_threads,
                                                initargs=(torch.get_num_threads(),))
        self._in_flight: futures.Future | None = None  # of a Batch
        self._current: Batch | None = None  # the batch the running update trains on

    def start_at(self, step: int, saved: dict | None = None) -> None:
        """`saved`: what `checkpoint_state` returned when the checkpoint of update `step` was written."""
        pending = (saved or {}).get("batch")
        # The engine's request seeds count rollouts: the batch in flight was one of them.
        self.engine.start_at(step + (pending is not None))
        if pending is not None:
            self._in_flight = futures.Future()
            self._in_flight.set_result(Batch(Rollout(**pending["rollout"]), pending["staleness"],
                                             pending["sampling_s"]))

    def _sample(self, rows: list[dict], staleness: int) -> Batch:
        start = time.perf_counter()
        rollout = self.engine.generate(rows)
        return Batch(rollout, staleness, time.perf_counter() - start)

    def _settle(self) -> None:
        """Wait until nothing is in flight; its batch stays for the update that trains on it."""
        if self._in_flight is not None:
            futures.wait([self._in_flight])

    def next_rollout(self, sampler, model, more: bool = True) -> tuple[Rollout, float]:
        """This update's batch (sampled ahead, or now when nothing was), then, when `more` updates follow,
        the engine synced to `model` and the next batch started. -> (rollout, seconds syncing)"""
        synced, fresh = 0.0, self._in_flight is None
        if fresh:  # the first update, a resumed one with nothing saved in flight, or max_staleness=0
            synced = self.engine.sync_weights(model)
            self._in_flight = self._pool.submit(self._sample, sampler.next_batch(), 0)
        self._current, self._in_flight = self._in_flight.result(), None
        if more and self.max_staleness:
            if not fresh:  # the weights moved since this batch's sync: the next one samples the current ones
                synced += self.engine.sync_weights(model)
            self._in_flight = self._pool.submit(self._sample, sampler.next_batch(), self.max_staleness)
        return self._current.rollout, synced

    def correction(self, rollout: Rollout, b_logprobs: torch.Tensor, b_mask: torch.Tensor):
        """The engine's correction (importance weights for the staleness too), and this batch's staleness."""
        metrics, weights = self.engine.correction(rollout, b_logprobs, b_mask)
        return {**metrics, "rollout/staleness": float(self._current.staleness),
                "time/sampling_s": self._current.sampling_s}, weights

    def checkpoint_state(self) -> dict | None:
        """The batch in flight, waited for: a resumed run trains on it as the unbroken run does."""
        self._settle()
        if self._in_flight is None:
            return None
        batch = self._in_flight.result()
        rollout = {f.name: getattr(batch.rollout, f.name) for f in dataclasses.fields(batch.rollout)}
        return {"batch": {"rollout": rollout, "staleness": batch.staleness, "sampling_s": batch.sampling_s}}

    # ---- the engine itself, for evaluations: used only once the batch in flight is sampled
    def sync_weights(self, model) -> float:
        self._settle()
        return self.engine.sync_weights(model)

    def generate(self, rows: list[dict], greedy: bool = False, **kwargs) -> Rollout:
        self._settle()
        return self.engine.generate(rows, greedy=greedy, **kwargs)

    def evaluation_engine(self):
        """This wrapper where the engine evaluates itself (so evaluations wait for the batch in flight)."""
        inner = self.engine.evaluation_engine()
        return self if inner is self.engine else inner

    def close(self) -> None:
        self._settle()
        self._pool.shutdown(wait=True)
        self.engine.close()
