"""Asynchronous rollouts (rollout.async=true, engines/overlap.py): the settings that cannot overlap refused
in one line; with vLLM on the tiny model, the overlap observed in the run's own timings, a stop and resume
exactly the unbroken run, and zero staleness exactly the synchronous run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhf_app.config import ConfigError, load_config
from rlhf_app.preflight import PreflightError, check_overlap
from rlhf_app.rl.loop import update_seed
from rlhf_app.rl.update import shuffled_groups

import warm

ROOT = Path(__file__).resolve().parent.parent
TRAIN = str(ROOT / "scripts" / "train.py")
VOLATILE = ("time/", "perf/")  # wall-clock figures differ between any two runs
ASYNC = ("rollout.engine=vllm", "rollout.async=true")
# The runs' environment as a user's shell has it: no OMP_NUM_THREADS (conftest sets 1 for this process), so the
# rollout thread starts at the machine's OpenMP count and must take the trainer's (the tiny recipe's num_threads
# 1) before vLLM's CPU attention runs there.
USER_ENV = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


# ---- settings, no model
def test_rollout_async_and_trls_max_staleness_are_read_and_turn_the_correction_on():
    r = load_config(["recipe=tiny", *ASYNC]).rollout
    assert (r.asynchronous, r.max_staleness, r.importance_sampling) == (True, 1, True)
    r = load_config(["recipe=tiny", "--use_vllm", "--max_staleness", "0", "rollout.async=true"]).rollout
    assert (r.engine, r.asynchronous, r.max_staleness) == ("vllm", True, 0)
    # the correction stays the user's choice when set, and off by default without async
    r = load_config(["recipe=tiny", *ASYNC, "rollout.vllm_importance_sampling_correction=false"]).rollout
    assert r.asynchronous and not r.importance_sampling
    assert not load_config(["recipe=tiny", "rollout.engine=vllm"]).rollout.importance_sampling


def test_a_recipe_may_write_async_as_a_key(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text((ROOT / "recipes" / "tiny.yaml").read_text() + "rollout:\n  engine: vllm\n  async: true\n")
    assert load_config([f"recipe={recipe}"]).rollout.asynchronous
    with pytest.raises(ConfigError, match=r"^command line: rollout.async=True \(the short name for "
                                          r"rollout.asynchronous\) disagrees with rollout.asynchronous=False"):
        load_config(["recipe=tiny", *ASYNC, "rollout.asynchronous=false"])


@pytest.mark.parametrize("args, message", [
    (["rollout.async=true"], r"^rollout.async=true needs rollout.engine=vllm: the hf engine samples with the very "
                             r"weights the update is changing$"),
    ([*ASYNC, "rollout.vllm_enable_sleep_mode=true"], r"^rollout.async=true samples while the update trains, so "
                                                      r"the engine cannot sleep then: set rollout.vllm_enable_sleep"),
    ([*ASYNC, "--max_staleness", "2"], r"^rollout.max_staleness must be 0 or 1 \(one update stale"),
])
def test_settings_that_cannot_overlap_are_one_line(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(["recipe=tiny", *args])


def test_more_than_one_process_is_refused_before_any_model_loads():
    rollout = load_config(["recipe=tiny", *ASYNC]).rollout
    check_overlap(rollout, 1)
    with pytest.raises(PreflightError, match=r"^rollout.async=true overlaps sampling and training in one process, "
                                             r"not 2: launch one process, or set rollout.async=false$"):
        check_overlap(rollout, 2)


def test_the_shuffles_draw_from_their_own_seeded_generator():
    # The rollout thread draws from torch's global generator; the shuffles must not depend on it.
    def order(seed):
        return shuffled_groups(12, 4, "cpu", torch.Generator().manual_seed(seed))

    first = order(update_seed(0, 0, 5))
    torch.rand(100)  # the global generator moves on
    assert torch.equal(first, order(update_seed(0, 0, 5)))
    assert sorted(first.view(3, 4)[:, 0].tolist()) == [0, 4, 8]  # whole groups of 4, in some order
    assert torch.equal(first.view(3, 4) - first.view(3, 4)[:, :1], torch.arange(4).expand(3, 4))
    seeds = {update_seed(0, 0, 5), update_seed(0, 0, 6), update_seed(0, 1, 5), update_seed(1, 0, 5)}
    assert len(seeds) == 4  # each update, process and run seed shuffles its own way


# ---- real runs through vLLM (subprocesses: each frees its engine's memory when it ends; those whose timings no
# assertion reads run side by side on the two cores)
def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _steady(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(VOLATILE)}


def _weights(out: Path, saved: str = "final") -> dict:
    from safetensors.torch import load_file

    return {**load_file(out / saved / "model.safetensors"), **load_file(out / saved / "value_head.safetensors")}


def _cmd(out: Path, *args: str) -> list[str]:
    return [sys.executable, TRAIN, "recipe=tiny", f"output_dir={out}", "eval_before_after=false", *args]


def _train(out: Path, *args: str) -> Path:
    proc = warm.run(_cmd(out, *args), cwd=ROOT, env=USER_ENV, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


EPISODES = 32  # per update of the tiny recipe
UPDATES = 20
RESUMED = 10  # the stopped run is resumed to here; the unbroken run's checkpoint of this update is its match


@pytest.fixture(scope="module")
def async_run(tmp_path_factory):
    pytest.importorskip("vllm")
    return _train(tmp_path_factory.mktemp("async"), *ASYNC, f"ppo.total_episodes={EPISODES * UPDATES}",
                  f"save_steps={RESUMED}")


# The same path (a thread, the wrapper, its checkpoints) with the batch sampled after the sync and waited for;
# the synchronous run with the same importance weights on the engine/trainer mismatch.
ZERO = ("rollout.engine=vllm", "rollout.vllm_importance_sampling_correction=true", f"ppo.total_episodes={EPISODES * 6}",
        "save_steps=4")


@pytest.fixture(scope="module")
def sync_and_zero(beside, tmp_path_factory):
    """The synchronous and the zero-staleness run, started side by side (conftest's beside) by the resume test,
    so that they share the two cores with its runs; the test that compares them waits for them. The async run,
    whose overlap is asserted from its timings, runs alone before them."""
    pytest.importorskip("vllm")
    base = tmp_path_factory.mktemp("zero")
    return {name: (base / name, beside(name, _cmd(base / name, *ZERO, *extra), cwd=ROOT, env=USER_ENV,
                                       for_tests=("test_zero_staleness_is_exactly_the_synchronous_run",)))
            for name, extra in (("sync", ()), ("zero", ("rollout.async=true", "rollout.max_staleness=0")))}


@pytest.mark.slow
def test_async_rollouts_overlap_training_and_still_raise_the_reward(async_run):
    rows = _rows(async_run)
    assert [r["step"] for r in rows] == list(range(1, UPDATES + 1))
    # The first batch is sampled before the first update, from its weights; every later one during the update
    # before, one update stale. The update waits less for it than the engine took to sample it (time/sampling_s,
    # measured in the rollout thread): it started before the update did, so it ran while the previous one trained.
    assert rows[0]["rollout/staleness"] == 0 and all(r["rollout/staleness"] == 1 for r in rows[1:])
    assert rows[0]["time/generate_s"] >= rows[0]["time/sampling_s"]
    assert all(r["time/generate_s"] < r["time/sampling_s"] for r in rows[1:]), \
        [(r["time/generate_s"], r["time/sampling_s"]) for r in rows]
    # The staleness shows in the importance weights that correct it.
    assert all(r["rollout/importance_weight_std"] > 0 for r in rows[1:])
    hidden = sum(r["time/sampling_s"] - r["time/generate_s"] for r in rows[1:])
    print(f"async tiny: {hidden:.2f} s of sampling hidden behind training in {UPDATES - 1} updates")
    first = sum(r["objective/scores"] for r in rows[:3]) / 3
    last = sum(r["objective/scores"] for r in rows[-3:]) / 3
    assert first < 0.15 and last > first + 0.3, (first, last)


@pytest.mark.slow
def test_an_async_run_stopped_and_resumed_equals_the_unbroken_one(async_run, sync_and_zero, tmp_path):
    # The stopped run asks for far more updates than it gets, the resumed one for fewer than the unbroken run:
    # the tiny recipe's rate is constant, so the total changes nothing before it. The checkpoint holds the batch
    # in flight, which the resumed run trains on first. (sync_and_zero: its two runs start now, beside these.)
    out = tmp_path / "stopped"
    log = tmp_path / "stopped.err"
    proc = warm.Popen(_cmd(out, *ASYNC, "save_steps=3", "ppo.total_episodes=100000"), cwd=ROOT, env=USER_ENV,
                      stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    deadline = time.monotonic() + 900  # ends a hung run only: no speed target
    while not (out / "checkpoint-3" / "trainer_state.pt").is_file():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint-3 in 15 minutes"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=900) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    stopped_at = len(_rows(out))
    assert (out / f"checkpoint-{stopped_at}" / "engine_state_0.pt").is_file()
    assert stopped_at < RESUMED

    _train(out, *ASYNC, "resume_from=auto", f"ppo.total_episodes={EPISODES * RESUMED}")
    assert [_steady(r) for r in _rows(out)] == [_steady(r) for r in _rows(async_run)[:RESUMED]]
    straight, resumed = _weights(async_run, f"checkpoint-{RESUMED}"), _weights(out)
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.slow
def test_zero_staleness_is_exactly_the_synchronous_run(sync_and_zero):
    (sync, sync_run), (zero, zero_run) = sync_and_zero["sync"], sync_and_zero["zero"]
    sync_run.ok(), zero_run.ok()
    rows_sync, rows_zero = _rows(sync), _rows(zero)
    assert all(r["rollout/staleness"] == 0 and r["time/generate_s"] >= r["time/sampling_s"] for r in rows_zero)
    assert [{k: v for k, v in _steady(r).items() if k != "rollout/staleness"} for r in rows_zero] == \
        [_steady(r) for r in rows_sync]
    a, b = _weights(sync), _weights(zero)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
