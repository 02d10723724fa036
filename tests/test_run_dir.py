"""The run folder: a new run never replaces another silently, a live run keeps others out, a
resume is checked against the checkpoint's config before anything is written, and files and
folders are whole or absent."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from rlhf_app.run_dir import claim as run_dir
from rlhf_app.config import to_yaml
from rlhf_app.run_dir import atomic
from rlhf_app.run_dir.checkpoint import STATE_FILE, STATE_JSON, checkpoints, policy_folders
from rlhf_app.run_dir.claim import RunDirError, RunLock, check_output_dir, check_start, config_changes


def _fake_run(out, cfg, checkpoints=(3,), finished=None):
    """A run folder as the trainer leaves it (the files the checks read)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 4)))
    for step in checkpoints:
        ckpt = out / f"checkpoint-{step}"
        ckpt.mkdir()
        for name in (STATE_FILE, "optimizer_0.pt", "rng_state_0.pt"):  # whole files: resume checks read them
            torch.save({}, ckpt / name)
        save_file({"w": torch.zeros(1)}, str(ckpt / "model.safetensors"))
        (ckpt / "config.json").write_text("{}")
        (ckpt / STATE_JSON).write_text(json.dumps({"step": step, "episode": 32 * step, "num_processes": 1}))
        (ckpt / "config.yaml").write_text(to_yaml(cfg))
    if finished is not None:
        (out / "final").mkdir()
        (out / "final" / "trainer_state.json").write_text(json.dumps({"step": finished}))


AGAIN = "continue it with resume_from=auto, replace it with overwrite_output_dir=true, or choose another output_dir"


def test_a_new_run_into_a_folder_with_a_run_is_refused(tmp_path, tiny_cfg):
    out = tmp_path / "run"
    assert check_start(tiny_cfg(output_dir=out), 40, 1) == []  # no folder yet: fine
    _fake_run(out, tiny_cfg(output_dir=out))
    with pytest.raises(RunDirError) as err:
        check_start(tiny_cfg(output_dir=out), 40, 1)
    assert str(err.value) == f"output_dir={out} holds another run: {AGAIN}"
    assert (out / "metrics.jsonl").read_text().count("\n") == 3  # untouched


# What runs write beside config.yaml, metrics.jsonl, checkpoint-N and final/ (_fake_run): the end of
# train, rlhf-app eval, Hub dry runs (hub_upload/, hub_upload-checkpoint-N/ of every_save), report
# plots, wandb (dir=output_dir) and tensorboard (accelerate's project_dir/rlhf_app).
RUN_WROTE = ("samples.jsonl", "eval.json", "values.json", "report.html", "eval-final.json",
             "eval-checkpoint-3-train.json", "hub_upload/README.md", "hub_upload-checkpoint-12/model.safetensors",
             "hub_upload-checkpoint-48/README.md", "plots/diagnostics.png", "plots/values.png",
             "wandb/run-20240101_000000-abc/files/output.log", "wandb/debug.log", "wandb/debug-internal.log",
             "rlhf_app/events.out.tfevents.1712.host.1.0", "rlhf_app/1712345678.123/hparams.yml")
# A user's files, some named like ours but not ours.
USER_FILES = ("README.md", "my-notes.txt", "notes/README.md", "plots/mine.png", "wandb/my-sweep.yaml",
              "rlhf_app/__init__.py", "tensorboard/events.txt", "trackio/x.db", "checkpoint-best/w.bin",
              "final-notes.txt", "hub_upload-old/x", "eval-notes.json", "report.html.bak")


