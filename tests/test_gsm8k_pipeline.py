"""The GSM8K pipeline's pieces: the supervised set (asset:gsm8k-sft) in TRL's format and apart from every
evaluation problem, the recipe wired as SFT then PPO, the stages' bf16 on a CPU, and the phase bench's
standard errors (bench/phases.py)."""

import json
import math
from decimal import Decimal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import phases  # noqa: E402

from rlhf_app.assets import gsm8k  # noqa: E402
from rlhf_app.config import load_config  # noqa: E402


def test_sft_set_is_trl_conversational_prompt_completion_and_never_an_eval_problem(tmp_path):
    info = gsm8k.build_sft(tmp_path, n=40)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert info["rows"] == len(rows) == 40 and info["seed"] == gsm8k.SFT_SEED
    evaluated = {p["question"] for p in gsm8k.eval_problems()}
    for row, problem in zip(rows, gsm8k.train_problems(40, gsm8k.SFT_SEED)):
        assert set(row) == {"prompt", "completion"}
        assert row["prompt"] == [gsm8k.gsm8k_user_turn(problem["question"])]
        (turn,) = row["completion"]
        # the worked solution ends with its answer ("#### 161.0" for 161 in some templates: the checker's number)
        assert turn["role"] == "assistant"
        assert Decimal(turn["content"].rsplit("\n#### ", 1)[1]) == Decimal(problem["answer"])
        assert problem["question"] not in evaluated
    # PPO's prompts carry the same user turn: what SFT teaches is what PPO asks
    assert rows[0]["prompt"][0]["content"].endswith(gsm8k.GSM8K_INSTRUCTION)


def test_pipeline_recipe_is_sft_then_ppo_from_the_sft_model(tmp_path):
    from rlhf_app.stages.pipeline import stage_config

    cfg = load_config(["recipe=gsm8k-pipeline-offline", f"output_dir={tmp_path}"])
    assert list(cfg.stages) == ["sft", "ppo"]
    assert cfg.sft.dataset == "asset:gsm8k-sft" and cfg.sft.bf16
    ppo = stage_config(cfg, "ppo")
    assert Path(ppo.model.name_or_path) == tmp_path / "sft" / "final"
    assert ppo.reward.name == "gsm8k" and ppo.rollout.engine == "vllm"


def test_stage_bf16_runs_on_a_cpu_and_fp16_without_a_gpu_is_one_line(tmp_path):
    import torch
    from trl import SFTConfig

    from rlhf_app.preflight import PreflightError
    from rlhf_app.stages.common import trainer_args

    if torch.cuda.is_available():
        pytest.skip("checks the CPU route")
    cfg = load_config(["recipe=tiny", f"output_dir={tmp_path}", "sft.dataset=x.jsonl", "sft.bf16=true"], stage="sft")
    args = trainer_args(cfg, "sft", SFTConfig)
    assert args.bf16 and args.use_cpu
    cfg = load_config(["recipe=tiny", f"output_dir={tmp_path}", "sft.dataset=x.jsonl", "sft.fp16=true"], stage="sft")
    with pytest.raises(PreflightError, match="fp16"):
        trainer_args(cfg, "sft", SFTConfig)


def test_phase_gains_in_standard_errors_by_hand():
    assert phases.standard_error(0.5, 100) == pytest.approx(0.05)
    assert phases.standard_error(0.0, 300) == 0.0
    base = {"generated": {"accuracy_strict": 0.0, "accuracy_strict_se": 0.0,
                          "accuracy_flexible": 0.01, "accuracy_flexible_se": 0.01}, "eval_s": 1.0}
    sft = {"generated": {"accuracy_strict": 0.16, "accuracy_strict_se": 0.03,
                         "accuracy_flexible": 0.16, "accuracy_flexible_se": 0.03}, "eval_s": 1.0}
    ppo = {"generated": {"accuracy_strict": 0.20, "accuracy_strict_se": 0.04,
                         "accuracy_flexible": 0.20, "accuracy_flexible_se": 0.04}, "eval_s": 1.0}
    g = phases.gains({"base": base, "sft": sft, "ppo": ppo})
    assert g["base->sft/generated/accuracy_strict"]["in_se"] == pytest.approx(0.16 / 0.03)
    assert g["sft->ppo/generated/accuracy_strict"]["se"] == pytest.approx(0.05)  # hypot(0.03, 0.04)
    assert g["sft->ppo/generated/accuracy_strict"]["in_se"] == pytest.approx(0.04 / 0.05)
    assert g["base->ppo/generated/accuracy_flexible"]["in_se"] == pytest.approx(0.19 / math.hypot(0.01, 0.04))
    # --phases sft ppo: only the step between the phases scored
    assert set(phases.gains({"sft": sft, "ppo": ppo})) == {"sft->ppo/generated/accuracy_strict",
                                                          "sft->ppo/generated/accuracy_flexible"}


def test_phase_figures_keep_the_answers_asked_for_and_the_options_parse():
    entry = {"mean_score": 0.5, "extra": {"accuracy_strict": 0.25}, "samples": [{"completion": str(i)} for i in range(5)]}
    out = phases.figures(entry, 4, {"tool_calls_per_episode": 2.0}, samples=3)
    assert [s["completion"] for s in out["samples"]] == ["0", "1", "2"]
    assert (out["accuracy_strict"], out["accuracy_strict_se"]) == (0.25, pytest.approx(math.sqrt(0.25 * 0.75 / 4)))
    assert out["tool_calls_per_episode"] == 2.0 and "accuracy_flexible" not in out
    for bad in (["--phases", "rm"], ["--batch-size", "0"], ["--samples", "-1"]):  # refused before any model loads
        with pytest.raises(SystemExit) as refused:
            phases.main(["run", *bad])
        assert refused.value.code == 2, bad
