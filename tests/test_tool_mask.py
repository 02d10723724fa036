"""Tool results inside a response are not the policy's: hand-computed GAE, GRPO, every loss_agg_mode,
KL and entropy on episodes with two tool spans, each against the same episode with its tool turns removed.

Episodes (R = 10; p: a token the policy wrote, T: a tool result, .: padding):
  A  p p T T p p T T p .   two tool calls, then the policy's answer
  B  p p T T p p T T T .   the second tool result ends the episode (the iteration limit)
"""

import math

import pytest
import torch

from rlhf_app.config import load_config
from rlhf_app.rl.core import (LOSS_AGG_MODES, gae, last_token_index, policy_loss, policy_tokens, stopped,
                              token_rewards)
from rlhf_app.rl.estimators import ESTIMATORS, grpo_advantages, settings_from
from rlhf_app.rl.loop import _advantages
from rlhf_app.rl.losses import micro_batch_loss
from rlhf_app.rl.metrics import objective_metrics
from rlhf_app.rl.micro import loss_normaliser
from rlhf_app.rl.rollout import Rollout

T = torch.tensor
REAL = [1.0] * 9 + [0.0]
TOOL_A = [1.0, 1, 0, 0, 1, 1, 0, 0, 1, 1]  # padded with 1 after the episode, as TRL pads tool_mask
TOOL_B = [1.0, 1, 0, 0, 1, 1, 0, 0, 0, 1]
GARBAGE = 50.0  # what tool positions hold in every input: any leak shows


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float), torch.as_tensor(b, dtype=torch.float), atol=tol)


