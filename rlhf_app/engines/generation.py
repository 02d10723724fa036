"""What both engines share: the rollout step in turn with training (`InTurn`), the stop token, left-padded
prompts, sampled tokens made into a Rollout; and for transformers' `generate`, a GenerationConfig that
samples exactly softmax(logits / temperature).

transformers fills every generation field a `GenerationConfig` leaves unset (None) from the model's
own `generation_config.json`, so a model that ships `repetition_penalty` or `no_repeat_ngram_size`
(Qwen2.5-Instruct does) would sample from a distribution the trainer never computes. Two guards:
`NEUTRAL` sets every logits processor transformers could inherit to its no-op value, and
`model_defaults_off` hides the model's generation_config during `generate` for those whose only
no-op value is None (bad words, forced and suppressed tokens, sequence bias, watermarking, ...).
"""

from __future__ import annotations

import contextlib

import torch
from transformers import GenerationConfig

from rlhf_app.models.forward import unwrap_peft
from rlhf_app.rl.core import response_mask
from rlhf_app.rl.rollout import Rollout

class InTurn:
    """The rollout step of an engine that samples in turn with training (hf, vllm): the next prompts,
    the engine synced to the policy, their responses. engines/overlap.py overlaps it with training."""

    def next_rollout(self, sampler, model, more: bool = True) -> tuple[Rollout, float]:
        """The batch of this update, sampled from `model`'s current weights. -> (rollout, seconds syncing)"""
        rows = sampler.next_batch()
        synced = self.sync_weights(model)
        return self.generate(rows), synced

    def checkpoint_state(self) -> dict | None:
        """Nothing of this process's sampling is in flight at an update boundary."""
        return None


# Every processor field with a non-None no-op value (transformers' `_get_logits_processor`).
NEUTRAL = dict(
    repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0,
    typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, guidance_scale=1.0,
    renormalize_logits=False, remove_invalid_values=False, num_beams=1, length_penalty=1.0,
)


def stop_token_id(ppo, tokenizer) -> int | None:
    """The token that ends a response: ppo.stop_token_id, else the EOS with ppo.stop_token=eos, else None."""
    if ppo.stop_token_id is not None:
        return ppo.stop_token_id
    return tokenizer.eos_token_id if ppo.stop_token == "eos" else None


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


@contextlib.contextmanager
def model_defaults_off(policy):
    """Generate with no fallback to the model's generation_config; the model keeps (and saves) its own."""
    model = unwrap_peft(policy)  # its generation_config is the one generate reads
    own = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = own


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