def test_overwrite_output_dir_removes_exactly_what_runs_write(tmp_path, tiny_cfg):
    out = tmp_path / "run"
    _fake_run(out, tiny_cfg(output_dir=out), finished=10)
    for name in RUN_WROTE + USER_FILES:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)
    notes = check_start(tiny_cfg("overwrite_output_dir=true", output_dir=out), 40, 1)
    assert notes == [f"note: overwrite_output_dir=true: removed the earlier run in {out}"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(USER_FILES)
    assert all((out / name).read_text() == name for name in USER_FILES)
    # Folders that held only the run's files are gone too.
    _fake_run(out, tiny_cfg(output_dir=out))
    (out / "wandb" / "debug.log").write_text("x")
    for name in ("my-sweep.yaml",):
        (out / "wandb" / name).unlink()
    run_dir.clear_run(out)
    assert not (out / "wandb").exists() and (out / "plots" / "mine.png").is_file()


def test_resuming_a_finished_run_says_so_and_never_replaces_final_with_older_weights(tmp_path, tiny_cfg):
    out = tmp_path / "run"
    cfg = tiny_cfg("resume_from=auto", output_dir=out)
    _fake_run(out, cfg, checkpoints=(9, 10), finished=10)
    with pytest.raises(RunDirError, match=r"has finished at update 10 \(final/ holds it\); nothing to resume: "
                                          "raise ppo.total_episodes"):
        check_start(cfg, 10, 1)
    with pytest.raises(RunDirError, match="has finished at update 10"):
        check_start(cfg, 6, 1)  # a smaller total_episodes: still nothing to do, final/ stays
    assert check_start(cfg, 20, 1) == []  # a larger one continues from the checkpoint of update 10
    older = tmp_path / "older"
    _fake_run(older, tiny_cfg(output_dir=older), checkpoints=(6,), finished=10)  # no checkpoint at the end
    with pytest.raises(RunDirError, match="newest checkpoint is update 6: continuing from it would replace final/"):
        check_start(tiny_cfg("resume_from=auto", output_dir=older), 20, 1)


@pytest.mark.parametrize("change", ["model.name_or_path=asset:demo-policy", "model.value_model=separate",
                                    "peft.enabled=true", "ppo.per_device_train_batch_size=8",
                                    "ppo.num_mini_batches=4", "seed=1", "data.name=imdb", "reward.target=b",
                                    "ppo.cliprange=0.3"])
def test_resume_with_a_change_to_what_is_trained_is_refused_before_anything_is_written(tmp_path, change, tiny_cfg):
    out = tmp_path / "run"
    _fake_run(out, tiny_cfg(output_dir=out))
    before = (out / "config.yaml").read_text()
    with pytest.raises(RunDirError) as err:
        check_start(tiny_cfg("resume_from=auto", change, output_dir=out), 40, 1)
    key = change.split("=")[0]
    assert str(err.value).startswith("resume_from=auto with settings that change what is trained (" + key + ": ")
    assert "\n" not in str(err.value)
    assert (out / "config.yaml").read_text() == before


def test_resume_with_safe_and_applied_changes_prints_notes(tmp_path, tiny_cfg):
    out = tmp_path / "run"
    _fake_run(out, tiny_cfg(output_dir=out))
    notes = check_start(tiny_cfg("resume_from=auto", "ppo.total_episodes=2560", "save_steps=5",
                             "sample_every=2", "ppo.learning_rate=1e-3", output_dir=out), 80, 1)
    assert "note: resuming with ppo.learning_rate: 0.003 -> 0.001 (applied from update 4)" in notes
    assert "note: resuming with ppo.total_episodes: 1280 -> 2560 (applied from update 4)" in notes
    assert "note: resuming with save_steps: 0 -> 5" in notes and "note: resuming with sample_every: 10 -> 2" in notes


def test_resume_past_the_new_total_or_with_other_processes_is_refused(tmp_path, tiny_cfg):
    out = tmp_path / "run"
    _fake_run(out, tiny_cfg(output_dir=out), checkpoints=(3,))
    with pytest.raises(RunDirError, match="is at update 3, past the 2 updates ppo.total_episodes now asks for"):
        check_start(tiny_cfg("resume_from=auto", output_dir=out), 2, 1)
    with pytest.raises(RunDirError, match="was saved by 1 processes, this run has 2"):
        check_start(tiny_cfg("resume_from=auto", output_dir=out), 40, 2)


def test_config_changes_count_a_field_the_old_file_lacks_as_its_default(tmp_path, tiny_cfg):
    out = tmp_path / "run"
    old = tmp_path / "old.yaml"
    old.write_text(to_yaml(tiny_cfg(output_dir=out)).replace("  cliprange: 0.2\n", ""))
    assert config_changes(old, tiny_cfg(output_dir=out)) == ([], [], [])


def test_the_lock_keeps_a_second_live_run_out_and_a_dead_ones_lock_is_stale(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(RunDirError, match=rf"is in use by a live run \(pid {os.getpid()} on "):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / ".lock").exists()
    # A lock left by a process that has ended (here: a real one that exited) is recognised as stale.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": run_dir.socket.gethostname()}))
    again = RunLock(tmp_path)
    again.acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    again.release()
    # Another host's lock cannot be checked from here: it is respected.
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunDirError, match="on elsewhere"):
        RunLock(tmp_path).acquire()


def test_a_folder_with_only_the_config_of_a_failed_start_is_no_run(tmp_path, tiny_cfg):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(to_yaml(tiny_cfg(output_dir=out)))  # e.g. the Hub was unreachable before update 1
    assert check_start(tiny_cfg(output_dir=out), 40, 1) == []


def test_output_dir_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(RunDirError, match=r"output_dir=.*a-file/run is not writable \(Not a directory\): "
                                          r"choose another output_dir"):
        check_output_dir(str(blocker / "run"))
    check_output_dir(str(tmp_path / "new" / "run"))  # creatable: fine, and nothing is left behind
    assert list((tmp_path / "new" / "run").iterdir()) == []


def test_checkpoints_are_the_complete_ones_in_update_order_and_policies_add_final(tmp_path, tiny_cfg):
    _fake_run(tmp_path, tiny_cfg(output_dir=tmp_path), checkpoints=(10, 2), finished=10)
    (tmp_path / "checkpoint-5").mkdir()  # no trainer state: not a checkpoint of ours
    (tmp_path / ".checkpoint-12.tmp").mkdir()  # being written
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10"]
    assert policy_folders(tmp_path) == ["checkpoint-2", "checkpoint-10", "final"]
    assert policy_folders(tmp_path / "checkpoint-5") == []


def test_write_text_replaces_a_file_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    atomic.write_json(path, {"step": 1})
    assert path.read_text() == '{\n  "step": 1\n}'

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_text(path, "new")
    assert path.read_text() == '{\n  "step": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # the temporary file is gone too


def test_building_a_folder_swaps_it_in_only_when_complete(tmp_path):
    target = tmp_path / "asset"
    with atomic.building(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".asset-") and not target.exists()
        (tmp / "a.txt").write_text("first")
    with pytest.raises(ValueError), atomic.building(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise ValueError("killed mid-build")
    assert (target / "a.txt").read_text() == "first"
    with atomic.building(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["b.txt"]  # replaced whole
    with atomic.building(target, replace=False) as tmp:  # another process built it first: theirs stays
        (tmp / "c.txt").write_text("late")
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["asset"]  # no hidden leftovers


def test_remove_dir_and_replace_dir_leave_no_hidden_folders(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "old.txt").write_text("old")
    (tmp_path / ".final.tmp").mkdir()
    (tmp_path / ".final.tmp" / "new.txt").write_text("new")
    atomic.replace_dir(tmp_path / ".final.tmp", tmp_path / "final")
    assert [p.name for p in (tmp_path / "final").iterdir()] == ["new.txt"]
    atomic.remove_dir(tmp_path / "final")
    assert list(tmp_path.iterdir()) == []
