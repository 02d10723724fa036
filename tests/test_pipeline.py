"""`rlhf-app pipeline`: stages chained through `stage:` paths (SFT then PPO on the tiny model), finished stages
skipped, a killed or signalled pipeline continued by the same command exactly as an uninterrupted one, and the
mistakes (references, names, another pipeline or run in the folder) as one line before anything runs."""

import json
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import torch

from rlhf_app.cli.main import main as cli
from rlhf_app.config import ConfigError, load_config, to_yaml
from rlhf_app.stages.pipeline import stage_config

ROOT = Path(__file__).resolve().parent.parent
VOLATILE = ("time/", "perf/", "train_runtime", "train_samples_per_second", "train_steps_per_second", "eval_runtime",
            "eval_samples_per_second", "eval_steps_per_second",
            # counted by TRL's trainers since this process started training: a resume restarts them
            "train_loss", "num_tokens", "eval_num_tokens")


def _pipeline(out, *extra):
    return ["pipeline", "recipe=tiny-pipeline", f"output_dir={out}", *extra]


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith(VOLATILE)} for row in rows]


def _assert_same_run(a: Path, b: Path) -> None:
    """Two pipeline folders trained the same: every logged figure of every stage, and the final weights."""
    from safetensors.torch import load_file

    for stage in ("sft", "ppo"):
        rows_a, rows_b = _rows(a / stage / "metrics.jsonl"), _rows(b / stage / "metrics.jsonl")
        assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b], stage
        for row_a, row_b in zip(rows_a, rows_b):
            assert row_a.keys() == row_b.keys(), (stage, row_a["step"])
            for key in row_a:
                assert row_a[key] == pytest.approx(row_b[key], rel=1e-5, abs=1e-6), (stage, row_a["step"], key)
        wa, wb = (load_file(d / stage / "final" / "model.safetensors") for d in (a, b))
        assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa), stage


@pytest.fixture(scope="module")
def straight(interrupted, tmp_path_factory) -> Path:
    """The tiny-pipeline recipe run once, uninterrupted; only the rerun of the same command writes into it.
    Trained here while the interrupted pipelines, started first, run beside it."""
    out = tmp_path_factory.mktemp("straight") / "pipe"
    cli(_pipeline(out))
    return out


# ---- the config: references, names, per-stage keys (no model loads)

@pytest.mark.parametrize("args, message", [
    (["model.name_or_path=stage:sft"], "model.name_or_path=stage:sft names a pipeline stage: list the stages"),
    (["stages=[sft,ppo]", "per_stage.ppo.model.name_or_path=stage:rm"],
     "stage ppo: model.name_or_path=stage:rm names no stage of this pipeline (stages: sft, ppo)"),
    (["stages=[ppo,sft]", "per_stage.ppo.model.name_or_path=stage:sft"],
     "stage ppo: model.name_or_path=stage:sft names a stage that runs after ppo"),
    (["stages=[sft,ppo]", "model.name_or_path=stage:sft"],
     "stage sft: model.name_or_path=stage:sft names sft itself"),
    (["stages=[sft,ppo]", "reward.funcs=[toy,stage:rm]"], "stage ppo: reward.funcs=stage:rm names no stage"),
    (["stages=[sfft,ppo]"], "unknown stage 'sfft': did you mean sft?"),
    (["stages=[ppo,ppo]"], "stages lists ppo twice"),
    (["stages=[ppo]", "per_stage.sft.seed=1"], "per_stage.sft: no stage sft in stages [ppo]"),
    (["stages=[sft,ppo]", "per_stage.ppo.modl.name_or_path=x"], "unknown key modl.name_or_path; did you mean model."),
    (["stages=[sft,ppo]", "per_stage.ppo.output_dir=x"], "per_stage.ppo.output_dir is set for the whole pipeline"),
    (["stages=[sft,ppo]", "hub.push=true", "hub.repo_id=a/b"], "per_stage.ppo.hub.push=true"),
])
def test_pipeline_mistakes_are_one_line_before_anything_runs(tmp_path, one_line_error, args, message):
    error = one_line_error(["pipeline", "recipe=tiny", f"output_dir={tmp_path / 'p'}", *args])
    assert message in error
    assert not (tmp_path / "p").exists()  # nothing written


