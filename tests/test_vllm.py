"""The vLLM rollout engine, real vLLM on CPU: weight sync, parity with the hf engine, PPO through it.

Engines start in this process (a few seconds each, one at a time); training runs start in
subprocesses, which free the engine's memory when they end. The 20-update run starts as the module
begins and trains on the second core while the engine tests run here on the first.
"""

import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from rlhf_app import rewards
from rlhf_app.assets import registry as assets
from rlhf_app.data import prompts as data
from rlhf_app.models import policy as models
from rlhf_app import evaluation as periodic_eval
from rlhf_app.config import load_config
from rlhf_app.engines.hf import HFEngine
from rlhf_app.rl.rollout import logprobs_values
from rlhf_app.engines.vllm_engine import EngineError, VLLMEngine, _check_architecture, import_vllm, policy_tensors

import warm

pytestmark = pytest.mark.slow  # each test starts a vLLM engine or trains through one

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "scripts" / "train.py")
LOGPROB_TOLERANCE = 1e-4  # fp32; measured here: 5e-7 (tiny), 1.7e-6 (demo policy)


@pytest.fixture(scope="module", autouse=True)
def vllm():
    """Skips this file where vLLM is not installed (`make setup VLLM_EXTRA=`); imported when a test runs,
    not at collection. The one-line error for that case is in test_engines.py."""
    return pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def accelerator():
    return Accelerator(cpu=True)


def _setup(recipe: str, *extra: str):
    cfg = load_config([f"recipe={recipe}", "ppo.do_sample=false", "ppo.response_length=24", "data.num_train=64",
                       *extra])
    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    model, _ = models.build_models(cfg)
    train, _ = data.load_prompts(cfg, tokenizer)
    return cfg, tokenizer, model, [train[i] for i in range(8)]


def _compare(cfg, accelerator, model, tokenizer, rows):
    """Greedy rollouts of both engines and the trainer's log-probs of vLLM's tokens."""
    engine = VLLMEngine(cfg, accelerator, model, tokenizer)
    try:
        engine.sync_weights(model)
        fast = engine.generate(rows, greedy=True)
    finally:
        del engine
        gc.collect()
    slow = HFEngine(cfg, accelerator, model, tokenizer).generate(rows, greedy=True)
    with torch.no_grad():
        trainer, _ = logprobs_values(model, fast.query, fast.query_mask, fast.response, fast.mask, 1.0)
    return fast, slow, ((trainer * fast.mask - fast.logprobs).abs()).max().item()


def _perturb(params, seed: int = 0, scale: float = 0.02) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("recipe", ["tiny", "demo", "smollm2"])
def test_after_a_sync_greedy_vllm_equals_hf_token_for_token(recipe, accelerator):
    extra = []
    if recipe == "smollm2":
        if not (assets.cache_dir() / "smollm2-135m-instruct").is_dir():
            pytest.skip("asset:smollm2-135m-instruct is not built: python -m rlhf_app.assets.registry build smollm2-135m-instruct")
        recipe, extra = "tiny", ["model.name_or_path=asset:smollm2-135m-instruct", "data.use_chat_template=false"]
    cfg, tokenizer, model, rows = _setup(recipe, *extra)
    # Changed weights, so the engine samples from what it was sent, not from the checkpoint on disk.
    _perturb(model.policy.parameters())
    if model.policy.config.tie_word_embeddings:  # the output layer is sent under its own name
        assert "lm_head.weight" in dict(policy_tensors(model.policy))
    fast, slow, worst = _compare(cfg, accelerator, model, tokenizer, rows)
    assert torch.equal(fast.response, slow.response)
    assert torch.equal(fast.mask, slow.mask) and fast.mask.sum() > 0
    print(f"{recipe}{extra[:1]}: greedy tokens equal, max |vLLM - trainer| log-prob {worst:.1e}")
    assert worst <= LOGPROB_TOLERANCE, worst


