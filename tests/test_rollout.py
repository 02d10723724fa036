"""Generation and forwards on the tiny model: left padding, stop tokens, resumable prompt order."""

import pytest
import torch

from rlhf_app.models import policy as models
from rlhf_app.config import load_config
from rlhf_app.engines.generation import left_pad
from rlhf_app.engines.hf import generate
from rlhf_app.rl.rollout import logprobs_values, ref_logprobs
from rlhf_app.rl.sampler import PromptSampler


@pytest.fixture(scope="module")
def tiny(tiny_cfg):
    cfg = tiny_cfg("ppo.response_length=10")
    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    model, ref = models.build_models(cfg)
    return cfg, tokenizer, model.eval(), ref


def _rows(tokenizer, *texts):
    return [{"prompt": t, "input_ids": tokenizer(t)["input_ids"], "answer": i} for i, t in enumerate(texts)]


def test_left_padding_does_not_change_what_a_prompt_generates(tiny):
    cfg, tokenizer, model, _ = tiny
    cfg.ppo.do_sample = False
    alone = generate(model.policy, tokenizer, _rows(tokenizer, "ab"), cfg.ppo, "cpu")
    batched = generate(model.policy, tokenizer, _rows(tokenizer, "ab", "a much longer prompt here"), cfg.ppo, "cpu")
    cfg.ppo.do_sample = True
    assert torch.equal(alone.response[0], batched.response[0])
    assert batched.query_mask[0].tolist()[:-2] == [0] * (batched.query.shape[1] - 2)  # padded on the left
    assert batched.columns == {"answer": [0, 1]}
    # Log-probs of a left-padded row equal those of the row alone (positions count from the first real token).
    with torch.no_grad():
        lp_alone, v_alone = logprobs_values(model, alone.query, alone.query_mask, alone.response, alone.mask, 1.0)
        lp_batch, v_batch = logprobs_values(model, batched.query, batched.query_mask, batched.response,
                                            batched.mask, 1.0)
    assert torch.allclose(lp_alone[0], lp_batch[0], atol=1e-5)
    assert torch.allclose(v_alone[0], v_batch[0], atol=1e-5)


def test_everything_after_the_first_stop_token_is_masked_and_padded(tiny):
    cfg, tokenizer, model, ref = tiny
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    biased = load_config(["recipe=tiny", "ppo.response_length=10", "ppo.temperature=4.0"]).ppo
    torch.manual_seed(0)
    out = generate(model.policy, tokenizer, _rows(tokenizer, *["the movie"] * 64), biased, "cpu")
    stopped = out.contains_stop.nonzero().flatten().tolist()
    assert stopped and len(stopped) < 64  # at temperature 4 some rows stop early, some never do
    for i in range(64):
        ids = out.response[i].tolist()
        if i in stopped:
            end = ids.index(eos)
            assert out.mask[i].tolist() == [1.0] * (end + 1) + [0.0] * (9 - end)
            assert ids[end + 1:] == [pad] * (9 - end)
        else:
            assert out.mask[i].sum() == 10
    assert all("<eos>" not in c and "<pad>" not in c for c in out.completions)
    # With stop_token=null nothing is cut: every row is 10 real tokens.
    never = load_config(["recipe=tiny", "ppo.response_length=10", "ppo.temperature=4.0", "ppo.stop_token=null"]).ppo
    assert generate(model.policy, tokenizer, _rows(tokenizer, *["the movie"] * 16), never, "cpu").mask.sum() == 160
    # Before any update the reference is the policy itself.
    with torch.no_grad():
        ref_lp = ref_logprobs(ref, out.query, out.query_mask, out.response, out.mask, 4.0)
        lp, _ = logprobs_values(model, out.query, out.query_mask, out.response, out.mask, 4.0)
    assert torch.allclose(ref_lp * out.mask, lp * out.mask, atol=1e-5)


def test_lora_reference_is_the_base_model_with_adapters_off():
    cfg = load_config(["recipe=tiny", "peft.enabled=true", "peft.r=4"])
    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    model, ref = models.build_models(cfg)
    assert ref is None  # no second copy of the weights
    base = models.build_models(load_config(["recipe=tiny"]))[0].policy.eval()
    with torch.no_grad():
        for name, param in model.policy.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)  # adapters that really change the output
    ids, mask = left_pad([tokenizer("the movie was")["input_ids"]], tokenizer.pad_token_id)
    with torch.no_grad():
        adapted = model.eval()(ids, mask)[0]
        with model.reference(None) as reference:
            off = reference(input_ids=ids, attention_mask=mask).logits
        original = base(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(adapted, original, atol=1e-3)
    assert torch.allclose(off, original, atol=1e-5)


def test_prompt_sampler_is_deterministic_disjoint_across_ranks_and_resumable():
    data = [{"i": i} for i in range(10)]
    ranks = [PromptSampler(data, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    first = [[row["i"] for row in s.next_batch()] for s in ranks]
    assert not set(first[0]) & set(first[1])
    single = PromptSampler(data, 4, seed=3)
    assert sorted(sum(first, [])) == sorted(row["i"] for row in single.next_batch())
    a = PromptSampler(data, 4, seed=3)
    for _ in range(3):  # crosses an epoch boundary: 10 rows hold two batches of 4
        a.next_batch()
    b = PromptSampler(data, 4, seed=3)
    b.load_state_dict(a.state_dict())
    assert a.next_batch() == b.next_batch()
