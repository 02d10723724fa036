"""Micro-batches: the token-budget split by hand, and the same loss and gradients whatever the split."""

import json

import pytest
import torch
from accelerate import Accelerator

from rlhf_app.run import run
from rlhf_app.config import ConfigError, load_config
from rlhf_app.rl.micro import micro_batches, pad_to, trim_padding

T = torch.tensor


def test_fixed_micro_batches_are_chunks_in_order():
    got = micro_batches(T([1, 2, 3, 4, 5]), T([1, 1, 1, 1, 1]), batch_size=2)
    assert [g.tolist() for g in got] == [[0, 1], [2, 3], [4]]


def test_token_budget_groups_by_length_and_counts_padded_tokens():
    prompts, responses = T([2, 6, 3, 1, 6]), T([4, 10, 2, 1, 9])  # totals 6, 16, 5, 2, 15
    got = [g.tolist() for g in micro_batches(prompts, responses, batch_size=99, max_tokens=32)]
    # Longest first: {1, 4} costs 2 x (6 + 10) = 32; adding 0 would cost 3 x 16 > 32. Then {0, 2, 3}: 3 x (3 + 4) = 21.
    assert got == [[1, 4], [0, 2, 3]]
    # An episode over the budget goes alone; every episode lands in exactly one micro-batch.
    got = [g.tolist() for g in micro_batches(prompts, responses, batch_size=99, max_tokens=10)]
    assert got == [[1], [4], [0], [2, 3]]


def test_trim_padding_drops_only_columns_that_are_padding_in_every_row():
    query, qmask = T([[0, 0, 5, 6], [0, 7, 8, 9]]), T([[0, 0, 1, 1], [0, 1, 1, 1]])
    response, mask = T([[1, 2, 0, 0], [3, 0, 0, 0]]), T([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    q, qm, r, m = trim_padding(query, qmask, response, mask)
    assert q.tolist() == [[0, 5, 6], [7, 8, 9]] and qm.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert r.tolist() == [[1, 2], [3, 0]] and m.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert pad_to(T([[1.0, 2.0]]), 4).tolist() == [[1.0, 2.0, 0.0, 0.0]]


def test_a_token_budget_must_be_positive():
    with pytest.raises(ConfigError, match="max_tokens_per_micro_batch"):
        load_config(["ppo.max_tokens_per_micro_batch=0"])


@pytest.fixture(scope="module")
def grads_by_split(tmp_path_factory):
    """One update (2 mini-batches of 8, 2 epochs, a learning rate too small to move an fp32 weight) per
    split; the gradient of every optimizer step, read where the trainer clips it, and the logged losses."""
    splits = {"1 micro": ["ppo.per_device_train_batch_size=8", "ppo.gradient_accumulation_steps=1"],
              "2 micro": ["ppo.per_device_train_batch_size=4", "ppo.gradient_accumulation_steps=2"],
              "4 micro": ["ppo.per_device_train_batch_size=2", "ppo.gradient_accumulation_steps=4"],
              "token budget": ["ppo.per_device_train_batch_size=8", "ppo.gradient_accumulation_steps=1",
                               "ppo.max_tokens_per_micro_batch=40"]}
    out = {}
    for name, overrides in splits.items():
        steps = []

        def record(self, params, max_norm, norm_type=2):
            steps.append(torch.cat([p.grad.flatten() for p in params if p.grad is not None]).clone())

        run_dir = tmp_path_factory.mktemp(name.replace(" ", "-"))
        cfg = load_config(["recipe=tiny", f"output_dir={run_dir}", "eval_before_after=false", "ppo.total_episodes=16",
                           "ppo.num_mini_batches=2", "ppo.num_ppo_epochs=2", "ppo.learning_rate=1e-20",
                           "ppo.max_grad_norm=1e9", "ppo.ent_coef=0.01", "ppo.response_length=12", *overrides])
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Accelerator, "clip_grad_norm_", record)
            run(cfg)
        metrics = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
        out[name] = (steps, metrics)
    return out


def test_every_split_gives_the_same_loss_and_gradients(grads_by_split):
    base_steps, base_metrics = grads_by_split["1 micro"]
    assert len(base_steps) == 4  # 2 epochs x 2 mini-batches
    assert base_metrics["val/mean_response_length"] < 12  # some responses stopped early: padding to trim
    for name, (steps, metrics) in grads_by_split.items():
        assert len(steps) == 4, name
        for got, want in zip(steps, base_steps):
            assert got.abs().max() > 0
            assert (got - want).abs().max() <= 1e-5, name
        for key in ("loss/policy_avg", "loss/value_avg", "policy/entropy_avg", "policy/clipfrac_avg"):
            assert abs(metrics[key] - base_metrics[key]) <= 1e-5, (name, key)
