"""The reference's NLL a token of the held-out completions (eval/ref_nll): the text check beside the share."""

import math

import pytest
import torch

from rlhf_app.config import load_config
from rlhf_app.engines.generation import left_pad
from rlhf_app.evaluation import ReferenceNLL, eval_metrics
from rlhf_app.models import policy as models
from rlhf_app.rl.rollout import Rollout


def _rollout(pad: int, vocab: int) -> Rollout:
    g = torch.Generator().manual_seed(0)
    query, qmask = left_pad([torch.randint(3, vocab, (n,), generator=g).tolist() for n in (2, 5)], pad)
    response = torch.randint(3, vocab, (2, 4), generator=g)
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    response[0, 2:] = pad  # stopped early, right-padded
    tool_mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0]])  # row 1's token 1: a tool result
    return Rollout(query, qmask, response, mask, torch.tensor([True, False]), ["a", "b"], ["c", "d"], {},
                   tool_mask=tool_mask)


def _by_hand(lm, rollout: Rollout) -> float:
    """Each counted token's -log p under `lm`, one unpadded sequence at a time, over the counted tokens."""
    total, count = 0.0, 0
    for q, qm, r, m in zip(rollout.query, rollout.query_mask, rollout.response, rollout.policy_mask()):
        prompt = q[qm.bool()].tolist()
        ids = torch.tensor([prompt + r.tolist()])
        logp = torch.log_softmax(lm(input_ids=ids).logits[0].float(), -1)
        for t in range(len(r)):
            if m[t]:
                total -= logp[len(prompt) + t - 1, r[t]].item()
                count += 1
    return total / count


def test_ref_nll_is_the_reference_models_nll_of_the_policys_tokens_with_the_adapters_off():
    cfg = load_config(["recipe=tiny", "peft.enabled=true", "peft.r=4"])
    model, _ = models.build_models(cfg)
    model.eval()
    with torch.no_grad():  # LoRA's B starts at zero: move it, so the policy is not its reference
        for name, p in model.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    pad = models.load_tokenizer(cfg.model.name_or_path).pad_token_id
    rollout = _rollout(pad, model.policy.config.vocab_size)
    nll = ReferenceNLL(model)
    nll.add(rollout)
    nll.add(rollout)  # a second batch: the mean is over all counted tokens (5 + 5 here)
    with torch.no_grad(), model.policy.disable_adapter():
        reference = _by_hand(model.policy, rollout)
    with torch.no_grad():
        policy = _by_hand(model.policy, rollout)
    assert nll.tokens == 10
    assert nll.result() == {"ref_nll": pytest.approx(reference, rel=1e-4)}
    assert abs(reference - policy) > 1e-3  # the adapters were really off


def test_no_adapters_no_reference_at_hand_no_figure():
    model, _ = models.build_models(load_config(["recipe=tiny"]))
    nll = ReferenceNLL(model)
    assert nll.wrap(len) is len and nll.result() == {}


def test_eval_metrics_carry_the_ref_nll():
    result = {"mean_score": 0.5, "extra": {}, "ref_nll": 3.64,
              "samples": [{"prompt": "A", "completion": "great fun", "score": 1.0}]}
    assert eval_metrics(result)["eval/ref_nll"] == 3.64
    assert math.isclose(eval_metrics(result)["eval/distinct_word_share"], 1.0)
