"""The PPO update on episodes with tool results, through the real update path (ppo_update, micro-batches,
a token budget) on a tiny GPT-2: tool tokens get no gradient and count in no loss, KL, entropy or value;
the checkpoint of asynchronous rollouts carries the tool mask.

Episode 0 (R = 10): p p T T p p T T T .  token 12 appears only in its last tool result, which ends the
episode: it is read by no token the policy wrote, so with the mask its embedding row gets no gradient at
all. Tool results the policy reads later (tokens 7, 8) do get one: the policy conditions on them.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from transformers import GPT2Config, GPT2LMHeadModel

from rlhf_app.config import load_config
from rlhf_app.engines.overlap import Overlapped
from rlhf_app.models.policy import PolicyAndValue
from rlhf_app.rl.core import policy_tokens
from rlhf_app.rl.estimators import grpo_advantages
from rlhf_app.rl.loop import _rollout_forwards
from rlhf_app.rl.rollout import Rollout, logprobs_values
from rlhf_app.rl.update import Optimization, UpdateBatch, ppo_update
from rlhf_app.run_dir import checkpoint as ckpt

T = torch.tensor
QUERY = T([[1, 2, 3], [4, 5, 6], [2, 4, 6]])
RESPONSE = T([[1, 2, 7, 8, 3, 4, 12, 12, 12, 0], [5, 6, 1, 0, 0, 0, 0, 0, 0, 0], [2, 3, 4, 5, 6, 1, 0, 0, 0, 0]])
MASK = T([[1.0] * 9 + [0.0], [1.0] * 3 + [0.0] * 7, [1.0] * 6 + [0.0] * 4])
TOOL = T([[1.0, 1, 0, 0, 1, 1, 0, 0, 0, 1], [1.0] * 10, [1.0] * 10])
POLICY = policy_tokens(MASK, TOOL)  # 4 + 3 + 6 = 13 policy tokens
RATIO = 1.1  # on episode 0's policy tokens; 1 elsewhere


def tiny_model(value_head: bool) -> PolicyAndValue:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=16, n_positions=32, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False)
    return PolicyAndValue(GPT2LMHeadModel(config), value_head=value_head)


class GradientRecorder:
    """In the optimizer's place: keeps each step's gradients and moves no weight."""

    def __init__(self, model):
        self.model, self.steps = model, []

    def step(self):
        self.steps.append({n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None})

    def zero_grad(self):
        self.model.zero_grad(set_to_none=True)


def update(model, policy_mask, mode="token-mean", budget=None, critic=None):
    """One ppo_update of the three episodes as one GRPO group scored 1, 0, 0 (beta 0.1, ent_coef 0.01), old
    log-probs set so the ratio is RATIO on episode 0, 1 elsewhere; references 0.2 below the policy.
    -> (the recorded gradients, {stat: value}, the policy's log-probs and entropy before the update)."""
    overrides = ["recipe=tiny", "algorithm.advantage_estimator=grpo", "algorithm.num_generations=3",
                 "ppo.per_device_train_batch_size=3", "ppo.gradient_accumulation_steps=1", "ppo.num_mini_batches=1",
                 "ppo.num_ppo_epochs=1", "ppo.max_grad_norm=1e9", "ppo.ent_coef=0.01", "algorithm.beta=0.1",
                 f"algorithm.loss_agg_mode={mode}"] + ([f"ppo.max_tokens_per_micro_batch={budget}"] if budget else [])
    cfg = load_config(overrides)
    loss_mask = MASK if policy_mask is None else policy_mask
    with torch.no_grad():
        lp, _, entropy = logprobs_values(model, QUERY, torch.ones_like(QUERY), RESPONSE, MASK, 1.0, with_entropy=True)
    shift = torch.zeros(3, 10)
    shift[0] = math.log(RATIO)
    old = (lp - shift) * loss_mask + (1 - loss_mask) * -30.0  # garbage where nothing may be read
    ref = (lp - 0.2) * loss_mask + (1 - loss_mask) * -30.0
    adv = grpo_advantages(T([1.0, 0.0, 0.0]), loss_mask, 3)
    values, returns = critic if critic is not None else (None, None)
    batch = UpdateBatch(QUERY, torch.ones_like(QUERY), RESPONSE, MASK, old, adv, ref, values, returns, policy_mask)
    recorder = GradientRecorder(model)
    params = [p for p in model.parameters() if p.requires_grad]
    stats, keys = ppo_update(cfg, Accelerator(), model, Optimization(params, recorder, SimpleNamespace(step=int)),
                             batch, reuse_logprobs=False, shuffle_seed=0)
    return recorder.steps, dict(zip(keys, stats[0].tolist())), lp, entropy


def test_tool_tokens_get_no_gradient():
    model = tiny_model(value_head=False)
    [grads], _, _, _ = update(model, POLICY)
    wte = grads["policy.transformer.wte.weight"]
    assert torch.count_nonzero(wte[12]) == 0  # read by no policy token
    assert wte[7].abs().sum() > 0 and wte[8].abs().sum() > 0  # the first tool result, read by tokens 4, 5
    # Without the mask the same episode trains on the tool tokens: row 12 moves.
    [unmasked], _, _, _ = update(model, None)
    assert unmasked["policy.transformer.wte.weight"][12].abs().sum() > 0


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_update_losses_count_policy_tokens_by_hand(mode):
    """GRPO advantages a, -b, -b (a = (2/3)/(std + 1e-4), b = a/2, std = √(1/3)); per token the clipped loss is
    -1.1·a on episode 0 and b on the others; k3 of a 0.2 log-ratio on every policy token; entropy the
    policy's, averaged over its 13 tokens. A token budget of one episode per micro-batch changes nothing."""
    model = tiny_model(value_head=False)
    [grads], stats, _, entropy = update(model, POLICY, mode)
    a = (2 / 3) / (math.sqrt(1 / 3) + 1e-4)
    b, counts = a / 2, (4, 3, 6)

    def aggregate(per_row):
        sums = [x * n for x, n in zip(per_row, counts)]
        return {"token-mean": sum(sums) / 13, "seq-mean-token-mean": sum(per_row) / 3,
                "seq-mean-token-sum": sum(sums) / 3, "seq-mean-token-sum-norm": sum(sums) / 30}[mode]
    k3 = math.expm1(-0.2) + 0.2
    assert stats["loss/policy_avg"] == pytest.approx(aggregate([-RATIO * a, b, b]), abs=1e-5)
    assert stats["loss/kl_avg"] == pytest.approx(aggregate([k3] * 3), abs=1e-5)
    assert stats["policy/entropy_avg"] == pytest.approx(((entropy * POLICY).sum() / 13).item(), abs=1e-5)
    assert stats["policy/clipfrac_avg"] == 0.0
    [split], split_stats, _, _ = update(model, POLICY, mode, budget=12)  # 3 + 9 tokens: one episode each
    for name in grads:
        assert torch.allclose(split[name], grads[name], atol=1e-6), name
    assert split_stats == pytest.approx(stats, abs=1e-6)


def test_value_loss_counts_policy_tokens():
    """Old values = the critic's own, returns 1 on policy tokens and 1000 on tool tokens: the value loss is
    0.5 · mean over the 13 policy tokens of (V - 1)², and the value head's gradient ignores the tool tokens."""
    model = tiny_model(value_head=True)
    with torch.no_grad():
        _, values = logprobs_values(model, QUERY, torch.ones_like(QUERY), RESPONSE, MASK, 1.0)
    returns = POLICY + (1 - POLICY) * 1000.0
    _, stats, _, _ = update(model, POLICY, critic=(values * POLICY, returns))
    want = 0.5 * (((values - 1.0) ** 2) * POLICY).sum().item() / 13
    assert stats["loss/value_avg"] == pytest.approx(want, abs=1e-5)


def test_rollout_forwards_are_zero_on_tool_tokens():
    model = tiny_model(value_head=True)
    ref = GPT2LMHeadModel(model.policy.config)
    ref.load_state_dict(model.policy.state_dict())
    rollout = Rollout(QUERY, torch.ones_like(QUERY), RESPONSE, MASK, T([True] * 3), ["p"] * 3, ["c"] * 3, {},
                      tool_mask=TOOL)
    cfg = load_config(["recipe=tiny", "ppo.local_rollout_forward_batch_size=2"])
    lp, values, ref_lp = _rollout_forwards(cfg, Accelerator(), model, ref, rollout, reuse=False, critic=True)
    with torch.no_grad():
        want_lp, want_values = logprobs_values(model, QUERY, torch.ones_like(QUERY), RESPONSE, MASK,
                                               cfg.ppo.temperature)
    for got, want in ((lp, want_lp), (values, want_values), (ref_lp, want_lp)):
        assert torch.allclose(got, want * POLICY, atol=1e-5)
        assert not (got * (1 - POLICY)).any()


def test_without_recompute_the_old_logprobs_are_the_engines_and_the_policy_runs_no_forward(monkeypatch):
    """rollout.recompute_logprobs=false: the engine's log-probs (here the trainer's plus a mark, so they can be
    told apart) become the old policy's, masked to the policy's tokens; only the reference runs a forward."""
    from rlhf_app.rl import loop

    model = tiny_model(value_head=False)
    ref = GPT2LMHeadModel(model.policy.config)
    ref.load_state_dict(model.policy.state_dict())
    with torch.no_grad():
        want_lp, _ = logprobs_values(model, QUERY, torch.ones_like(QUERY), RESPONSE, MASK, 1.0)
    engine_lp = (want_lp + 0.25) * MASK  # tool results included, as the engine returns them
    rollout = Rollout(QUERY, torch.ones_like(QUERY), RESPONSE, MASK, T([True] * 3), ["p"] * 3, ["c"] * 3, {},
                      logprobs=engine_lp, tool_mask=TOOL)
    cfg = load_config(["recipe=tiny", "rollout.engine=vllm", "rollout.recompute_logprobs=false",
                       "algorithm.advantage_estimator=grpo", "algorithm.num_generations=4"])
    monkeypatch.setattr(loop, "logprobs_values", lambda *a, **k: pytest.fail("the policy's forward ran"))
    lp, values, ref_lp = _rollout_forwards(cfg, Accelerator(), model, ref, rollout, reuse=False, critic=False)
    assert values is None
    assert torch.equal(lp, engine_lp * POLICY)
    assert torch.allclose(ref_lp, want_lp * POLICY, atol=1e-5)


class StandInEngine:
    """A local stand-in for an engine that runs tools: each batch an episode with a tool mask."""

    name, on_policy = "stand-in", False

    def __init__(self):
        self.calls = 0

    def start_at(self, step):
        self.calls = step

    def sync_weights(self, model):
        return 0.0

    def generate(self, rows, greedy=False):
        self.calls += 1
        tool = TOOL[:1].clone()
        tool[0, 1] = 0.0 if self.calls % 2 else 1.0
        return Rollout(QUERY[:1], torch.ones(1, 3), RESPONSE[:1], MASK[:1], T([False]), ["p"], ["c"],
                       {"conversation": [[{"role": "tool", "content": str(self.calls)}]]}, None, tool)

    def correction(self, rollout, b_logprobs, b_mask):
        return {}, None

    def close(self):
        pass


def test_the_batch_in_flight_keeps_its_tool_mask_through_a_checkpoint(tmp_path):
    sampler = SimpleNamespace(next_batch=lambda: [{"prompt": "p"}])
    running = Overlapped(StandInEngine())
    running.start_at(0)
    running.next_rollout(sampler, model=None, more=True)  # trains on batch 1; batch 2 in flight
    torch.save(running.checkpoint_state(), tmp_path / ckpt.ENGINE_STATE.format(0))
    in_flight = running._in_flight.result().rollout
    running.close()
    resumed = Overlapped(StandInEngine())
    resumed.start_at(1, ckpt.load_engine_state(tmp_path, SimpleNamespace(process_index=0)))
    rollout, _ = resumed.next_rollout(sampler, model=None, more=False)
    assert torch.equal(rollout.tool_mask, in_flight.tool_mask) and rollout.tool_mask[0, 1] == 1.0
    assert rollout.columns == in_flight.columns
    resumed.close()
    # A checkpoint written before tool masks existed loads as "every token is the policy's".
    old = {k: v for k, v in in_flight.__dict__.items() if k != "tool_mask"}
    assert Rollout(**old).tool_mask is None and torch.equal(Rollout(**old).policy_mask(), in_flight.mask)
