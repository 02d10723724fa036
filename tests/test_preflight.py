"""Checks before training: each bad setting ends the run with one line that names the fix."""

import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import GPT2Config, LlamaConfig

from rlhf_app.preflight import PreflightError, check_positions, check_prompts_fill_a_batch, model_positions

ROOT = Path(__file__).resolve().parent.parent


def test_prompt_plus_response_must_fit_the_positions():
    assert model_positions(GPT2Config(n_positions=64)) == 64
    assert model_positions(LlamaConfig(max_position_embeddings=128)) == 128
    ds = {"training": Dataset.from_dict({"input_ids": [[1] * 10, [1] * 40]}),
          "held-out": Dataset.from_dict({"input_ids": [[1] * 50]})}
    check_positions(GPT2Config(n_positions=64), {"training": ds["training"]}, 24)  # 40 + 24 = 64 fits
    with pytest.raises(PreflightError) as err:
        check_positions(GPT2Config(n_positions=64), ds, 24)  # the held-out prompt: 50 + 24 > 64
    assert str(err.value) == ("the longest held-out prompt (50 tokens) + ppo.response_length (24) = 74 exceeds the "
                              "model's 64 positions: lower ppo.response_length to 14, or lower data.max_prompt_length")


def test_fewer_prompts_than_one_update():
    check_prompts_fill_a_batch(64, 32, 2)
    with pytest.raises(PreflightError, match="63 training prompts cannot fill one update of 64 episodes"):
        check_prompts_fill_a_batch(63, 32, 2)


def _train(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "recipe=tiny", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("arg, start", [
    ("ppo.response_length=300", "error: the longest training prompt"),
    ("data.num_train=4", "error: 4 training prompts cannot fill one update of 32 episodes"),
])
def test_the_run_stops_in_one_line_before_the_model_loads(tmp_path, arg, start):
    proc = _train(f"output_dir={tmp_path / 'run'}", arg)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(start), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "parameters" not in proc.stdout  # the policy was never built
