"""The PPO math against values worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from rlhf_app.rl.core import (KLController, adjust_scores, explained_variance, gae, kl_penalty,
                               last_token_index, masked_mean, masked_whiten, policy_loss, response_mask,
                               token_rewards, value_loss)

T = torch.tensor


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float), torch.as_tensor(b, dtype=torch.float), atol=tol)


def test_masked_whiten_uses_real_tokens_only():
    # Real values 1, 2, 3: mean 2, unbiased variance ((1 + 0 + 1) / 2) = 1 -> -1, 0, 1. The pad (100) is ignored.
    x, mask = T([[1.0, 2.0, 3.0, 100.0]]), T([[1.0, 1.0, 1.0, 0.0]])
    assert close(masked_whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]], 1e-4)
    # Without shifting the mean: (x - 2) / 1 + 2 -> 1, 2, 3.
    assert close(masked_whiten(x, mask, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]], 1e-4)
    assert close(masked_mean(x, mask), 2.0)


def test_response_mask_stops_after_first_eos():
    eos = 1
    responses = T([[5, 1, 7, 1], [5, 6, 7, 8], [1, 0, 0, 0]])
    assert close(response_mask(responses, eos), [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert close(response_mask(responses, None), torch.ones(3, 4))
    assert last_token_index(response_mask(responses, eos)).tolist() == [1, 3, 0]


def test_kl_estimators():
    logp, ref = T([-1.0, -2.0]), T([-2.0, -1.0])
    # k1 = log p - log q
    assert close(kl_penalty(logp, ref, "k1"), [1.0, -1.0])
    # k3 = (q/p - 1) - log(q/p): q/p = e^-1 -> e^-1 - 1 + 1 = e^-1; q/p = e -> e - 1 - 1 = e - 2
    assert close(kl_penalty(logp, ref, "k3"), [math.exp(-1), math.e - 2])
    assert close(kl_penalty(logp, logp, "k3"), [0.0, 0.0])
    with pytest.raises(ValueError, match="k1 or k3"):
        kl_penalty(logp, ref, "k2")


def test_score_lands_on_last_real_token_with_and_without_eos():
    eos = 1
    responses = T([[4, 1, 0], [4, 5, 6]])  # row 0 stopped at index 1, row 1 never stopped
    mask = response_mask(responses, eos)
    kl = T([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    rewards, non_score = token_rewards(T([2.0, 3.0]), kl * mask, mask, kl_coef=0.5)
    # non-score = -0.5 * KL on real tokens; the pad after the EOS gets nothing.
    assert close(non_score, [[-0.05, -0.1, 0.0], [-0.25, -0.25, -0.25]])
    # Row 0: score 2 on the EOS (index 1): -0.1 + 2 = 1.9. Row 1: score 3 on index 2: -0.25 + 3 = 2.75.
    assert close(rewards, [[-0.05, 1.9, 0.0], [-0.25, -0.25, 2.75]])


def test_missing_eos_penalty_scale_and_clip():
    scores, stopped = T([1.0, 1.0]), T([True, False])
    assert close(adjust_scores(scores, stopped, missing_eos_penalty=1.5), [1.0, -0.5])
    assert close(adjust_scores(scores, stopped, None, scale=2.0, clip=1.5), [1.5, 1.5])
    assert close(adjust_scores(T([-9.0, 0.2]), stopped, None, clip=1.0), [-1.0, 0.2])


def test_gae_with_padding_and_early_eos():
    gamma, lam = 0.9, 0.8
    rewards = T([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    values = T([[0.5, 0.2, 9.0], [1.0, 5.0, 5.0]])  # values on pads are garbage and must be ignored
    mask = T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    # Row 0, t=1: delta = 1 + 0.9*0 - 0.2 = 0.8 -> A1 = 0.8
    #        t=0: delta = 0 + 0.9*0.2 - 0.5 = -0.32 -> A0 = -0.32 + 0.9*0.8*0.8 = 0.256
    # Row 1 stopped at t=0: A0 = 3 - 1 = 2.  Returns = A + V on real tokens.
    assert close(adv, [[0.256, 0.8, 0.0], [2.0, 0.0, 0.0]])
    assert close(ret, [[0.756, 1.0, 0.0], [3.0, 0.0, 0.0]])


def test_gae_gamma_one_lambda_one_is_return_to_go_minus_value():
    rewards, values, mask = T([[1.0, 2.0, 3.0]]), T([[0.5, 0.5, 0.5]]), torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    assert close(ret, [[6.0, 5.0, 3.0]])
    assert close(adv, [[5.5, 4.5, 2.5]])


def test_policy_loss_both_sides_of_the_clip():
    eps = 0.2
    ratios = T([[1.5, 0.5, 1.5, 0.5]])
    advantages = T([[1.0, -1.0, -1.0, 1.0]])
    old = torch.zeros(1, 4)
    logprobs = torch.log(ratios)
    mask = torch.ones(1, 4)
    loss, clipfrac, approx_kl = policy_loss(logprobs, old, advantages, mask, eps)
    # A>0, r=1.5: max(-1.5, -1.2) = -1.2 (clipped)   A<0, r=0.5: max(0.5, 0.8) = 0.8 (clipped)
    # A<0, r=1.5: max(1.5, 1.2) = 1.5 (unclipped)    A>0, r=0.5: max(-0.5, -0.8) = -0.5 (unclipped)
    assert close(loss, (-1.2 + 0.8 + 1.5 - 0.5) / 4)
    assert close(clipfrac, 0.5)
    assert close(approx_kl, 0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4)
    # A padded position cannot change the loss.
    loss_padded, _, _ = policy_loss(torch.cat([logprobs, T([[5.0]])], 1), torch.zeros(1, 5),
                                    torch.cat([advantages, T([[100.0]])], 1), torch.cat([mask, T([[0.0]])], 1), eps)
    assert close(loss_padded, loss)


def test_value_loss_both_sides_of_the_clip():
    old, values, returns = T([[1.0, 1.0]]), T([[2.0, 2.0]]), T([[3.0, 0.0]])
    loss, clipfrac = value_loss(values, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    # Clipped value = 1.2. Return 3: max((2-3)^2, (1.2-3)^2) = 3.24 (clipped).
    # Return 0: max((2-0)^2, 1.2^2) = 4 (unclipped). Loss = 0.5 * mean(3.24, 4) = 1.81.
    assert close(loss, 1.81)
    assert close(clipfrac, 0.5)


def test_explained_variance():
    returns, mask = T([[1.0, 2.0, 3.0, 4.0]]), torch.ones(1, 4)
    assert close(explained_variance(returns, returns, mask), 1.0)
    # Predicting the mean explains nothing.
    assert close(explained_variance(torch.full((1, 4), 2.5), returns, mask), 0.0)


def test_adaptive_kl_controller():
    ctl = KLController(0.2, adaptive=True, target=6.0, horizon=10000)
    ctl.update(kl=9.0, n_steps=100)  # error clip(9/6 - 1) = 0.2 -> x(1 + 0.2*100/10000) = x1.002
    assert ctl.value == pytest.approx(0.2 * 1.002)
    ctl.update(kl=3.0, n_steps=100)  # error clip(-0.5) = -0.2 -> x0.998
    assert ctl.value == pytest.approx(0.2 * 1.002 * 0.998)
    ctl.update(kl=6.6, n_steps=1000)  # error 0.1 -> x1.01
    assert ctl.value == pytest.approx(0.2 * 1.002 * 0.998 * 1.01)
    fixed = KLController(0.2)
    fixed.update(kl=100.0, n_steps=100)
    assert fixed.value == 0.2
    restored = KLController(0.0, adaptive=True)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
