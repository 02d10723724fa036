"""Trackers: wandb (offline) and tensorboard receive metrics and sample tables; no token reaches any file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import warm

ROOT = Path(__file__).resolve().parent.parent
HF_TOKEN = "hf_" + "Q" * 34
WANDB_KEY = "0123456789abcdef" * 2 + "01234567"


@pytest.mark.slow  # a training subprocess with both trackers
def test_wandb_offline_and_tensorboard_get_metrics_and_samples_without_secrets(tmp_path):
    env = {**os.environ, "HF_TOKEN": HF_TOKEN, "WANDB_API_KEY": WANDB_KEY, "WANDB_MODE": "offline"}
    proc = warm.run([sys.executable, str(ROOT / "scripts" / "train.py"), "recipe=tiny", f"output_dir={tmp_path}",
                     "ppo.total_episodes=64", "sample_every=1", "report_to=[wandb,tensorboard]",
                     "--run_name", "tiny-run-name-7"],
                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # samples.jsonl: a table every update.
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2} and {"step", "prompt", "completion", "score"} <= set(samples[0])
    # wandb wrote an offline run with the sample table as a media file, inside the run folder.
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].rglob("samples_*.table.json"))
    assert any(b"tiny-run-name-7" in p.read_bytes() for p in runs[0].glob("*.wandb"))  # run_name names the run
    # tensorboard got the scalars and the text table.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [p.parent for p in tmp_path.rglob("events.out.tfevents.*")]
    assert events
    acc = EventAccumulator(str(events[0]), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "objective/scores" in tags["scalars"] or "objective/scores" in tags["tensors"]
    assert any(t.startswith("samples") for t in tags["tensors"])
    # No token anywhere in what the run wrote (configs, logs, reports, tracker files).
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert HF_TOKEN.encode() not in data and WANDB_KEY.encode() not in data, path


def test_missing_tracker_package_is_one_line(tmp_path, monkeypatch):
    from rlhf_app.cli.main import main

    monkeypatch.setattr("rlhf_app.extras.installed", lambda module: module != "trackio")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "recipe=tiny", f"output_dir={tmp_path}", "report_to=trackio"])
    assert exit_.value.code == ("error: report_to=trackio needs the trackio package: pip install -e .[trackio] "
                                "(a plain install: pip install 'rlhf_app[trackio]')")
    assert not (tmp_path / "config.yaml").exists()  # refused before the run started
