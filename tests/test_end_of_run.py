"""The end of a run is never lost: the last update is always checkpointed (also with save_steps=0), a
signal during the last update, the evaluation after it, the report or the final save exits 130 / 143
with one line, and resume_from=auto then runs only what is left, to the weights of a run never
interrupted. Also: total_episodes that do not fill whole updates are rounded up with a note."""

import importlib
import json
import os
import signal

import pytest
from safetensors.torch import load_file

from rlhf_app import evaluation
from rlhf_app.cli.main import main
from rlhf_app.rl import loop

# 3 updates of 32 episodes; evaluation before and after, values.json and the report (the defaults).
ARGS = ("ppo.total_episodes=96",)


def _signal_self(sig):
    os.kill(os.getpid(), sig)  # delivered to this (the main) thread before the next Python line


@pytest.fixture(scope="module")
def straight(tmp_path_factory, train_tiny):
    out = tmp_path_factory.mktemp("straight") / "run"
    train_tiny(out, *ARGS)
    return out


def _same_weights(a, b) -> None:
    for name in ("model.safetensors", "value_head.safetensors"):
        wa, wb = load_file(a / "final" / name), load_file(b / "final" / name)
        assert wa.keys() == wb.keys()
        assert all((wa[k] == wb[k]).all() for k in wa), name


def _steps(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# Each phase: the function the run calls there (module, class or None, name), wrapped to send the signal.
PHASES = {
    "last update": ("rlhf_app.evaluation", "EvalEvery", "__call__", lambda args: args[1] == 3),  # (self, step, ...)
    "evaluation after": ("rlhf_app.evaluation", None, "values_along", lambda args: True),
    "report": ("rlhf_app.report.page", None, "write_report", lambda args: True),
    "final save": ("rlhf_app.run", None, "_save_final", lambda args: True),
}


@pytest.mark.slow  # two tiny runs per phase
@pytest.mark.parametrize("phase, sig", [("last update", signal.SIGINT), ("evaluation after", signal.SIGTERM),
                                        ("report", signal.SIGINT), ("final save", signal.SIGTERM)])
def test_a_signal_after_the_last_update_loses_nothing_and_resume_runs_only_what_is_left(
        tmp_path, train_tiny, straight, monkeypatch, capsys, phase, sig):
    module, cls, name, when = PHASES[phase]
    owner = importlib.import_module(module)
    owner = getattr(owner, cls) if cls else owner
    real = getattr(owner, name)

    def signalling(*args, **kwargs):
        if when(args):
            _signal_self(sig)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, signalling)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        main(["train", "recipe=tiny", f"output_dir={out}", *ARGS])
    assert stopped.value.code == 128 + sig
    printed = capsys.readouterr().out
    assert _steps(out) == [1, 2, 3]
    monkeypatch.setattr(owner, name, real)
    if phase == "final save":  # final/ is written whole first: the run has finished
        assert f"interrupted after the run finished: {out / 'final'} is complete" in printed
        assert not list(out.glob("checkpoint-*"))  # save_steps=0: the end checkpoint went once final/ was whole
    else:
        line = (f"interrupted: saved {out / 'checkpoint-3'}; continue with resume_from=auto" if phase == "last update"
                else f"interrupted after the last update: saved {out / 'checkpoint-3'}; finish the run (evaluation, "
                     "report, final/) with resume_from=auto")
        assert line in printed and not (out / "final").exists()
        updates, evaluations, evaluate = [], [], evaluation.evaluate_policy
        monkeypatch.setattr(loop, "ppo_update", lambda *a, **k: updates.append(1) or pytest.fail("re-trained"))
        monkeypatch.setattr(evaluation, "evaluate_policy", lambda *a, **k: evaluations.append(1) or evaluate(*a, **k))
        result = train_tiny(out, *ARGS, "resume_from=auto").result
        # Only what was left: no update, one evaluation (after; the one before is in eval.json), report, final/.
        assert updates == [] and evaluations == [1] and result["step"] == 3
        assert f"resumed from {out / 'checkpoint-3'} at update 3" in capsys.readouterr().out
        assert _steps(out) == [1, 2, 3]  # each update logged once
        assert not list(out.glob("checkpoint-*"))
    _same_weights(out, straight)
    assert (out / "report.html").is_file()
    assert json.loads((out / "eval.json").read_text()) == json.loads((straight / "eval.json").read_text())


def test_the_last_update_is_checkpointed_before_the_end_and_save_steps_0_keeps_none_after(
        tmp_path, train_tiny, monkeypatch):
    seen = {}
    real = evaluation.evaluate_policy

    def evaluate(*args, **kwargs):  # the evaluation after training finds the last update saved
        seen.setdefault("checkpoints", []).append(sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")))
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_policy", evaluate)
    train_tiny(tmp_path / "run", "ppo.total_episodes=64")
    assert seen["checkpoints"] == [[], ["checkpoint-2"]]  # before training: none; after: the last update's
    assert not list((tmp_path / "run").glob("checkpoint-*")) and (tmp_path / "run" / "final").is_dir()


def test_total_episodes_that_do_not_fill_an_update_are_rounded_up_with_a_note(tmp_path, train_tiny, capsys):
    result = train_tiny(tmp_path / "run", "ppo.total_episodes=10", "eval_before_after=false").result
    printed = capsys.readouterr().out
    assert result["step"] == 1 and result["episode"] == 32
    notes = [line for line in printed.splitlines() if line.startswith("note: one update")]
    assert notes == ["note: one update takes 32 episodes, so ppo.total_episodes=10 is rounded up to 1 update "
                     "(32 episodes), as TRL does"]
    train_tiny(tmp_path / "whole", "ppo.total_episodes=32", "eval_before_after=false")
    assert "note: one update" not in capsys.readouterr().out  # whole updates: no note