def compress(x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """Each row's policy tokens moved left, zeros after: the episode as if its tool turns were not there."""
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        kept = x[i][policy[i].bool()]
        out[i, :len(kept)] = kept
    return out


def spread(rows: list[list[float]], policy: torch.Tensor, fill: float = GARBAGE) -> torch.Tensor:
    """Per-policy-token values of each row placed on its policy positions, `fill` everywhere else."""
    out = torch.full(policy.shape, fill)
    for i, row in enumerate(rows):
        out[i, policy[i].bool()] = T(row)
    return out


def test_policy_tokens_last_policy_token_and_stop():
    mask, tool = T([REAL, REAL]), T([TOOL_A, TOOL_B])
    policy = policy_tokens(mask, tool)
    assert policy.tolist() == [[1, 1, 0, 0, 1, 1, 0, 0, 1, 0], [1, 1, 0, 0, 1, 1, 0, 0, 0, 0]]
    assert policy_tokens(mask, None) is mask
    assert last_token_index(policy).tolist() == [8, 5]
    assert last_token_index(T([[0.0, 0.0]])).tolist() == [0]
    # The stop token (9) counts only as the policy's last token: A's answer ends with it; B's last tool result
    # does, but the policy's last token (2, at 5) is not a stop token: B was cut by the iteration limit.
    response = T([[1, 2, 7, 9, 1, 2, 7, 9, 9, 0], [1, 2, 7, 9, 1, 2, 7, 8, 9, 0]])
    assert stopped(response, policy, 9).tolist() == [True, False]
    assert stopped(response, mask, 9).tolist() == [True, True]  # what the whole-episode mask would say


def test_gae_bootstraps_across_tool_spans_by_hand():
    """γ = λ = 0.5, score 1, no KL. A's policy values 0.5, 0.2, -0.1, 0.4, 0.3: δ = 0.7, -0.25, 0.3, -0.25,
    -0.4 backwards; advantages A_t = δ_t + 0.25·A_{t+1}. B: the score lands on its last policy token (5)."""
    mask, tool = T([REAL, REAL]), T([TOOL_A, TOOL_B])
    policy = policy_tokens(mask, tool)
    values = spread([[0.5, 0.2, -0.1, 0.4, 0.3], [0.5, 0.2, -0.1, 0.4]], policy)
    rewards, _ = token_rewards(T([1.0, 1.0]), torch.zeros(2, 10), policy, kl_coef=0.0)
    assert rewards.nonzero().tolist() == [[0, 8], [1, 5]]
    adv, ret = gae(rewards, values, policy, 0.5, 0.5)
    want_adv = spread([[-0.444921875, -0.1796875, 0.28125, -0.075, 0.7], [-0.434375, -0.1375, 0.45, 0.6]], policy, 0.0)
    want_ret = spread([[0.055078125, 0.0203125, 0.18125, 0.325, 1.0], [0.065625, 0.0625, 0.35, 1.0]], policy, 0.0)
    assert close(adv, want_adv) and close(ret, want_ret)
    # The same episodes without their tool turns give the same numbers on the policy's tokens.
    c_mask = compress(policy, policy)
    c_adv, c_ret = gae(compress(rewards, policy), compress(values * policy, policy), c_mask, 0.5, 0.5)
    assert close(compress(adv, policy), c_adv) and close(compress(ret, policy), c_ret)
    # The whole-episode mask would discount across the tool spans and read their values: different.
    assert not close(gae(rewards, values, mask, 0.5, 0.5)[0], want_adv, 1e-2)


def _rollouts(tool_mask):
    """Four episodes in groups of two (A, plain, B, plain) and the same four with the tool turns removed."""
    plain = [1.0] * 6 + [0.0] * 4
    mask = T([REAL, plain, REAL, plain])
    tool = None if tool_mask is None else T([TOOL_A, [1.0] * 10, TOOL_B, [1.0] * 10])
    policy = policy_tokens(mask, tool)
    response = torch.arange(1, 11).repeat(4, 1) * mask.long()

    def rollout(m, tm, resp):
        return Rollout(None, None, resp, m, T([True, False, True, True]), ["p"] * 4, ["c"] * 4, {}, None, tm)
    return rollout(mask, tool, response), rollout(compress(policy, policy), None, compress(response, policy)), policy


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("whiten_rewards", [False, True])
def test_every_estimator_sees_only_the_policy_tokens(estimator, whiten_rewards):
    """Every estimator (and the KL in the reward, the score's place, missing_eos_penalty, reward whitening) gives
    the tool episode's policy tokens what it gives the episode without its tool turns, and tool tokens 0."""
    cfg = load_config(["recipe=tiny", f"algorithm.advantage_estimator={estimator}", "algorithm.num_generations=2",
                       "ppo.per_device_train_batch_size=4", "ppo.missing_eos_penalty=1.0", "ppo.gamma=0.9",
                       "ppo.lam=0.8", f"ppo.whiten_rewards={str(whiten_rewards).lower()}"])
    est, settings = ESTIMATORS[estimator], settings_from(cfg)
    full, short, policy = _rollouts("tools")
    g = torch.Generator().manual_seed(0)
    logprobs, ref, values = (torch.randn(4, 10, generator=g) for _ in range(3))
    scores = T([1.0, 0.0, 0.5, 2.0])
    # As the loop hands them over: log-probs and values zero off the policy's tokens (loop._rollout_forwards).
    got = _advantages(cfg.ppo, est, settings, 0.1, full, scores, logprobs * policy, ref * policy, values * policy)
    want = _advantages(cfg.ppo, est, settings, 0.1, short, scores, compress(logprobs, policy),
                       compress(ref, policy), compress(values, policy))
    for name, g_t, w_t in zip(("scores", "kl", "non_score", "advantages", "returns"), got, want):
        if g_t is None:
            assert w_t is None and not est.needs_critic
            continue
        if g_t.dim() == 1:
            assert close(g_t, w_t, 1e-5), name
        else:
            assert close(compress(g_t, policy), w_t, 1e-5), name
            assert not (g_t * (1 - policy)).any(), f"{name} on tool tokens"
    assert got[0].tolist() == [1.0, -1.0, 0.5, 2.0]  # missing_eos_penalty on the episode that did not stop
    b_kl, b_non_score, b_logprobs = got[1], got[2], logprobs * policy
    objective = objective_metrics(full, scores, got[0], b_kl, b_non_score, b_logprobs, policy, None, None)
    short_obj = objective_metrics(short, scores, want[0], want[1], want[2], compress(logprobs, policy),
                                  short.mask, None, None)
    for key in ("objective/kl", "objective/entropy", "objective/rlhf_reward", "val/mean_response_length"):
        assert close(objective[key], short_obj[key], 1e-5), key
    assert objective["val/mean_response_length"].item() == (5 + 6 + 4 + 6) / 4


def _grpo_batch():
    """Rows: A (5 policy tokens of 9), a plain 3-token and a plain 6-token episode; scores 1, 0, 0 in one group."""
    mask = T([REAL, [1.0] * 3 + [0.0] * 7, [1.0] * 6 + [0.0] * 4])
    policy = policy_tokens(mask, T([TOOL_A, [1.0] * 10, [1.0] * 10]))
    std = math.sqrt(1 / 3)  # unbiased std of (1, 0, 0)
    a, b = (2 / 3) / (std + 1e-4), (1 / 3) / (std + 1e-4)  # GRPO's advantages: a, -b, -b
    return mask, policy, a, b


def _expected(mode: str, per_row: list[float], counts=(5, 3, 6), width=10) -> float:
    """A per-token loss constant within each row, aggregated by hand: token sums, counts of policy tokens."""
    sums = [x * n for x, n in zip(per_row, counts)]
    return {"token-mean": sum(sums) / sum(counts),
            "seq-mean-token-mean": sum(per_row) / len(per_row),
            "seq-mean-token-sum": sum(sums) / len(per_row),
            "seq-mean-token-sum-norm": sum(sums) / (len(per_row) * width)}[mode]


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_grpo_loss_counts_policy_tokens_for_every_mode(mode, level):
    """Ratio 1.1 on A's policy tokens (e^2 on its tool tokens, which must not count), 1 elsewhere: the
    clipped loss per token is -1.1·a on A and +b on the others (inside the clip)."""
    mask, policy, a, b = _grpo_batch()
    adv = grpo_advantages(T([1.0, 0.0, 0.0]), policy, 3)
    assert close(adv, policy * T([[a], [-b], [-b]]), 1e-5)
    old = torch.zeros(3, 10)
    logprobs = old.clone()
    logprobs[0] = torch.where(policy[0].bool(), math.log(1.1), 2.0)
    loss, clipfrac, _ = policy_loss(logprobs, old, adv, policy, 0.2, importance_sampling_level=level,
                                    loss_agg_mode=mode)
    assert close(loss, _expected(mode, [-1.1 * a, b, b]), 1e-5) and clipfrac.item() == 0.0
    # Micro-batches of one episode each, divided by the whole batch's normaliser, sum to the same loss.
    norm = loss_normaliser(policy, mode)
    assert norm == (14 if mode == "token-mean" else 3)
    pieces = sum(policy_loss(logprobs[i:i + 1], old[i:i + 1], adv[i:i + 1], policy[i:i + 1], 0.2,
                             importance_sampling_level=level, loss_agg_mode=mode, normaliser=norm)[0]
                 for i in range(3))
    assert close(pieces, loss, 1e-6)
    # The whole-episode mask would train A's four tool tokens too (their ratio e^2, clipped at 1.2).
    wrong = policy_loss(logprobs, old, grpo_advantages(T([1.0, 0.0, 0.0]), mask, 3), mask, 0.2,
                        importance_sampling_level=level, loss_agg_mode=mode)[0]
    assert not close(wrong, loss, 1e-3)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_kl_and_entropy_terms_count_policy_tokens(mode):
    """Entropy 0.5 on A's policy tokens and 1 on the others' (100 on tool tokens); log p - log ref = 0.2 on
    policy tokens (5 on tool tokens): k3 = e^-0.2 - 1 + 0.2 on each policy token."""
    mask, policy, a, b = _grpo_batch()
    cfg = load_config(["recipe=tiny", f"algorithm.loss_agg_mode={mode}", "algorithm.beta=0.1", "ppo.ent_coef=0.01"])
    entropy = torch.where(policy.bool(), T([[0.5], [1.0], [1.0]]).expand(3, 10), 100.0)
    logprobs = torch.full((3, 10), -1.0)
    ref = torch.where(policy.bool(), -1.2, -6.0)
    adv = grpo_advantages(T([1.0, 0.0, 0.0]), policy, 3)
    loss, row = micro_batch_loss(cfg.ppo, cfg.algorithm, logprobs, entropy, logprobs, adv, ref, policy,
                                 loss_normaliser(policy), loss_normaliser(policy, mode))
    k3 = math.expm1(-0.2) + 0.2
    assert close(row["policy/entropy_avg"], (5 * 0.5 + 9 * 1.0) / 14)
    assert close(row["loss/kl_avg"], _expected(mode, [k3, k3, k3]))
    pg = _expected(mode, [-a, b, b])
    assert close(row["loss/policy_avg"], pg, 1e-5)
    assert close(loss, pg - 0.01 * (5 * 0.5 + 9 * 1.0) / 14 + 0.1 * _expected(mode, [k3, k3, k3]), 1e-5)


def test_no_tool_mask_is_the_same_as_all_ones_bit_for_bit():
    """tool_mask=None and a tool_mask of ones give identical tensors (main's functions were compared
    bit for bit on 300 random right-padded batches while writing this: tests cannot import main)."""
    cfg = load_config(["recipe=tiny", "ppo.whiten_rewards=true", "ppo.missing_eos_penalty=1.0"])
    none, _, policy = _rollouts(None)
    ones = Rollout(**{**none.__dict__, "tool_mask": torch.ones(4, 10)})
    g = torch.Generator().manual_seed(1)
    lp, ref, v = (torch.randn(4, 10, generator=g) * policy for _ in range(3))
    cfg.algorithm.num_generations = 2  # groups of two for the group estimators
    for estimator in ESTIMATORS:
        est = ESTIMATORS[estimator]
        got = _advantages(cfg.ppo, est, settings_from(cfg), 0.1, none, T([1.0, 0, 2, 3]), lp, ref, v)
        want = _advantages(cfg.ppo, est, settings_from(cfg), 0.1, ones, T([1.0, 0, 2, 3]), lp, ref, v)
        for x, y in zip(got, want):
            assert (x is None and y is None) or torch.equal(x, y), estimator
