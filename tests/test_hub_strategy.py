"""Hub pushes during training: hub.strategy every_save / checkpoint, background uploads, dry-run folders, no token leaks."""

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import save_file

from rlhf_app.hub import upload as hub
from rlhf_app.assets.registry import build_tiny
from rlhf_app.config import ConfigError, load_config, to_yaml
from rlhf_app.hub.pusher import CheckpointPusher

HF_FAKE = "hf_" + "ZyXwVuTsRqPoNmLkJiHgFeDcBa98765432"  # the shape of a user token, not a real one


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_every_save_dry_run_writes_one_upload_folder_per_checkpoint(tmp_path, train_tiny, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", HF_FAKE)
    run = tmp_path / "run"
    # tiny: 32 episodes per update -> 3 updates; checkpoints after updates 1, 2 and 3 (the last one saves too,
    # so the run can be continued), pushes after 1 and 2, then final/ (the last checkpoint's weights)
    train_tiny(run, "ppo.total_episodes=96", "save_steps=1", "save_total_limit=1", "eval_before_after=false",
               "sample_every=1", "--push_to_hub", "--hub_model_id", "alice/tiny-ppo", "--hub_strategy", "every_save",
               "hub.dry_run=true", "--report_to", "tensorboard")
    out = capsys.readouterr().out
    uploads = sorted(p.name for p in run.iterdir() if p.name.startswith(hub.UPLOAD_DIR))
    assert uploads == ["hub_upload", "hub_upload-checkpoint-1", "hub_upload-checkpoint-2"]
    assert [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-3"]  # rotation is untouched by the pushes
    for name, updates in (("checkpoint-1", 1), ("checkpoint-2", 2), ("final", 3)):
        folder = run / (hub.UPLOAD_DIR if name == "final" else f"{hub.UPLOAD_DIR}-{name}")
        assert {"model.safetensors", "value_head.safetensors", "README.md", "config.yaml", "metrics.jsonl"} <= _files(folder)
        assert not any(f.startswith("last-checkpoint/") for f in _files(folder))  # every_save: no resume state
        card = (folder / "README.md").read_text()
        assert f"Weights from `{name}/` of the run" in card
        assert f"{updates} PPO updates" in card  # the card is refreshed with each push
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == updates
        assert f"dry run: would upload {folder} (" in out
    assert (run / "hub_upload" / "model.safetensors").read_bytes() == (run / "final" / "model.safetensors").read_bytes()
    # the token never reaches a log, a card, a config or any file of the run
    assert HF_FAKE not in out
    for path in run.rglob("*"):
        if path.is_file():
            assert HF_FAKE.encode() not in path.read_bytes(), path
    # Overwritten by a shorter run without pushes: the old run's upload folders and tracker files go,
    # the user's README.md stays (a run never writes one there).
    (run / "README.md").write_text("my notes")
    train_tiny(run, "ppo.total_episodes=32", "eval_before_after=false", "overwrite_output_dir=true")
    assert sorted(p.name for p in run.iterdir()) == ["README.md", "config.yaml", "final", "metrics.jsonl", "plots",
                                                     "report.html"]
    assert (run / "README.md").read_text() == "my notes"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run folder with two complete checkpoints (tiny real policy, critic head, resume state)."""
    run = tmp_path / "run"
    cfg = load_config(["recipe=tiny", f"output_dir={run}", "save_steps=1", "hub.push=true", "hub.repo_id=alice/x",
                       "hub.strategy=every_save"])
    build_tiny(run / "checkpoint-1")
    save_file({"weight": torch.zeros(1, 64), "bias": torch.zeros(1)}, str(run / "checkpoint-1" / "value_head.safetensors"))
    torch.save({"step": 1}, run / "checkpoint-1" / "trainer_state.pt")
    torch.save({"rng": 1}, run / "checkpoint-1" / "rng_state_0.pt")
    shutil.copytree(run / "checkpoint-1", run / "checkpoint-2")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "episode": 32}) + "\n")
    (run / "config.yaml").write_text(to_yaml(cfg))
    return run


def test_checkpoint_strategy_adds_the_newest_checkpoint_whole(run_dir):
    cfg = load_config([f"recipe={run_dir / 'config.yaml'}", "hub.strategy=checkpoint", "hub.checkpoint=checkpoint-1"])
    files = _files(hub.prepare_upload(run_dir, cfg, target="up"))
    assert {"last-checkpoint/trainer_state.pt", "last-checkpoint/rng_state_0.pt",
            "last-checkpoint/model.safetensors", "model.safetensors"} <= files
    # the final push carries the run's newest checkpoint, so a resume from the Hub keeps working
    shutil.copytree(run_dir / "checkpoint-2", run_dir / "final", ignore=shutil.ignore_patterns("*.pt"))
    cfg = load_config([f"recipe={run_dir / 'config.yaml'}", "hub.strategy=checkpoint"])
    folder = hub.prepare_upload(run_dir, cfg)
    assert (folder / "last-checkpoint" / "trainer_state.pt").samefile(run_dir / "checkpoint-2" / "trainer_state.pt")
    assert "trainer_state.pt" not in _files(folder)  # resume state only inside last-checkpoint/


def test_uploads_run_in_the_background_one_at_a_time(run_dir, monkeypatch, capsys):
    started, release, calls = threading.Event(), threading.Event(), []

    def upload_folder(self, **kwargs):
        calls.append((self.token, kwargs["commit_message"], sorted(_files(Path(kwargs["folder_path"])))))
        started.set()
        assert release.wait(timeout=300)  # the "network" answers only when the test says so

    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    cfg = load_config([f"recipe={run_dir / 'config.yaml'}"])
    pusher = CheckpointPusher(run_dir, cfg, HF_FAKE)
    pusher(run_dir / "checkpoint-1")  # returns while the upload is still blocked: training goes on
    assert started.wait(timeout=300)
    pusher(run_dir / "checkpoint-2")  # an upload is in flight: skipped, not queued behind it
    assert len(calls) == 1 and "checkpoint-1 is still uploading; checkpoint-2 is not pushed" in capsys.readouterr().out
    release.set()
    pusher.finish()  # waits for the upload in flight
    token, message, files = calls[0]
    assert token == HF_FAKE and message.endswith("(checkpoint-1)") and "model.safetensors" in files
    assert pusher.pushed == ["checkpoint-1"]
    assert not (run_dir / "hub_upload-checkpoint-1").exists()  # uploaded, so the staging folder is gone
    assert HF_FAKE not in capsys.readouterr().out


def test_a_failed_checkpoint_upload_is_a_warning(run_dir, monkeypatch, capsys):
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    pusher = CheckpointPusher(run_dir, load_config([f"recipe={run_dir / 'config.yaml'}"]), HF_FAKE)
    pusher(run_dir / "checkpoint-1")
    pusher.finish()
    assert "warning: pushing checkpoint-1 failed: the Hugging Face Hub cannot be reached" in capsys.readouterr().out
    assert pusher.pushed == []


@pytest.mark.parametrize("argv, message", [
    (["hub.strategy=every_save"], "hub.strategy=every_save pushes each checkpoint: it needs hub.push=true and "
                                  "save_steps > 0 (now hub.push=false, save_steps=0)"),
    (["--push_to_hub", "--hub_strategy", "checkpoint"], "save_steps=0"),
    (["hub.strategy=all_checkpoints"], "hub.strategy='all_checkpoints' is not one of end, every_save, checkpoint"),
])
def test_strategy_errors_are_one_line(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(argv)
