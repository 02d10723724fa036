"""The `demo` recipe end to end on a short budget, with its assets built in quick mode (conftest)."""

import html
import json

import pytest

from rlhf_app.run import run
from rlhf_app.config import load_config

pytestmark = pytest.mark.slow  # the demo model and its assets, a real (short) training run


def test_demo_recipe_runs_end_to_end_and_reports(tmp_path):
    cfg = load_config(["recipe=demo", f"output_dir={tmp_path}", "num_threads=1", "data.num_train=256",
                       "data.num_eval=8", "ppo.total_episodes=128", "ppo.per_device_train_batch_size=32",
                       "ppo.num_mini_batches=2", "ppo.num_ppo_epochs=2", "sample_every=1"])
    result = run(cfg)
    assert result["step"] == 2
    evals = json.loads((tmp_path / "eval.json").read_text())
    for when in ("before", "after"):
        assert len(evals[when]["samples"]) == 8
        assert 0.0 <= evals[when]["extra"]["positive_share"] <= 1.0
    # The same held-out prompts are scored before and after.
    assert [s["prompt"] for s in evals["before"]["samples"]] == [s["prompt"] for s in evals["after"]["samples"]]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["val/mean_response_length"] > 0 for r in rows)
    page = (tmp_path / "report.html").read_text()
    assert "positive_share" in page and html.escape(evals["after"]["samples"][0]["completion"]) in page
    assert (tmp_path / "plots" / "diagnostics.png").stat().st_size > 10_000
    assert (tmp_path / "final" / "value_head.safetensors").is_file()
