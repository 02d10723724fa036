"""Rollouts: sample prompts, generate responses, score them, and run the no-grad forwards.

Nothing here knows where prompts or rewards come from: a dataset of rows with `prompt`,
`input_ids` and answer columns, and a reward callable with TRL's signature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, TrainerState
from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

from rlhf_app.models.policy import response_forward

from rlhf_app.rl.core import response_mask
from rlhf_app.engines.sampling import NEUTRAL, model_defaults_off


class PromptSampler:
    """Endless, resumable batches of dataset rows: a fresh seeded permutation every epoch.

    Each process takes its own slice of every global batch, so N processes together see the
    same prompts one process would see with an N times larger batch. With `num_generations` G,
    a batch of `batch_size` episodes holds batch_size / G prompts, each repeated G times in a row:
    a group is consecutive and never straddles processes.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_generations: int = 1):
        if batch_size % num_generations:
            raise ValueError(f"a batch of {batch_size} episodes cannot hold whole groups of {num_generations}")
        self.prompts_per_batch = batch_size // num_generations
        global_batch = self.prompts_per_batch * world_size
        if len(dataset) < global_batch:
            raise ValueError(f"{len(dataset)} training prompts cannot fill a batch of {global_batch}: "
                             "lower ppo.per_device_train_batch_size or add data")
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


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (input_ids (B, P), attention_mask (B, P)), padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


@dataclass
class Rollout:
    """One batch of episodes. B episodes, P prompt tokens (left-padded), R response tokens."""

    query: torch.Tensor  # (B, P) prompt tokens
    query_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    response: torch.Tensor  # (B, R) generated tokens, pad after the first stop token
    mask: torch.Tensor  # (B, R) float, 1 on real response tokens (stop token included)
    contains_stop: torch.Tensor  # (B,) bool, the response ended with the stop token
    prompts: list[str]
    completions: list[str]
    columns: dict  # dataset columns by name, each a list of B values
    logprobs: torch.Tensor | None = None  # (B, R) the engine's log-probs of the sampled tokens (vllm), 0 on pad


def generation_config(ppo, tokenizer, greedy: bool = False) -> GenerationConfig:
    stop_id = stop_token_id(ppo, tokenizer)
    greedy = greedy or not ppo.do_sample
    return GenerationConfig(
        max_new_tokens=ppo.response_length, min_new_tokens=0, do_sample=not greedy,
        # top_k 0 (not None) switches top-k off: None falls back to transformers' default of 50,
        # which would sample from a truncated distribution that the PPO log-probs do not describe.
        temperature=ppo.temperature if not greedy else None, top_k=ppo.top_k if not greedy else None,
        # [] rather than None: None would fall back to the model's own EOS and stop there anyway.
        top_p=ppo.top_p if not greedy else None, eos_token_id=stop_id if stop_id is not None else [],
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, **NEUTRAL,
    )


def stop_token_id(ppo, tokenizer) -> int | None:
    if ppo.stop_token_id is not None:
        return ppo.stop_token_id
    return tokenizer.eos_token_id if ppo.stop_token == "eos" else None


@torch.inference_mode()
def generate(policy, tokenizer, rows: list[dict], ppo, device, greedy: bool = False) -> Rollout:
    """Sample one response per prompt row with `policy.generate` (KV cache, left padding)."""
    query, query_mask = left_pad([r["input_ids"] for r in rows], tokenizer.pad_token_id)
    query, query_mask = query.to(device), query_mask.to(device)
    with model_defaults_off(policy):  # sample softmax(logits / T), whatever the model's own defaults say
        out = policy.generate(input_ids=query, attention_mask=query_mask,
                              generation_config=generation_config(ppo, tokenizer, greedy))
    return finish_rollout(query, query_mask, out[:, query.shape[1]:], rows, tokenizer, ppo)


def finish_rollout(query, query_mask, response, rows: list[dict], tokenizer, ppo, logprobs=None) -> Rollout:
    """Sampled tokens (B, <= R) -> a Rollout: padded to R, pad after the first stop token, decoded.
    `logprobs` (B, <= R), when the engine returns them, is padded and masked the same way."""
    device = query.device
    if response.shape[1] < ppo.response_length:  # generation stopped early for every row
        pad = response.new_full((response.shape[0], ppo.response_length - response.shape[1]),
                                tokenizer.pad_token_id)
        response = torch.cat([response, pad], dim=1)
    stop_id = stop_token_id(ppo, tokenizer)
    mask = response_mask(response, stop_id)
    response = torch.where(mask.bool(), response, tokenizer.pad_token_id)
    contains_stop = (response == stop_id).any(dim=1) if stop_id is not None else \
        torch.zeros(len(rows), dtype=torch.bool, device=device)
    completions = tokenizer.batch_decode(response, skip_special_tokens=True)
    columns = {k: [r[k] for r in rows] for k in rows[0] if k not in ("prompt", "input_ids")}
    if logprobs is not None:
        logprobs = torch.nn.functional.pad(logprobs, (0, response.shape[1] - logprobs.shape[1])) * mask
    return Rollout(query, query_mask, response, mask, contains_stop,
                   [r["prompt"] for r in rows], completions, columns, logprobs)


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


class RewardLog:
    """TRL's logging hooks for reward functions: `log_metric(name, value)` (averaged over the
    batch's calls) and `log_extra(column, values)` (one value per completion, a samples column)."""

    def __init__(self):
        self.metrics: dict[str, list[float]] = {}
        self.extra: dict[str, list] = {}

    def log_metric(self, name: str, value: float) -> None:
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


def evaluate(policy, tokenizer, dataset, reward_fn, ppo, device, batch_size: int = 32, greedy: bool = False,
             trainer_state=None, sample=None) -> dict:
    """Generate for every row of `dataset` and score it: {"mean_score", "extra", "samples"}; `extra`
    holds the reward's extra metrics and what it logged (e.g. rewards/<name>/mean). `sample(rows)
    -> Rollout` replaces `policy.generate` (e.g. a vLLM engine holding the policy's weights)."""
    prompts, completions, scores, columns, log = [], [], [], {}, RewardLog()
    for start in range(0, len(dataset), batch_size):
        rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        rollout = sample(rows) if sample is not None else generate(policy, tokenizer, rows, ppo, device, greedy=greedy)
        scores += score(reward_fn, rollout, device, trainer_state, log).tolist()
        prompts += rollout.prompts
        completions += rollout.completions
        for k, v in rollout.columns.items():
            columns.setdefault(k, []).extend(v)
    extra_fn = getattr(reward_fn, "extra_metrics", None)
    extra = dict(extra_fn(prompts, completions, **columns)) if extra_fn else {}
    # Each function's mean (a batch-averaged std would mislead, so it stays out).
    extra.update({k: v for k, v in log.means().items() if math.isfinite(v) and not k.endswith("/std")})
    return {"mean_score": sum(scores) / max(len(scores), 1), "extra": extra,
            "samples": [{"prompt": p, "completion": c, "score": s}
                        for p, c, s in zip(prompts, completions, scores)]}
