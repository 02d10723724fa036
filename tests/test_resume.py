"""Killed or interrupted runs resume exactly (tool episodes too); kills during file rewrites leave resumable
folders; half-written checkpoints are never picked."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_app.run_dir.checkpoint import STATE_FILE, find_resume
from rlhf_app.run_dir.claim import RunDirError

import warm

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = ("time/", "perf/")  # wall-clock figures differ between any two runs


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def _start(out: Path, *extra: str) -> subprocess.Popen:
    # Output goes to files, not pipes: an unread pipe fills up and blocks the run on a slow machine.
    log = out.parent / f"{out.name}.log"
    proc = warm.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), "recipe=tiny", f"output_dir={out}",
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


EPISODES = 32  # per update of the tiny recipe (16 x 1 x 2 mini-batches)
COMMON = ["save_steps=3", "save_total_limit=1"]
IN_PROCESS = ("eval_before_after=false", *COMMON)  # the runs this process trains (train_tiny)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, train_tiny):
    """An uninterrupted run of `updates` updates, run once per length for the whole module."""
    runs = {}

    def get(updates: int) -> Path:
        if updates not in runs:
            runs[updates] = tmp_path_factory.mktemp(f"straight{updates}")
            train_tiny(runs[updates], *IN_PROCESS, f"ppo.total_episodes={EPISODES * updates}")
        return runs[updates]
    return get


def _assert_same_metrics(a: Path, b: Path) -> None:
    rows_a, rows_b = _metrics(a), _metrics(b)
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a] == list(range(1, len(rows_a) + 1))
    for row_a, row_b in zip(rows_a, rows_b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert abs(row_a[key] - row_b[key]) <= 1e-6 * max(1.0, abs(row_a[key])), (row_a["step"], key)


def _newest_step(out: Path) -> int:
    return int(find_resume("auto", out).name.split("-")[1])


@pytest.mark.slow  # a killed subprocess
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, train_tiny, straight):
    # The killed run asks for far more updates than it gets, so it is surely still running when killed;
    # the tiny recipe's learning rate is constant, so the total does not change the updates before it.
    killed = tmp_path / "killed"
    proc = _start(killed, *COMMON, "ppo.total_episodes=100000")
    _wait_for(lambda: (killed / "checkpoint-3" / STATE_FILE).is_file(), proc)
    # A second run into the live run's folder is kept out by the lock.
    with pytest.raises(RunDirError, match=rf"is in use by a live run \(pid {proc.pid} on "):
        train_tiny(killed, *IN_PROCESS, "resume_from=auto")
    proc.send_signal(signal.SIGKILL)
    _finish(proc)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "final").exists()

    updates = max(10, _newest_step(killed) + 3)
    # the stale lock is ignored
    _, result = train_tiny(killed, *IN_PROCESS, "resume_from=auto", f"ppo.total_episodes={EPISODES * updates}")
    assert result["step"] == updates
    _assert_same_metrics(straight(updates), killed)
    # save_total_limit=1 keeps only the newest checkpoint: the one of the last update.
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == [f"checkpoint-{updates}"]
    assert not (killed / ".lock").exists()


@pytest.mark.slow  # a signalled subprocess
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_save_at_an_update_boundary_and_resume_exactly(tmp_path, train_tiny, straight, sig, code):
    out = tmp_path / "run"
    proc = _start(out, *COMMON, "ppo.total_episodes=100000")
    metrics = out / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, proc)
    proc.send_signal(sig)
    stdout, stderr = _finish(proc)
    assert proc.returncode == code, stderr[-2000:]
    saved = find_resume("auto", out)
    assert saved is not None and f"interrupted: saved {saved}; continue with resume_from=auto" in stdout
    # The update in flight finished, and the checkpoint is of the update the last metrics row logged.
    step = _newest_step(out)
    assert step >= 2 and len(metrics.read_text().splitlines()) == step

    updates = max(10, step + 2)
    train_tiny(out, *IN_PROCESS, "resume_from=auto", f"ppo.total_episodes={EPISODES * updates}")
    _assert_same_metrics(straight(updates), out)


def _kill_command(mode: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "tests" / "kill_worker.py"), mode, "recipe=tiny", f"output_dir={out}",
            "eval_before_after=false", *COMMON, *extra]


def _kill_during(mode: str, out: Path, *extra: str) -> None:
    proc = warm.run(_kill_command(mode, out, *extra), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.fixture(scope="module", autouse=True)
def killed_in_rotation(beside, tmp_path_factory):
    """The rotation test's run, dying deleting checkpoint-3 once checkpoint-6 is written: a fixed place, so it
    starts as this module begins, if that test is selected, and runs beside the tests before it (conftest)."""
    out = tmp_path_factory.mktemp("rotation") / "run"
    return out, beside("rotation", _kill_command("rotation", out, f"ppo.total_episodes={EPISODES * 10}"), cwd=ROOT,
                       for_tests=("test_a_kill_during_checkpoint_rotation_leaves_a_resumable_folder",))


@pytest.mark.slow  # a killed subprocess
def test_a_kill_during_the_metrics_rewrite_leaves_a_resumable_folder(tmp_path, train_tiny, straight):
    out, total = tmp_path / "run", f"ppo.total_episodes={EPISODES * 10}"
    train_tiny(out, *IN_PROCESS, f"ppo.total_episodes={EPISODES * 5}")  # 5 updates logged, checkpoints 3 and 5
    for name in ("final", "checkpoint-5"):  # as if killed after logging update 5: rows 4-5 are past checkpoint-3
        shutil.rmtree(out / name)
    (out / "metrics.jsonl").write_text((out / "metrics.jsonl").read_text() + '{"step": 6, "episo')  # a torn row
    _kill_during("truncation", out, "resume_from=auto", total)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6  # the old file is whole: not yet replaced
    _, result = train_tiny(out, *IN_PROCESS, "resume_from=auto", total)
    assert result["step"] == 10 and not list(out.glob(".*.tmp"))
    _assert_same_metrics(straight(10), out)


@pytest.mark.slow  # a killed subprocess
def test_a_kill_during_checkpoint_rotation_leaves_a_resumable_folder(killed_in_rotation, train_tiny, straight):
    (out, run), total = killed_in_rotation, f"ppo.total_episodes={EPISODES * 10}"
    proc = run.result()
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-6"]
    assert (out / ".checkpoint-3.deleting").is_dir()  # half-deleted, but under a name nothing trusts
    _, result = train_tiny(out, *IN_PROCESS, "resume_from=auto", total)
    assert result["step"] == 10 and not list(out.glob(".*.deleting"))
    _assert_same_metrics(straight(10), out)


@pytest.mark.slow  # two in-process runs of tool episodes, 6 updates in all (~12 s)
def test_a_run_with_tools_resumes_exactly(tmp_path, train_tiny, tool_model):
    """The tool model samples episodes that call a toy tool; a run stopped after update 2 (its checkpoint, with
    the metrics of updates 3-4 already logged, as if killed before their checkpoint) and resumed ends with the
    uninterrupted run's weights, bit for bit, and its metrics (tool calls and failures included)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tool_fixtures import NOBODY, RIGHT, write_tools

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [RIGHT, NOBODY] * 16))
    args = ["eval_before_after=false", "save_steps=2", "save_total_limit=2", f"model.name_or_path={tool_model}",
            f"data.name={data}", "data.num_eval=4", f"tools=[{write_tools(tmp_path, 'good')}]",
            "ppo.response_length=64", "ppo.per_device_train_batch_size=8", "ppo.num_ppo_epochs=2",
            "ppo.temperature=0.7", "ppo.learning_rate=3e-4", f"ppo.total_episodes={16 * 4}"]  # 4 updates
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _, done = train_tiny(straight, *args)
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(straight / name, resumed / name)
    _, again = train_tiny(resumed, *args, "resume_from=auto")
    assert again["step"] == 4
    _assert_same_metrics(straight, resumed)
    rows = _metrics(resumed)
    assert all(r["tools/calls_per_episode"] > 0 and r["tools/failures"] > 0 for r in rows)  # the tool was called
    weights, resumed_weights = done["model"].state_dict(), again["model"].state_dict()
    assert weights.keys() == resumed_weights.keys()
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)
    before = AutoModelForCausalLM.from_pretrained(tool_model).state_dict()
    after = done["model"].policy.state_dict()
    assert not all(torch.equal(before[k], after[k]) for k in before)  # it trained