def test_lora_is_merged_for_the_copy_only(accelerator):
    cfg, tokenizer, model, rows = _setup("tiny", "peft.enabled=true", "peft.r=4")
    lora = [p for n, p in model.policy.named_parameters() if "lora_B" in n]
    _perturb(lora, scale=0.5)  # B starts at zero: make the adapters change the outputs
    base_before = {n: p.detach().clone() for n, p in model.policy.named_parameters() if "lora_" not in n}
    fast, slow, worst = _compare(cfg, accelerator, model, tokenizer, rows)
    assert torch.equal(fast.response, slow.response) and worst <= LOGPROB_TOLERANCE, worst
    # Without the adapters the policy answers differently, so the sync really carried them.
    with model.policy.disable_adapter():
        plain = HFEngine(cfg, accelerator, model, tokenizer).generate(rows, greedy=True)
    assert not torch.equal(plain.response, fast.response)
    after = {n: p for n, p in model.policy.named_parameters() if "lora_" not in n}
    assert all(torch.equal(base_before[n], after[n]) for n in base_before)  # never merged in place


def test_evaluation_through_the_engine_samples_the_synced_weights_with_its_own_seeds(accelerator):
    from datasets import Dataset

    cfg, tokenizer, model, rows = _setup("tiny")  # greedy: the engine's evaluation must equal the policy's own
    _perturb(model.policy.parameters())  # what the engine loaded from disk differs from what it must evaluate
    dataset, device = Dataset.from_list(rows), accelerator.device
    reward = rewards.build_reward(cfg, device)
    sampled = load_config(["recipe=tiny", "ppo.response_length=24", "data.num_train=64", "ppo.temperature=1.0"])
    engine = VLLMEngine(cfg, accelerator, model, tokenizer)
    engine.start_at(5)  # as a run resumed at update 5
    try:
        fast = periodic_eval.evaluate_policy(cfg, model, tokenizer, dataset, reward, device, engine=engine)
        engine.ppo = sampled.ppo  # sampling now: the evaluation's seeds come from cfg.seed alone
        first, again = (periodic_eval.evaluate_policy(sampled, model, tokenizer, dataset, reward, device, engine=engine)
                        for _ in range(2))
        assert engine.calls == 5  # training's request seeds go on as if no evaluation had run
        engine.generate(rows)
        assert engine.calls == 6
    finally:
        del engine
        gc.collect()
    slow = periodic_eval.evaluate_policy(cfg, model, tokenizer, dataset, reward, device)
    assert [s["completion"] for s in fast["samples"]] == [s["completion"] for s in slow["samples"]]
    assert fast["mean_score"] == pytest.approx(slow["mean_score"])
    assert [s["completion"] for s in first["samples"]] == [s["completion"] for s in again["samples"]]
    assert [s["completion"] for s in first["samples"]] != [s["completion"] for s in fast["samples"]]


def test_a_sampled_batch_longer_than_the_token_budget_is_prefilled_whole_on_cpu(accelerator):
    """32 seeded prompts of 150 tokens (4800 > the engine's 4096-token step budget): vLLM's CPU worker crashed
    ("CPU Generator does not use offset") when it split a seeded prompt's prefill over two steps."""
    cfg = load_config(["recipe=tiny", "ppo.response_length=8", "data.num_train=64", "ppo.temperature=1.0",
                       "data.max_prompt_length=200"])
    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    model, _ = models.build_models(cfg)
    train, _ = data.load_prompts(cfg, tokenizer)
    # 32 distinct prompts: repeated ones would share vLLM's prefix cache and fit in one step.
    rows = [dict(train[i % len(train)]) for i in range(cfg.ppo.local_batch_size)]
    for r in rows:
        r["input_ids"] = (list(r["input_ids"]) * 150)[:150]
    engine = VLLMEngine(cfg, accelerator, model, tokenizer)
    budget = engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    assert len({tuple(r["input_ids"]) for r in rows}) == 32 and sum(len(r["input_ids"]) for r in rows) > budget
    try:
        first, again = engine.generate(rows, seed=7), engine.generate(rows, seed=7)
    finally:
        del engine
        gc.collect()
    assert first.response.shape[0] == 32 and bool((first.mask.sum(1) > 0).all())
    assert torch.equal(first.response, again.response)  # each row's seed, whatever step its prefill ran in


def test_an_architecture_vllm_cannot_load_gets_one_line():
    from transformers import PretrainedConfig

    with pytest.raises(EngineError, match=r"cannot load XLNetLMHeadModel models: use rollout.engine=hf$"):
        _check_architecture(import_vllm(), PretrainedConfig(architectures=["XLNetLMHeadModel"]))


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _cmd(*args: str) -> list[str]:
    return [sys.executable, TRAIN, "recipe=tiny", "rollout.engine=vllm", "eval_before_after=false", *args]