def test_references_in_keys_a_stage_does_not_read_are_its_successors_concern():
    # reward.funcs is PPO's: the SFT and reward-model stages before rm neither read nor resolve-check it
    cfg = load_config(["recipe=tiny", "stages=[sft,rm,ppo]", "model.name_or_path=stage:sft",
                       "per_stage.sft.model.name_or_path=asset:tiny", "reward.funcs=[stage:rm]"])
    rm, ppo = stage_config(cfg, "rm"), stage_config(cfg, "ppo")
    assert rm.model.name_or_path == ppo.model.name_or_path == "runs/tiny/sft/final"
    assert ppo.reward.funcs == ["runs/tiny/rm/final"] and ppo.sft is None and ppo.rm is None
    assert rm.rm is not None and rm.sft is None and rm.output_dir == "runs/tiny/rm"


def test_a_one_stage_pipeline_runs_exactly_the_plain_run(tmp_path):
    out = tmp_path / "p"
    stage = stage_config(load_config(["recipe=tiny", "stages=[ppo]", f"output_dir={out}"]), "ppo")
    plain = load_config(["recipe=tiny", f"output_dir={out / 'ppo'}", "resume_from=auto", "run_name=p-ppo"])
    assert to_yaml(stage) == to_yaml(plain)
    assert "stages" not in to_yaml(plain) and "per_stage" not in to_yaml(plain)  # a PPO run's config.yaml as before


def test_train_refuses_a_pipeline_recipe(one_line_error):
    error = one_line_error(["train", "recipe=tiny-pipeline"])
    assert "rlhf-app pipeline recipe=tiny-pipeline" in error


