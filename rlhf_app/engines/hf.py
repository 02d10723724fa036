"""The `hf` engine: transformers' `generate` on the (unwrapped, ZeRO-3-gathered) policy being trained.

It samples with the trained weights themselves: nothing to sync, and the log-probs as sampled are
the trainer's own, so there is nothing to correct.
"""

from __future__ import annotations

import torch
from trl.models.utils import unwrap_model_for_generation

from rlhf_app.engines.generation import (InTurn, finish_rollout, generation_config, left_pad, model_defaults_off,
                                         stop_token_id)
from rlhf_app.engines.tools import tool_loop
from rlhf_app.rl.rollout import Rollout

GC_KWARGS = {"use_reentrant": False}


@torch.inference_mode()
def generate(policy, tokenizer, rows: list[dict], ppo, device, greedy: bool = False, tools=None) -> Rollout:
    """Sample one response per prompt row with `policy.generate` (KV cache, left padding); with `tools` (a
    engines.tools.ToolLoop) one multi-turn episode per row."""
    if tools is not None:
        def turn(contexts: list[list[int]], budgets: list[int], round_: int):
            return _turn(policy, tokenizer, ppo, device, greedy, contexts, budgets), None

        return tools.run(rows, turn, device)
    query, query_mask = left_pad([r["input_ids"] for r in rows], tokenizer.pad_token_id)
    query, query_mask = query.to(device), query_mask.to(device)
    with model_defaults_off(policy):  # sample softmax(logits / T), whatever the model's own defaults say
        out = policy.generate(input_ids=query, attention_mask=query_mask,
                              generation_config=generation_config(ppo, tokenizer, greedy))
    return finish_rollout(query, query_mask, out[:, query.shape[1]:], rows, tokenizer, ppo)


def _turn(policy, tokenizer, ppo, device, greedy: bool, contexts: list[list[int]], budgets: list[int]):
    """One turn per context: at most its budget of new tokens, up to and including the stop token."""
    query, query_mask = left_pad(contexts, tokenizer.pad_token_id)
    config = generation_config(ppo, tokenizer, greedy)
    config.max_new_tokens = max(budgets)
    with model_defaults_off(policy):
        out = policy.generate(input_ids=query.to(device), attention_mask=query_mask.to(device),
                              generation_config=config)
    return [cut(row.tolist(), stop_token_id(ppo, tokenizer), budget)
            for row, budget in zip(out[:, query.shape[1]:], budgets)]


def cut(tokens: list[int], stop_id: int | None, budget: int) -> list[int]:
    """`tokens` up to and including the first stop token, at most `budget` of them."""
    tokens = tokens[:budget]
    return tokens[:tokens.index(stop_id) + 1] if stop_id is not None and stop_id in tokens else tokens


class HFEngine(InTurn):
    name = "hf"
    on_policy = True  # the trained model samples: its log-probs are the trainer's own

    def __init__(self, cfg, accelerator, model, tokenizer):
        self.accelerator, self.model, self.tokenizer, self.ppo = accelerator, model, tokenizer, cfg.ppo
        self.tools = tool_loop(cfg, tokenizer)  # None: one completion per prompt

    def start_at(self, step: int, saved: dict | None = None) -> None:
        """Nothing to do: the trained model's own generate draws from torch's (checkpointed) RNG."""

    def close(self) -> None:
        """The tools' subprocess, if any; the engine itself is the trained model."""
        if self.tools is not None:
            self.tools.close()

    def sync_weights(self, model) -> float:
        self.model = model  # the engine *is* the trained model: nothing to copy
        return 0.0

    def generate(self, rows: list[dict], greedy: bool = False) -> Rollout:
        with unwrap_model_for_generation(self.model, self.accelerator,
                                         gradient_checkpointing_kwargs=GC_KWARGS) as unwrapped:
            return generate(unwrapped.policy, self.tokenizer, rows, self.ppo, self.accelerator.device, greedy=greedy,
                            tools=self.tools)

    def correction(self, rollout: Rollout, b_logprobs: torch.Tensor, b_mask: torch.Tensor):
        """No metrics and no weights: the rollout was sampled by the policy the trainer computes."""
        return {}, None

    def evaluation_engine(self):
        """None: evaluations sample with the policy's own generate under a fixed seed."""
        return None
