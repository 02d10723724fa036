"""The forward PPO reads from a causal LM: logits and last hidden state at the response positions only.

Shared by the policy with its critic (policy.py) and the reference's log-probs (rl/rollout.py); it
needs nothing but torch, so the loop's forwards never load the model-building machinery.
"""

from __future__ import annotations

import torch
from torch import nn


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (its config, generation_config, weights); else `model`."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# Causal LMs whose logits are exactly `get_output_embeddings()(last hidden state)`: for them the head runs on
# the response positions only. Others (logit soft-capping, logit scales) go through their own forward.
PLAIN_HEAD_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "smollm3",
                    "olmo2", "gemma"}


def sharded(param: torch.Tensor) -> bool:
    """A ZeRO-3 parameter or an FSDP2 DTensor: its full weight exists only while gathered."""
    return hasattr(param, "ds_id") or type(param.data).__name__ == "DTensor"


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left padding: positions count from each row's first real token. (B, T) -> (B, T)"""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def last_positions(x: torch.Tensor, response_length: int | None) -> torch.Tensor:
    """The positions that predict the last R tokens: (B, T, ...) -> (B, R, ...); None keeps all T."""
    return x if response_length is None else x[:, x.shape[1] - response_length - 1:-1]


def fp32_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x) in fp32 whatever autocast says: log-probs and values are computed in fp32 (mixed precision
    runs the trunk in bf16/fp16 only). No copy of the weight when it is fp32 (the master weights)."""
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.to(layer.weight.dtype)).float()


def response_forward(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     response_length: int | None, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal LM (or a PEFT model around one) on left-padded rows, keeping only what PPO reads.

    input_ids, attention_mask (B, T) -> (logits (B, R, V) divided by `temperature`, last hidden state (B, R, H))
    at the R = response_length positions that predict the last R tokens. The LM head runs on those positions
    only and the temperature divides its output in place, so no (B, T, V) tensor and no copy of the logits
    is ever made; only the last layer's hidden state is kept.
    """
    base = unwrap_peft(lm)
    position_ids = position_ids_of(attention_mask)
    if base.config.model_type in PLAIN_HEAD_TYPES:
        trunk = getattr(base, base.base_model_prefix)
        groups = shared_prompts(base, input_ids, attention_mask, response_length)
        if groups is None:
            hidden = last_positions(trunk(input_ids=input_ids, attention_mask=attention_mask,
                                          position_ids=position_ids, use_cache=False).last_hidden_state,
                                    response_length)
        else:
            hidden = _prompt_once(trunk, input_ids, attention_mask, position_ids, response_length, *groups)
        logits = fp32_linear(base.get_output_embeddings(), hidden)
        # In place: a linear layer's backward never reads its output, so this costs no (B, R, V) copy.
        return logits if temperature == 1.0 else logits.div_(temperature), hidden
    keep = 0 if response_length is None else response_length + 1
    out = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
             output_hidden_states=True, logits_to_keep=keep)
    logits = out.logits if response_length is None else out.logits[:, :-1]
    return logits.float() / temperature, last_positions(out.hidden_states[-1], response_length)


def shared_prompts(base: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response_length: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Runs of rows with the same prompt (GRPO's groups: the first T - R columns, tokens and mask, equal to the
    row before's). (B, T) -> (each run's first row (U,), each row's run (B,)), or None where no prompt repeats,
    where the whole sequence is response, where the cache cannot carry the prompt (activation checkpointing
    turns transformers' cache off; a sliding window shorter than T), or where the weights are sharded (ZeRO-3
    and FSDP2 gather each layer's weights on every call: two passes would gather them twice)."""
    prompt_length = input_ids.shape[1] - (response_length or input_ids.shape[1])
    window = getattr(base.config, "sliding_window", None)
    if (prompt_length < 1 or input_ids.shape[0] < 2 or (window is not None and window < input_ids.shape[1])
            or getattr(base, "is_gradient_checkpointing", False) or getattr(base, "is_activation_checkpointing", False)
            or sharded(next(base.parameters()))):
        return None
    prompts = torch.cat([input_ids[:, :prompt_length], attention_mask[:, :prompt_length].to(input_ids.dtype)], 1)
    _, run, counts = torch.unique_consecutive(prompts, dim=0, return_inverse=True, return_counts=True)
    if len(counts) == len(prompts):
        return None
    return torch.cumsum(counts, 0) - counts, run


def _prompt_once(trunk: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor, response_length: int, first: torch.Tensor,
                 run: torch.Tensor) -> torch.Tensor:
    """The trunk's last hidden state at the R positions that predict the last R tokens, (B, R, H), computing
    each distinct prompt once: the U prompts first (their keys and values cached), then every row's response
    attending to its prompt's cache, repeated per row. The same numbers as one pass over (B, T), up to float
    rounding, and gradients flow through the shared prompt to each row; a group of G responses to one prompt
    runs its prompt's P tokens once instead of G times."""
    prompt_length = input_ids.shape[1] - response_length
    prompt = trunk(input_ids=input_ids[first, :prompt_length], attention_mask=attention_mask[first, :prompt_length],
                   position_ids=position_ids[first, :prompt_length], use_cache=True)
    cache = prompt.past_key_values
    cache.batch_select_indices(run)
    rest = trunk(input_ids=input_ids[:, prompt_length:], attention_mask=attention_mask,
                 position_ids=position_ids[:, prompt_length:], past_key_values=cache, use_cache=True)
    # The last prompt position predicts the first response token.
    return torch.cat([prompt.last_hidden_state[run, -1:], rest.last_hidden_state[:, :-1]], 1)
