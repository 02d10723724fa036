"""bench/sft_sampling.py: a pipeline recipe's SFT stage as a plain SFT run, and a quick run of both samplers."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlhf_app.config import load_config

import warm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import sft_sampling  # noqa: E402


def test_a_pipeline_recipes_sft_stage_runs_as_one_sft_run(tmp_path):
    path = sft_sampling.stage_recipe("gsm8k-pipeline-offline", tmp_path)
    cfg = load_config([f"recipe={path}"], stage="sft")
    pipeline = load_config(["recipe=gsm8k-pipeline-offline"], stage="sft")
    assert not cfg.stages and cfg.sft == pipeline.sft and cfg.sft.dataset == "asset:gsm8k-sft"
    with pytest.raises(SystemExit, match="recipe gsm8k-offline has no sft section"):
        sft_sampling.stage_recipe("gsm8k-offline", tmp_path)
    with pytest.raises(SystemExit, match="unknown recipe 'gsm8k-pipelin': did you mean gsm8k-pipeline-offline"):
        sft_sampling.stage_recipe("gsm8k-pipelin", tmp_path)


@pytest.mark.slow
def test_a_quick_run_times_both_samplers_into_its_own_file(tmp_path, monkeypatch):
    monkeypatch.setattr(sft_sampling, "subprocess", SimpleNamespace(run=warm.run))  # its sft.py runs, pre-imported
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"kind": "quick", "recipes": {"other": {"rows": 1}}}))  # a recipe run before: kept
    sft_sampling.main(["--quick", "--threads", "1", "--out", str(out), "--work", str(tmp_path / "w")])
    result = json.loads(out.read_text())
    assert result["kind"] == "quick" and result["recipes"]["other"] == {"rows": 1}
    tiny = result["recipes"]["tiny"]
    assert tiny["rows"] == 64 and [r["strategy"] for r in tiny["runs"]] == ["random", "group_by_length"]
    assert all(r["steps"] == 4 and r["train_runtime_s"] > 0 and r["eval_loss"] > 0 for r in tiny["runs"])
    assert tiny["time_ratio"] == pytest.approx(tiny["runs"][1]["train_runtime_s"] / tiny["runs"][0]["train_runtime_s"])
