"""GRPO, RLOO, REINFORCE++ (and its baseline), decoupled GAE, loss aggregation, clip-higher and
sequence-level ratios against values worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from rlhf_app.rl.estimators import (ESTIMATORS, AdvantageSettings, gae_decoupled, grpo_advantages,
                                     reinforce_pp_advantages, reinforce_pp_baseline_advantages, rloo_advantages)
from rlhf_app.rl.core import aggregate_loss, gae, log_importance_ratio, policy_loss, token_rewards

T = torch.tensor
EPS = 1e-4  # GRPO's std epsilon (TRL's)


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float), torch.as_tensor(b, dtype=torch.float), atol=tol)


def test_grpo_groups_of_two_and_four_with_ties():
    # Group of 2 [1, 0]: mean 0.5, unbiased std sqrt(0.25 + 0.25) = 0.7071 -> ±0.5 / (0.7071 + 1e-4).
    a = 0.5 / (math.sqrt(0.5) + EPS)
    assert close(grpo_advantages(T([1.0, 0.0]), torch.ones(2, 1), 2), [[a], [-a]])
    # Group of 4 with a tie [2, 2, 0, 4]: mean 2, deviations 0 0 -2 2, unbiased var 8/3.
    b = 2 / (math.sqrt(8 / 3) + EPS)
    assert close(grpo_advantages(T([2.0, 2.0, 0.0, 4.0]), torch.ones(4, 1), 4), [[0.0], [0.0], [-b], [b]])
    # Dr. GRPO (scale_rewards none): the deviations themselves.
    assert close(grpo_advantages(T([2.0, 2.0, 0.0, 4.0]), torch.ones(4, 1), 4, "none"), [[0.0], [0.0], [-2.0], [2.0]])


def test_grpo_equal_rewards_give_zero_advantage_and_padding_stays_zero():
    # Two groups of 2: [1, 0] and the all-equal [5, 5]; early EOS rows spread the value only on real tokens.
    mask = T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv = grpo_advantages(T([1.0, 0.0, 5.0, 5.0]), mask, 2)
    a = 0.5 / (math.sqrt(0.5) + EPS)
    assert close(adv, [[a, a, 0.0], [-a, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    for scale in ("group", "batch", "none"):
        assert close(grpo_advantages(T([3.0, 3.0, 3.0, 3.0]), torch.ones(4, 2), 4, scale), torch.zeros(4, 2))


def test_grpo_batch_scaling_uses_the_whole_batch_std():
    # [1, 0 | 5, 5]: centred by group 0.5 -0.5 0 0; batch std of 1 0 5 5: mean 2.75,
    # squares 3.0625 7.5625 5.0625 5.0625 = 20.75, /3 -> std 2.6300.
    std = math.sqrt(20.75 / 3)
    adv = grpo_advantages(T([1.0, 0.0, 5.0, 5.0]), torch.ones(4, 1), 2, "batch")
    assert close(adv, [[0.5 / (std + EPS)], [-0.5 / (std + EPS)], [0.0], [0.0]])
    # With two processes each holding one group, all_reduce sums the statistics: the same values.
    halves = [T([1.0, 0.0]), T([5.0, 5.0])]
    stats = [torch.stack([T(2.0), h.sum(), (h ** 2).sum()]) for h in halves]
    total = stats[0] + stats[1]
    first = grpo_advantages(halves[0], torch.ones(2, 1), 2, "batch", all_reduce=lambda t: total)
    assert close(first, adv[:2])


def test_rloo_leave_one_out_baseline():
    # [2, 2, 0, 4]: baselines (2+0+4)/3 = 2, 2, (2+2+4)/3 = 8/3, (2+2+0)/3 = 4/3.
    assert close(rloo_advantages(T([2.0, 2.0, 0.0, 4.0]), torch.ones(4, 1), 4), [[0.0], [0.0], [-8 / 3], [8 / 3]])
    # Group of 2 [1, 0]: 1 - 0 and 0 - 1. All equal: zero. Pads stay zero.
    mask = T([[1.0, 0.0], [1.0, 1.0]])
    assert close(rloo_advantages(T([1.0, 0.0]), mask, 2), [[1.0, 0.0], [-1.0, -1.0]])
    assert close(rloo_advantages(T([7.0, 7.0, 7.0, 7.0]), torch.ones(4, 3), 4), torch.zeros(4, 3))


def test_reinforce_pp_discounted_return_whitened_over_real_tokens():
    rewards = T([[0.0, 1.0, 0.0], [3.0, 0.0, 9.0]])  # 9 sits on a pad after an early EOS: ignored
    mask = T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = reinforce_pp_advantages(rewards, mask, gamma=0.9)
    # Returns on real tokens: row 0 [0 + 0.9*1, 1] = [0.9, 1], row 1 [3]. Mean 1.6333, unbiased std 1.18462.
    mean, std = 4.9 / 3, 1.1846237
    assert close(adv, [[(0.9 - mean) / std, (1 - mean) / std, 0.0], [(3 - mean) / std, 0.0, 0.0]], 1e-4)


def test_reinforce_pp_baseline_centres_by_group_then_whitens():
    # Groups [1, 0] and [5, 5]: centred 0.5 -0.5 0 0, spread over real tokens:
    # values .5 .5 | -.5 | 0 0 | 0 0 -> mean 0.5/7 = 0.0714, unbiased std 0.345033.
    mask = T([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    adv = reinforce_pp_baseline_advantages(T([1.0, 0.0, 5.0, 5.0]), mask, 2)
    hi, lo, zero = 1.2421180, -1.6561573, -0.2070197
    assert close(adv, [[hi, hi], [lo, 0.0], [zero, zero], [zero, zero]], 1e-4)


def test_outcome_estimators_sum_the_per_token_kl_rewards():
    # Scores 1 and 0 with KL 1 per token (row 0, two real tokens) and 2 (row 1, EOS at once), kl_coef 0.1:
    # sequence rewards 1 - 0.2 = 0.8 and 0 - 0.2 = -0.2 -> Dr. GRPO advantages ±0.5, RLOO ±1.
    mask = T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    rewards, _ = token_rewards(T([1.0, 0.0]), T([[1.0, 1.0, 0.0], [2.0, 0.0, 0.0]]), mask, kl_coef=0.1)
    s = AdvantageSettings(gamma=1.0, lam_actor=0.95, lam_critic=0.95, num_generations=2, scale_rewards="none")
    adv, returns = ESTIMATORS["grpo"].estimate(rewards, None, mask, s)
    assert returns is None and close(adv, [[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0]])
    assert close(ESTIMATORS["rloo"].estimate(rewards, None, mask, s)[0], [[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


def test_groups_must_be_whole():
    with pytest.raises(ValueError, match="groups of 4"):
        grpo_advantages(T([1.0, 0.0, 1.0]), torch.ones(3, 1), 4)
    with pytest.raises(ValueError, match="groups of 1"):
        rloo_advantages(T([1.0, 0.0]), torch.ones(2, 1), 1)


def test_decoupled_lambda_gae():
    rewards, values, mask = T([[1.0, 2.0, 3.0]]), T([[0.5, 0.5, 0.5]]), torch.ones(1, 3)
    adv, ret = gae_decoupled(rewards, values, mask, gamma=1.0, lam_actor=0.0, lam_critic=1.0)
    # λ=0 actor: one-step TD errors 1 + .5 - .5 = 1, 2 + .5 - .5 = 2, 3 - .5 = 2.5.
    assert close(adv, [[1.0, 2.0, 2.5]])
    # λ=1 critic: Monte-Carlo returns 6, 5, 3 (not 1.5, 2.5, 3 as λ=0 would give).
    assert close(ret, [[6.0, 5.0, 3.0]])
    assert close(gae(rewards, values, mask, 1.0, 0.0)[1], [[1.5, 2.5, 3.0]])
    # Equal λ: exactly today's GAE.
    same = gae_decoupled(rewards, values, mask, 1.0, 0.8, 0.8)
    assert all(close(x, y) for x, y in zip(same, gae(rewards, values, mask, 1.0, 0.8)))


def test_loss_aggregation_modes_and_their_normaliser():
    loss = T([[1.0, 2.0, 3.0], [4.0, 50.0, 60.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # row 1 ended at its first token
    assert close(aggregate_loss(loss, mask, "token-mean"), (6 + 4) / 4)  # 2.5
    assert close(aggregate_loss(loss, mask, "seq-mean-token-mean"), (6 / 3 + 4 / 1) / 2)  # 3
    assert close(aggregate_loss(loss, mask, "seq-mean-token-sum"), (6 + 4) / 2)  # 5
    assert close(aggregate_loss(loss, mask, "seq-mean-token-sum-norm"), (6 + 4) / (2 * 3))  # 1.667
    # Split into one-row micro-batches with the whole batch's count as normaliser, the pieces add up.
    for mode, norm in (("token-mean", 4), ("seq-mean-token-mean", 2), ("seq-mean-token-sum", 2),
                       ("seq-mean-token-sum-norm", 2)):
        pieces = sum(aggregate_loss(loss[i:i + 1], mask[i:i + 1], mode, normaliser=norm) for i in range(2))
        assert close(pieces, aggregate_loss(loss, mask, mode)), mode
    with pytest.raises(ValueError, match="token-mean"):
        aggregate_loss(loss, mask, "sum")


def test_clip_higher_on_both_sides():
    ratios, adv = T([[1.25, 1.5, 0.5, 1.5]]), T([[1.0, 1.0, -1.0, -1.0]])
    logprobs, old, mask = torch.log(ratios), torch.zeros(1, 4), torch.ones(1, 4)
    loss, clipfrac, _ = policy_loss(logprobs, old, adv, mask, cliprange=0.2, cliprange_high=0.28)
    # A>0 r=1.25: max(-1.25, -1.25) unclipped (symmetric 0.2 would clip it to -1.2)
    # A>0 r=1.5: max(-1.5, -1.28) = -1.28 clipped at 1 + 0.28
    # A<0 r=0.5: max(0.5, 0.8) = 0.8 clipped at 1 - 0.2 (the low side is unchanged)
    # A<0 r=1.5: max(1.5, 1.28) = 1.5 unclipped
    assert close(loss, (-1.25 - 1.28 + 0.8 + 1.5) / 4)
    assert close(clipfrac, 0.5)
    loss_sym, clipfrac_sym, _ = policy_loss(logprobs, old, adv, mask, cliprange=0.2)
    assert close(loss_sym, (-1.2 - 1.2 + 0.8 + 1.5) / 4) and close(clipfrac_sym, 0.75)


def test_sequence_level_importance_ratio():
    # Row 0: token log-ratios ln 2 and 0 (the pad's 7 is ignored) -> sequence ratio e^(ln2 / 2) = sqrt 2.
    # Row 1: EOS at once, log-ratio ln 0.25 -> ratio 0.25.
    logprobs = T([[math.log(2.0), 0.0, 7.0], [math.log(0.25), 0.0, 0.0]])
    mask = T([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    log_ratio = log_importance_ratio(logprobs, torch.zeros(2, 3), mask, "sequence")
    assert close(log_ratio.exp() * mask, [[math.sqrt(2), math.sqrt(2), 0.0], [0.25, 0.0, 0.0]])
    adv = T([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    loss, clipfrac, _ = policy_loss(logprobs, torch.zeros(2, 3), adv, mask, cliprange=0.5,
                                    importance_sampling_level="sequence")
    # Row 0, A=1: sqrt 2 inside [0.5, 1.5] -> -1.41421 on both tokens. Row 1, A=-1: max(0.25, 0.5) = 0.5 clipped.
    assert close(loss, (-2 * math.sqrt(2) + 0.5) / 3)
    assert close(clipfrac, 1 / 3)
    # Token level on the same inputs: ratios 2, 1 | 0.25 -> -1.5 (clipped), -1, 0.5 (clipped).
    loss_tok, _, _ = policy_loss(logprobs, torch.zeros(2, 3), adv, mask, cliprange=0.5)
    assert close(loss_tok, (-1.5 - 1.0 + 0.5) / 3)
    with pytest.raises(ValueError, match="token or sequence"):
        log_importance_ratio(logprobs, logprobs, mask, "group")


def test_configs_names_are_the_estimators_and_loss_modes_the_engine_runs():
    """config (no torch) repeats the names: they must stay the ones rl/ declares and accepts."""
    from rlhf_app.config import train_config as config
    from rlhf_app.config.train_config import AlgorithmConfig
    from rlhf_app.rl import core

    assert config.ESTIMATORS == tuple(ESTIMATORS)
    assert config.GROUP_ESTIMATORS == tuple(name for name, e in ESTIMATORS.items() if e.needs_groups)
    for name, estimator in ESTIMATORS.items():
        alg = AlgorithmConfig(advantage_estimator=name, num_generations=2)
        assert alg.uses_critic == estimator.needs_critic, name
    assert config.CRITIC_ESTIMATORS == tuple(n for n, e in ESTIMATORS.items() if e.needs_critic) == ("gae",)
    # Every mode config accepts aggregates, and core names exactly those.
    assert config.LOSS_AGG_MODES == core.LOSS_AGG_MODES
    loss, mask = T([[1.0, 3.0], [2.0, 0.0]]), T([[1.0, 1.0], [1.0, 0.0]])
    values = {mode: core.aggregate_loss(loss, mask, mode).item() for mode in config.LOSS_AGG_MODES}
    # token-mean 6/3; seq-mean-token-mean (2 + 2)/2; seq-mean-token-sum (4 + 2)/2; -norm 6/(2 x 2)
    assert values == {"token-mean": 2.0, "seq-mean-token-mean": 2.0, "seq-mean-token-sum": 3.0,
                      "seq-mean-token-sum-norm": 1.5}
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        core.aggregate_loss(loss, mask, "sum")


def test_frac_reward_zero_std_counts_the_groups_with_equal_scores():
    from types import SimpleNamespace

    from rlhf_app.rl.metrics import objective_metrics
    # Three groups of 2 after reward_clip 2.5: (2.5, 2.5) all clipped, (1, 2.5), (-1, -1) -> 2 of 3 groups tied.
    b_scores = T([2.5, 2.5, 1.0, 2.5, -1.0, -1.0])
    zeros, ones = torch.zeros(6, 3), torch.ones(6, 3)
    rollout = SimpleNamespace(contains_stop=torch.ones(6, dtype=torch.bool))
    args = (rollout, b_scores, b_scores, zeros, zeros, zeros, ones, None, None)
    assert close(objective_metrics(*args, num_generations=2)["frac_reward_zero_std"], 2 / 3)
    # The same scores as groups of 3: (2.5, 2.5, 1), (2.5, -1, -1) -> no group tied.
    assert close(objective_metrics(*args, num_generations=3)["frac_reward_zero_std"], 0.0)
    assert "frac_reward_zero_std" not in objective_metrics(*args)  # no groups (PPO with a critic)