def test_the_folder_must_hold_this_pipeline_or_nothing(tmp_path, one_line_error):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    assert "holds a training run, not a pipeline" in one_line_error(_pipeline(run))
    other = tmp_path / "other"
    other.mkdir()
    (other / "pipeline.yaml").write_text("stages: [rm, ppo]\n")
    assert "holds the pipeline [rm, ppo], not [sft, ppo]" in one_line_error(_pipeline(other))
    live = tmp_path / "live"
    live.mkdir()
    (live / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    assert "is in use by a live run" in one_line_error(_pipeline(live))
    assert not (live / "sft").exists() and not (other / "sft").exists()
    stale = tmp_path / "stale"  # ppo finished, then its sft folder was removed
    (stale / "ppo" / "final").mkdir(parents=True)
    (stale / "pipeline.yaml").write_text("stages: [sft, ppo]\n")
    assert "has finished but stage sft before it has not" in one_line_error(_pipeline(stale))


# ---- running it

@pytest.mark.slow
def test_sft_then_ppo_chained_through_stage_paths_then_nothing_left_to_run(straight, capsys, one_line_error):
    sft, ppo = straight / "sft", straight / "ppo"
    # PPO started from the SFT stage's final/: its held-out score before PPO is SFT's, far above the tiny base's
    assert load_config([f"recipe={ppo / 'config.yaml'}"]).model.name_or_path == str(sft / "final")
    scores = json.loads((ppo / "eval.json").read_text())
    assert scores["before"]["mean_score"] > 0.2 and scores["after"]["mean_score"] > scores["before"]["mean_score"]
    losses = [r["loss"] for r in _rows(sft / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]
    page = (straight / "report.html").read_text()
    assert 'href="sft/report.html"' in page and 'href="ppo/report.html"' in page and "held-out score" in page

    # the same command again (it rewrites only pipeline.yaml and report.html, with the same content)
    copy = straight
    stamp = (copy / "ppo" / "final" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    cli(_pipeline(copy))
    said = capsys.readouterr().out
    assert "every stage has finished (sft, ppo): nothing to run" in said
    assert "stage sft (1/2): finished, skipped" in said and "stage ppo (2/2): finished, skipped" in said
    assert (copy / "ppo" / "final" / "model.safetensors").stat().st_mtime_ns == stamp
    # a finished stage asked for with other settings is refused, not silently skipped
    error = one_line_error(_pipeline(copy, "sft.learning_rate=1e-3"))
    assert "stage sft in" in error and "finished with other settings (sft.learning_rate: 0.003 -> 0.001)" in error


INTERRUPTED = {("KILL", "sft", 8): "test_a_killed_pipeline_continues_with_the_same_command_exactly",
               ("KILL", "ppo", 6): "test_a_killed_pipeline_continues_with_the_same_command_exactly",
               ("TERM", "ppo", 4): "test_sigterm_in_a_stage_saves_and_exits_143_naming_the_command_that_continues"}


@pytest.fixture(scope="module")
def interrupted(beside, tmp_path_factory) -> dict:
    """(how, stage, step) of INTERRUPTED -> (its folder, its Beside): the pipeline in a subprocess that signals
    itself (`how`: KILL, TERM) as `stage` begins to save checkpoint-`step`. Those of the selected tests start
    at once, before `straight` (conftest's beside): the signals land at fixed places, no assertion reads a timing."""
    from rlhf_app.assets.registry import resolve

    resolve("asset:tiny")  # built once here, not by each of them
    runs = {}
    for (how, stage, step), test in INTERRUPTED.items():
        out = tmp_path_factory.mktemp(f"{how}-{stage}") / "pipe"
        runs[how, stage, step] = out, beside(f"{how}-{stage}", [
            sys.executable, str(ROOT / "tests" / "pipeline_kill_worker.py"), how, stage, str(step),
            "recipe=tiny-pipeline", f"output_dir={out}"], for_tests=(test,), cwd=ROOT)
    return runs


@pytest.mark.slow  # a killed subprocess, then the rest of the pipeline
@pytest.mark.parametrize("stage, step", [("sft", 8), ("ppo", 6)])
def test_a_killed_pipeline_continues_with_the_same_command_exactly(straight, interrupted, capsys, stage, step):
    out, run = interrupted["KILL", stage, step]
    proc = run.result()
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / stage / "final").exists() and (out / stage / "checkpoint-4").is_dir()
    assert (out / "sft" / "final").is_dir() == (stage == "ppo")
    capsys.readouterr()
    cli(_pipeline(out))  # the same command: no resume flag, no overwrite
    said = capsys.readouterr().out
    if stage == "ppo":
        assert "stage sft (1/2): finished, skipped" in said
    assert f"continuing the run in {out / stage}" in said
    _assert_same_run(straight, out)
    assert not (out / ".lock").exists() and not (out / stage / ".lock").exists()


@pytest.mark.slow  # a signalled subprocess
def test_sigterm_in_a_stage_saves_and_exits_143_naming_the_command_that_continues(straight, interrupted, capsys):
    out, run = interrupted["TERM", "ppo", 4]
    proc = run.result()
    assert proc.returncode == 143, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last == f"pipeline stopped in stage ppo: continue it with rlhf-app pipeline recipe=tiny-pipeline " \
                   f"output_dir={out}"
    assert (out / "ppo" / "checkpoint-5").is_dir()  # the update in flight finished and was saved
    cli(_pipeline(out))
    _assert_same_run(straight, out)


def test_overwrite_output_dir_clears_the_pipeline_folder_and_its_stages(tmp_path):
    from rlhf_app.stages.pipeline import Stage, _check_folder

    out = tmp_path / "p"
    for folder in (out, out / "rm", out / "sft"):
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "sft" / "final").mkdir()
    (out / "notes.txt").write_text("mine")  # a user's file stays
    (out / "pipeline.yaml").write_text("stages: [rm, ppo]\n")
    cfg = load_config(_pipeline(out, "overwrite_output_dir=true")[1:])
    stages = [Stage(n, stage_config(cfg, n), "finished") for n in cfg.stages]
    _check_folder(cfg, stages)
    assert [s.status for s in stages] == ["new", "new"]
    assert not any(out.rglob("metrics.jsonl")) and not (out / "sft" / "final").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert load_config([f"recipe={out / 'pipeline.yaml'}"]).stages == ["sft", "ppo"]


@pytest.mark.slow
def test_sft_rm_ppo_the_reward_model_stage_is_ppos_reward(tmp_path):
    pairs = tmp_path / "pairs.jsonl"  # separable: chosen ends in "aaaa", rejected holds no "a"
    pairs.write_text("".join(json.dumps({"prompt": "the ", "chosen": "b" * (i % 5 + 1) + "aaaa",
                                         "rejected": "c" * (i % 5 + 5)}) + "\n" for i in range(48)))
    out = tmp_path / "pipe"
    cli(_pipeline(out, "stages=[sft,rm,ppo]", f"rm.dataset={pairs}", "rm.learning_rate=3e-3",
                  "reward.funcs=[stage:rm]", "ppo.total_episodes=64", "eval_before_after=false"))
    ppo = load_config([f"recipe={out / 'ppo' / 'config.yaml'}"])
    assert ppo.reward.funcs == [str(out / "rm" / "final")] and ppo.model.name_or_path == str(out / "sft" / "final")
    assert "rewards/rm/mean" in _rows(out / "ppo" / "metrics.jsonl")[-1]
    assert json.loads((out / "rm" / "rm_eval.json").read_text())["accuracy"] > 0.5
    assert "held-out pairwise accuracy" in (out / "report.html").read_text()
