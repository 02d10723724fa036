"""The PPO forwards keep only the response positions: same log-probs, values and entropy as the full forward."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from rlhf_app.models import forward
from rlhf_app.models import policy as models
from rlhf_app.config import load_config
from rlhf_app.engines.generation import left_pad
from rlhf_app.rl.rollout import logprobs_values, ref_logprobs


def _full_forward(model, query, qmask, response, rmask, temperature):
    """The straightforward computation: every position through the LM head, all hidden states kept."""
    ids, att = torch.cat([query, response], 1), torch.cat([qmask, rmask.long()], 1)
    out = model.policy(input_ids=ids, attention_mask=att, position_ids=forward.position_ids_of(att),
                       output_hidden_states=True, use_cache=False)
    start = query.shape[1] - 1
    logits = out.logits[:, start:-1].float() / temperature
    if model.critic is None:
        values = model.value_head(out.hidden_states[-1]).squeeze(-1)[:, start:-1]
    else:
        hidden = getattr(model.critic, model.critic.base_model_prefix)(
            input_ids=ids, attention_mask=att, position_ids=forward.position_ids_of(att)).last_hidden_state
        values = model.critic.score(hidden).squeeze(-1)[:, start:-1]
    return selective_log_softmax(logits, response), values, entropy_from_logits(logits)


def _batch(vocab: int, pad: int):
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (2, 7, 4)]
    query, qmask = left_pad(prompts, pad)
    response = torch.randint(3, vocab, (3, 6), generator=g)
    rmask = torch.ones(3, 6)
    rmask[0, 3:] = 0  # a response that stopped early, right-padded
    response[0, 3:] = pad
    return query, qmask, response, rmask


def _tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    return models.PolicyAndValue(LlamaForCausalLM(cfg).eval())


@pytest.fixture(scope="module")
def variants():
    out = {}
    for name, overrides in {"gpt2": [], "separate": ["model.value_model=separate"],
                            "lora": ["peft.enabled=true", "peft.r=4"]}.items():
        cfg = load_config(["recipe=tiny", *overrides])
        model, ref = models.build_models(cfg)
        out[name] = (model.eval(), ref, models.load_tokenizer(cfg.model.name_or_path).pad_token_id)
    out["llama"] = (_tiny_llama(), None, 0)
    return out


@pytest.mark.parametrize("name", ["gpt2", "llama", "separate", "lora"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_only_forward_equals_the_full_forward(variants, name, temperature):
    model, ref, pad = variants[name]
    query, qmask, response, rmask = _batch(model.policy.config.get_text_config().vocab_size, pad)
    with torch.no_grad():
        lp, values, entropy = logprobs_values(model, query, qmask, response, rmask, temperature, with_entropy=True)
        want_lp, want_values, want_entropy = _full_forward(model, query, qmask, response, rmask, temperature)
        ref_lp = ref_logprobs(ref if ref is not None else model.policy, query, qmask, response, rmask, temperature)
    assert lp.shape == values.shape == entropy.shape == response.shape
    assert torch.allclose(lp, want_lp, atol=1e-6, rtol=0)
    assert torch.allclose(values, want_values, atol=1e-6, rtol=0)
    assert torch.allclose(entropy, want_entropy, atol=1e-6, rtol=0)
    if name != "lora":  # before any update the reference is the policy; LoRA's adapters start at zero too
        assert torch.allclose(ref_lp, want_lp, atol=1e-6, rtol=0)


def test_entropy_is_outside_autograd_unless_it_is_in_the_loss(variants):
    model, _, pad = variants["gpt2"]
    query, qmask, response, rmask = _batch(model.policy.config.vocab_size, pad)
    lp, _, entropy = logprobs_values(model, query, qmask, response, rmask, 1.0, with_entropy=True, entropy_grad=False)
    assert lp.requires_grad and not entropy.requires_grad
    _, _, entropy = logprobs_values(model, query, qmask, response, rmask, 1.0, with_entropy=True, entropy_grad=True)
    assert entropy.requires_grad


def test_models_outside_the_plain_head_list_use_their_own_forward(variants, monkeypatch):
    model, _, pad = variants["llama"]
    query, qmask, response, rmask = _batch(97, pad)
    with torch.no_grad():
        fast = logprobs_values(model, query, qmask, response, rmask, 0.7, with_entropy=True)
        monkeypatch.setattr(forward, "PLAIN_HEAD_TYPES", set())
        generic = logprobs_values(model, query, qmask, response, rmask, 0.7, with_entropy=True)
    for a, b in zip(fast, generic):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def _grouped_batch(vocab: int, pad: int, group: int = 3):
    """Two prompts of different lengths (left-padded), each answered `group` times: GRPO's layout."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (5, 2)]
    query, qmask = left_pad(prompts, pad)
    query, qmask = query.repeat_interleave(group, 0), qmask.repeat_interleave(group, 0)
    response = torch.randint(3, vocab, (2 * group, 6), generator=g)
    rmask = torch.ones(2 * group, 6)
    rmask[1, 2:] = 0  # stopped early, right-padded
    response[1, 2:] = pad
    return query, qmask, response, rmask