def _train(*args: str) -> subprocess.CompletedProcess:
    proc = warm.run(_cmd(*args), cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module", autouse=True)
def vllm_run_started(vllm, beside, tmp_path_factory):
    """The run vllm_run waits for, started as this module begins (conftest's beside): it trains on the second
    core while the engine tests above run in this process (no assertion reads its timings)."""
    assets.resolve("asset:tiny")  # built once, here, rather than by both processes at once
    out = tmp_path_factory.mktemp("vllm-tiny")
    return out, beside("vllm-tiny", _cmd(f"output_dir={out}", "ppo.total_episodes=640", "save_steps=15"), cwd=ROOT,
                       for_tests=("test_ppo_through_vllm_raises_the_reward",
                                  "test_resume_with_vllm_continues_as_the_unbroken_run"))


@pytest.fixture(scope="module")
def vllm_run(vllm_run_started):
    out, run = vllm_run_started
    run.ok()
    return out


def test_ppo_through_vllm_raises_the_reward(vllm_run):
    rows = _rows(vllm_run)
    assert len(rows) == 20
    first = sum(r["objective/scores"] for r in rows[:3]) / 3
    last = sum(r["objective/scores"] for r in rows[-3:]) / 3
    assert first < 0.15 and last > first + 0.3, (first, last)
    # Every rollout after an update sampled from the updated weights: engine and trainer agree.
    assert all(r["time/weight_sync_s"] > 0 for r in rows)
    share = sum(r["time/weight_sync_s"] for r in rows) / sum(r["time/update_s"] for r in rows)
    print(f"vllm tiny: scores {first:.3f} -> {last:.3f}, logprob diff mean <= "
          f"{max(r['rollout/logprob_diff_mean'] for r in rows):.1e}, max <= "
          f"{max(r['rollout/logprob_diff_max'] for r in rows):.1e}, weight sync {share:.1%} of update time")
    assert max(r["rollout/logprob_diff_mean"] for r in rows) <= LOGPROB_TOLERANCE
    assert max(r["rollout/logprob_diff_max"] for r in rows) <= 1e-3


def test_resume_with_vllm_continues_as_the_unbroken_run(vllm_run, tmp_path):
    # The engine starts from the model's files on disk; the sync must give it the checkpoint's weights,
    # and per-request seeds make the sampling after resume the same as in the unbroken run.
    _train(f"output_dir={tmp_path}", "ppo.total_episodes=640", f"resume_from={vllm_run / 'checkpoint-15'}")
    straight, resumed = _rows(vllm_run)[15:], _rows(tmp_path)
    assert [r["step"] for r in resumed] == list(range(16, 21))
    for a, b in zip(straight, resumed):
        for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg", "val/mean_response_length"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])


def test_two_processes_each_sample_their_shard_with_vllm_and_train_grpo_groups_with_batch_scaled_rewards(tmp_path):
    """Each process samples its own prompts with its own engine and holds whole groups (4 prompts x 4 responses
    a process); scale_rewards=batch all-reduces the reward statistics over both processes (a rank that skipped the
    collective would hang the other). One launch for both properties: a two-process start costs more than its
    3 updates."""
    from test_distributed import _ranks, _two_processes

    proc = _two_processes("recipe=tiny", f"output_dir={tmp_path}", "rollout.engine=vllm", "ppo.total_episodes=96",
                          "ppo.per_device_train_batch_size=8", "eval_before_after=false",
                          "algorithm.advantage_estimator=grpo", "algorithm.num_generations=4",
                          "algorithm.scale_rewards=batch")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = _ranks(tmp_path, 2)
    assert all(r["distributed_type"] == "DistributedType.MULTI_CPU" and r["num_processes"] == 2 for r in ranks)
    # 96 episodes / (8 x 1 x 2 mini-batches per process x 2 processes) = 3 updates, the same weights on both
    assert [r["step"] for r in ranks] == [3, 3] and ranks[0]["weights"] == ranks[1]["weights"]
    rows = _rows(tmp_path)
    assert len(rows) == 3 and max(r["rollout/logprob_diff_mean"] for r in rows) <= LOGPROB_TOLERANCE
    assert not any("loss/value_avg" in r for r in rows)  # GRPO: no critic
    assert any(r["loss/policy_avg"] != 0 for r in rows)  # sampled groups differ: the advantages are not all zero


GRPO_THROUGH_VLLM = ["recipe=tiny", "rollout.engine=vllm", "algorithm.advantage_estimator=grpo",
                     "algorithm.num_generations=4", "algorithm.beta=0.04", "ppo.total_episodes=32", "sample_every=0",
                     "eval_before_after=false"]


def _train_here(accelerator, out: Path, monkeypatch, *args: str) -> tuple[list[dict], bool, bool]:
    """A tiny GRPO run through a vLLM engine in this process, into `out`.
    -> (its metrics rows, whether the loop ran a no-grad forward of the policy, the engine's `on_policy`)"""
    from accelerate.utils import set_seed

    from rlhf_app.rl import loop

    cfg = load_config([*GRPO_THROUGH_VLLM, *args, f"output_dir={out}"])
    out.mkdir()
    set_seed(cfg.seed)
    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    model, ref = models.build_models(cfg)
    train, _ = data.load_prompts(cfg, tokenizer)
    engine = VLLMEngine(cfg, accelerator, model, tokenizer)
    forwards = []
    monkeypatch.setattr(loop, "logprobs_values", lambda *a, **k: forwards.append(1) or logprobs_values(*a, **k))
    try:
        on_policy = engine.on_policy
        loop.train(cfg, accelerator, model, ref, tokenizer, train, rewards.build_reward(cfg, accelerator.device),
                   out, engine)
    finally:
        engine.close()
        del engine
        gc.collect()
    return _rows(out), bool(forwards), on_policy


def test_one_step_grpo_through_vllm_takes_the_update_logprobs_without_a_forward(accelerator, tmp_path, monkeypatch):
    """GRPO with one optimizer step per rollout (TRL's num_iterations=1) through the synced engine: the update's
    own log-probs stand for the rollout's, so the separate no-grad forward is skipped, and the engine's gap is
    still logged. Against the same run with importance weights on (which need that forward, and are ~1 for an
    exactly synced engine): the same samples, the same gap, the same loss."""
    rows = {}
    for correction in (False, True):
        rows[correction], forwarded, on_policy = _train_here(
            accelerator, tmp_path / f"correction-{correction}", monkeypatch, "ppo.num_ppo_epochs=1",
            "ppo.num_mini_batches=1", "ppo.kl_coef=0",
            f"rollout.vllm_importance_sampling_correction={str(correction).lower()}")
        assert on_policy is not correction
        assert forwarded is correction  # the separate forward runs only where the weights need it
    reused, forward = rows[False], rows[True]
    assert len(reused) == len(forward) == 2
    assert all(r["rollout/logprob_diff_mean"] <= LOGPROB_TOLERANCE for r in reused + forward)
    assert forward[0]["rollout/importance_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    first, again = reused[0], forward[0]  # the same weights sampled the same tokens before either update
    assert first["objective/scores"] == again["objective/scores"]
    assert first["rollout/logprob_diff_mean"] == pytest.approx(again["rollout/logprob_diff_mean"], abs=1e-6)
    assert first["objective/kl"] == pytest.approx(again["objective/kl"], abs=1e-5)
    assert first["loss/policy_avg"] == pytest.approx(again["loss/policy_avg"], abs=1e-5)


def test_without_recompute_a_multi_step_update_takes_the_engines_logprobs(accelerator, tmp_path, monkeypatch):
    """rollout.recompute_logprobs=false with 2 epochs x 2 mini-batches (no one-step reuse): the engine's log-probs
    are the old policy's, so the loop runs no forward of the policy. Against the same update with the trainer's
    forward: the same samples, and a KL and loss within the engine/trainer gap."""
    rows = {}
    for recompute in (True, False):
        [rows[recompute]], forwarded, _ = _train_here(
            accelerator, tmp_path / f"recompute-{recompute}", monkeypatch, "ppo.num_ppo_epochs=2",
            "ppo.num_mini_batches=2", "ppo.kl_coef=0.05", f"rollout.recompute_logprobs={str(recompute).lower()}")
        assert forwarded is recompute
    given, forward = rows[False], rows[True]
    assert forward["rollout/logprob_diff_mean"] <= LOGPROB_TOLERANCE and "rollout/logprob_diff_mean" not in given
    assert given["objective/scores"] == forward["objective/scores"]  # the same weights sampled the same tokens
    for name in ("objective/kl", "loss/policy_avg", "loss/kl_avg"):
        assert given[name] == pytest.approx(forward[name], abs=1e-4), name
    assert given["loss/kl_avg"] > 0  # the steps after the first moved the policy off the reference