RANDOM_TOOL = '''import random


def draw(n: int) -> float:
    """A random number.

    Args:
        n: unused
    """
    return random.random()
'''


@pytest.mark.parametrize("isolation", ["none", "process"])
def test_a_tool_drawing_random_numbers_draws_the_same_after_a_resume(tmp_path, tiny_cfg, isolation):
    """In each batch a tool draws what it drew there in the uninterrupted run: in the training process from the
    checkpointed global generator, in the tool subprocess (a fresh one after a resume) from its per-batch seed."""
    import random

    from rlhf_app.engines.tool_calls import make_host
    from rlhf_app.engines.tool_specs import resolve_tools

    (tmp_path / "draws.py").write_text(RANDOM_TOOL)
    found = resolve_tools(tiny_cfg(f"tools=[{tmp_path}/draws.py:draw]").rollout)

    def batches(host, n: int) -> list[str]:
        out = []
        for _ in range(n):
            host.start([None])
            out.append(host.call(0, "draw", {"n": 1})[0])
        return out

    random.seed(0)
    straight = make_host(found, isolation, 10.0)
    first = batches(straight, 1)
    saved = random.getstate()  # what a checkpoint after batch 1 keeps
    rest = batches(straight, 2)
    served = getattr(straight, "proc", None)
    straight.close()
    assert served is None or served.exitcode == 0  # the subprocess ended on its own when its pipe closed
    random.seed(1)  # a new process ...
    random.setstate(saved)  # ... resumed from the checkpoint
    resumed = make_host(found, isolation, 10.0)
    try:
        assert batches(resumed, 2) == rest
    finally:
        resumed.close()
    assert len({*first, *rest}) == 3 and all(0 < float(x) < 1 for x in rest)


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