def test_grpo_groups_run_their_prompt_once():
    """Rows repeating the row before's prompt (tokens and mask) form runs; anything else keeps one pass."""
    query, qmask, response, rmask = _grouped_batch(97, 0)
    ids, att = torch.cat([query, response], 1), torch.cat([qmask, rmask.long()], 1)
    lm = _tiny_llama().policy
    first, run = forward.shared_prompts(lm, ids, att, response.shape[1])
    assert first.tolist() == [0, 3] and run.tolist() == [0, 0, 0, 1, 1, 1]
    assert forward.shared_prompts(lm, ids[[0, 3, 1]], att[[0, 3, 1]], 6) is None  # no prompt follows its twin
    assert forward.shared_prompts(lm, ids, att, ids.shape[1]) is None  # nothing but response
    assert forward.shared_prompts(lm, ids[:1], att[:1], 6) is None
    weight = next(lm.parameters())
    weight.ds_id = 0  # a ZeRO-3 parameter: every call gathers it
    assert forward.shared_prompts(lm, ids, att, 6) is None
    del weight.ds_id
    assert forward.shared_prompts(lm, ids, att, 6) is not None
    lm.config.sliding_window = ids.shape[1] - 1  # the prompt would fall out of a response's window
    assert forward.shared_prompts(lm, ids, att, 6) is None
    lm.config.sliding_window = ids.shape[1]
    assert forward.shared_prompts(lm, ids, att, 6) is not None
    lm.gradient_checkpointing_enable()  # transformers drops the cache under activation checkpointing
    assert forward.shared_prompts(lm, ids, att, 6) is None


@pytest.mark.parametrize("name", ["gpt2", "llama", "lora"])
def test_a_shared_prompt_gives_the_full_forwards_logprobs_values_and_gradients(variants, name, monkeypatch):
    """The prompt's keys and values computed once per group and repeated per row: the full forward's log-probs,
    values and entropy, and the same gradients through the shared prompt, on a batch with left padding and an
    early stop."""
    model, _, pad = variants[name]
    query, qmask, response, rmask = _grouped_batch(model.policy.config.get_text_config().vocab_size, pad)
    prompt_rows = []
    once = forward._prompt_once
    monkeypatch.setattr(forward, "_prompt_once", lambda trunk, ids, *a: prompt_rows.append(len(a[-2])) or once(
        trunk, ids, *a))
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(compute):
        model.zero_grad()
        lp, values, entropy = compute()
        ((lp + values + entropy) * rmask).sum().backward()
        return [t.detach() for t in (lp, values, entropy)], [p.grad.clone() for p in params if p.grad is not None]

    got, got_grads = loss_and_grads(lambda: logprobs_values(model, query, qmask, response, rmask, 0.7,
                                                            with_entropy=True))
    assert prompt_rows == [2]  # two prompts ran, not six rows
    with torch.no_grad():  # the reference's forward takes the same path (here the policy's own weights)
        ref_lp = ref_logprobs(model.policy, query, qmask, response, rmask, 0.7)
    assert prompt_rows == [2, 2]
    want, want_grads = loss_and_grads(lambda: _full_forward(model, query, qmask, response, rmask, 0.7))
    assert torch.allclose(ref_lp * rmask, want[0] * rmask, atol=1e-5, rtol=0)
    for a, b in zip(got, want):
        assert torch.allclose(a * rmask, b * rmask, atol=1e-5, rtol=0)
    assert len(got_grads) == len(want_grads) > 0
    for a, b in zip(got_grads, want_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    model.zero_grad()
