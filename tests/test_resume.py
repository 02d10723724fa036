"""Killed runs resume exactly; Ctrl-C saves; half-written checkpoints are never picked."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from rlhf_app.cli import run
from rlhf_app.config import load_config
from rlhf_app.ppo.checkpoint import STATE_FILE, find_resume

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = ("time/", "perf/")  # wall-clock figures differ between any two runs


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    # Output goes to files, not pipes: an unread pipe fills up and blocks the run on a slow machine.
    log = out.parent / f"{out.name}.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), "recipe=tiny", f"output_dir={out}",
                             "eval_before_after=false", *extra], cwd=ROOT,
                            stdout=open(log.with_suffix(".out"), "w"), stderr=open(log.with_suffix(".err"), "w"))
    proc.out, proc.err = log.with_suffix(".out"), log.with_suffix(".err")
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[str, str]:
    proc.wait(timeout=timeout)  # generous: CI machines are busy; a hang still ends the test
    return proc.out.read_text(), proc.err.read_text()


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 900) -> None:
    """Polls for an event (a file the run writes); the timeout only ends a hung run, it is no speed target."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"run ended before the test could interrupt it: {proc.err.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "the run wrote nothing for 15 minutes"
        time.sleep(0.05)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    common = ["ppo.total_episodes=320", "save_steps=3", "save_total_limit=1"]
    straight = tmp_path / "straight"
    run(load_config(["recipe=tiny", f"output_dir={straight}", "eval_before_after=false", *common]))

    killed = tmp_path / "killed"
    proc = _start(killed, *common)
    _wait_for(lambda: (killed / "checkpoint-3" / STATE_FILE).is_file(), proc)
    proc.send_signal(signal.SIGKILL)
    _finish(proc)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final").exists()

    result = run(load_config(["recipe=tiny", f"output_dir={killed}", "eval_before_after=false",
                              "resume_from=auto", *common]))
    assert result["step"] == 10
    a, b = _metrics(straight), _metrics(killed)
    assert [r["step"] for r in b] == list(range(1, 11))
    for row_a, row_b in zip(a, b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert abs(row_a[key] - row_b[key]) <= 1e-6 * max(1.0, abs(row_a[key])), (row_a["step"], key)
    # save_total_limit=1 keeps only the newest checkpoint.
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-9"]


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, "ppo.total_episodes=100000")
    metrics = out / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = _finish(proc)
    assert proc.returncode == 130, stderr[-2000:]
    saved = find_resume("auto", out)
    assert saved is not None and f"interrupted: saved {saved}; continue with resume_from=auto" in stdout
    assert int(saved.name.split("-")[1]) >= 2


def test_resume_never_picks_a_half_written_checkpoint(tmp_path):
    for name, complete in (("checkpoint-3", True), ("checkpoint-6", True), (".checkpoint-9.tmp", True),
                           ("checkpoint-12", False)):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / STATE_FILE).write_bytes(b"x")
    assert find_resume("auto", tmp_path).name == "checkpoint-6"
    assert find_resume(None, tmp_path) is None
    assert find_resume("auto", tmp_path / "empty") is None
    try:
        find_resume(str(tmp_path / "checkpoint-12"), tmp_path)
    except FileNotFoundError as err:
        assert "not a complete checkpoint" in str(err)
    else:
        raise AssertionError("a half-written checkpoint was accepted")


def test_nan_and_out_of_memory_get_one_line_that_names_the_fix(tmp_path):
    import torch

    from rlhf_app.cli import _explain_failure
    from rlhf_app.ppo.trainer import NonFiniteError

    cfg = load_config(["recipe=tiny", f"output_dir={tmp_path}"])
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / STATE_FILE).write_bytes(b"x")
    nan = _explain_failure(NonFiniteError("non-finite loss, reward or KL at update 5"), cfg)
    assert nan.startswith("non-finite loss, reward or KL at update 5; the last good checkpoint is")
    assert "checkpoint-4" in nan and "resume_from=auto" in nan and "\n" not in nan
    oom = _explain_failure(torch.OutOfMemoryError("CUDA out of memory"), cfg)
    assert "lower ppo.per_device_train_batch_size (now 16)" in oom and "gradient_accumulation_steps" in oom
    assert _explain_failure(RuntimeError("something else"), cfg) is None