def test_nan_and_out_of_memory_get_one_line_that_names_the_fix(tmp_path, tiny_cfg):
    import torch

    from rlhf_app.failures import explain
    from rlhf_app.rl.loop import NonFiniteError

    cfg = tiny_cfg(output_dir=tmp_path)
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / STATE_FILE).write_bytes(b"x")
    nan = explain(NonFiniteError("non-finite loss, reward or KL at update 5"), cfg)
    assert nan.startswith("non-finite loss, reward or KL at update 5; the last good checkpoint is")
    assert "checkpoint-4" in nan and "resume_from=auto" in nan and "\n" not in nan
    oom = explain(torch.OutOfMemoryError("CUDA out of memory"), cfg)
    assert "lower ppo.per_device_train_batch_size (now 16)" in oom and "gradient_accumulation_steps" in oom
    assert explain(RuntimeError("something else"), cfg) is None


def test_logged_lr_is_the_rate_used_and_a_new_rate_on_resume_is_applied(tmp_path, train_tiny):
    # Linear decay over 2 updates x 8 optimizer steps: update 1 runs at the full rate, update 2 from half of it.
    args = ["ppo.lr_scheduler_type=linear", "ppo.missing_eos_penalty=1.0", "save_steps=1"]
    train_tiny(tmp_path, *IN_PROCESS, *args, f"ppo.total_episodes={EPISODES * 2}")
    rows = _metrics(tmp_path)
    assert [r["lr"] for r in rows] == pytest.approx([3e-3, 1.5e-3], rel=1e-9)
    for r in rows:  # both scores are logged: as the reward gave it, and after the missing-EOS penalty
        assert r["objective/scores_adjusted"] == pytest.approx(r["objective/scores"] - (1 - r["val/eos_fraction"]),
                                                               abs=1e-6)
    # Resumed with a new rate and a longer run: the schedule (8 of 24 steps left) applies to the new rate.
    train_tiny(tmp_path, *IN_PROCESS, *args, f"ppo.total_episodes={EPISODES * 3}", "resume_from=auto",
               "ppo.learning_rate=1e-3")
    assert _metrics(tmp_path)[2]["lr"] == pytest.approx(1e-3 * 8 / 24, rel=1e-9)
