"""End to end on the tiny model: the reward really rises, checkpoints save, load and resume."""

import json

import pytest
import torch

from rlhf_app.config import load_config
from rlhf_app.models.policy import load_policy


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_reward_rises_on_the_tiny_model(finished_tiny_run):
    rows = _rows(finished_tiny_run)
    assert len(rows) == 20  # 640 episodes / 32 per update
    first = sum(r["objective/scores"] for r in rows[:3]) / 3
    last = sum(r["objective/scores"] for r in rows[-3:]) / 3
    # The random policy writes "a" ~3% of the time; PPO must push it far above that.
    assert first < 0.15
    assert last > first + 0.3, (first, last)
    evaluation = json.loads((finished_tiny_run / "eval.json").read_text())  # what `run` returned as "eval"
    before, after = evaluation["before"]["mean_score"], evaluation["after"]["mean_score"]
    assert after > before + 0.3, (before, after)
    for key in ("objective/kl", "objective/entropy", "loss/value_avg", "loss/policy_avg", "policy/clipfrac_avg",
                "val/clipfrac_avg", "policy/approxkl_avg", "val/explained_variance", "val/mean_response_length",
                "val/eos_fraction", "lr", "kl_coef", "perf/episodes_per_s", "perf/tokens_per_s"):
        assert key in rows[-1]


def test_run_folder_holds_config_checkpoint_final_and_report(finished_tiny_run):
    out = finished_tiny_run
    assert load_config([f"recipe={out / 'config.yaml'}"]).ppo.total_episodes == 640
    # save_steps=10 of 20 updates: update 10, and the last one (a finished run can be continued).
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-20"]
    assert not list(out.glob(".*.tmp"))
    for name in ("model.safetensors", "value_head.safetensors", "tokenizer.json"):
        assert (out / "final" / name).is_file(), name
    assert json.loads((out / "eval.json").read_text())["after"]["samples"]
    assert set(json.loads((out / "values.json").read_text())) == {"high", "low"}


@pytest.mark.parametrize("overrides", [[], ["model.value_model=separate"], ["peft.enabled=true", "peft.r=4"]],
                         ids=["shared-head", "separate-critic", "lora"])
def test_variants_train_and_load_back_with_identical_outputs(tmp_path, train_tiny, overrides):
    _, result = train_tiny(tmp_path, "ppo.total_episodes=64", "eval_before_after=false", *overrides)
    assert result["step"] == 2
    loaded, tokenizer = load_policy(tmp_path / "final")
    assert (loaded.critic is not None) == ("model.value_model=separate" in overrides)
    ids = torch.tensor([tokenizer("the movie was")["input_ids"]])
    with torch.no_grad():
        logits_a, values_a = result["model"].eval()(ids, torch.ones_like(ids))
        logits_b, values_b = loaded.eval()(ids, torch.ones_like(ids))
    assert torch.allclose(logits_a, logits_b, atol=1e-6) and torch.allclose(values_a, values_b, atol=1e-6)
    assert tokenizer.padding_side == "left"
    rows = _rows(tmp_path)
    assert all(r["loss/value_avg"] > 0 for r in rows)
