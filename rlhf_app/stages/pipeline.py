"""`rlhf-app pipeline recipe=NAME`: a recipe's stages in order, each a whole run in output_dir/<stage>/.

A finished stage (its final/, written last) is skipped; a started one continues from its newest
checkpoint (`resume_from=auto`, the run folder's own checks); so the same command, run again after a
kill, goes on where the pipeline stopped. The pipeline folder has a lock and pipeline.yaml, the
pipeline's config: a different pipeline in the same folder, or a finished or started stage whose
settings changed what it trains, is one line before anything runs. A signal in a stage saves there
(the stage's own handling) and ends the pipeline with 130/143 and the command that continues it.
"""

from __future__ import annotations

import shlex
import signal
from pathlib import Path
from typing import NamedTuple

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlhf_app.config import ConfigError, TrainConfig, to_yaml
from rlhf_app.config.loading import STAGE_SECTIONS
from rlhf_app.config.pipeline import READS, REFERENCE, stage_kind
from rlhf_app.errors import UserError
from rlhf_app.run_dir.signals import Stopped

RECORD = "pipeline.yaml"  # the pipeline's resolved config, in output_dir


class PipelineError(UserError):
    """The pipeline folder cannot be used as asked (one line)."""


class Stage(NamedTuple):
    name: str
    cfg: TrainConfig  # the stage's own run: output_dir/<name>, references resolved
    status: str  # finished | started | new


def _resolve(value, out: Path):
    """`stage:NAME` -> output_dir/NAME/final, in a value, list or nested dict."""
    if isinstance(value, dict):
        return {k: _resolve(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, out) for v in value]
    if isinstance(value, str) and value.startswith(REFERENCE):
        return str(out / value[len(REFERENCE):] / "final")
    return value


def stage_config(cfg: TrainConfig, name: str) -> TrainConfig:
    """Stage `name`'s config: the pipeline's, its per_stage keys on top, `stage:` references resolved, in
    output_dir/<name> with resume_from=auto (a new folder starts, a started run continues). The section of
    its kind (sft, rm) is filled with its defaults where the recipe has none; the other stages' are left out."""
    kind, out = stage_kind(name), Path(cfg.output_dir)
    tree = OmegaConf.to_container(OmegaConf.structured(cfg))
    overrides = tree.pop("per_stage").get(name) or {}
    for other in STAGE_SECTIONS:
        if other != kind:
            tree[other] = None
        elif tree.get(kind) is None:  # the recipe sets nothing of it: its defaults
            del tree[kind]
    base = TrainConfig(**{kind: STAGE_SECTIONS[kind]()}) if kind in STAGE_SECTIONS else TrainConfig
    try:
        tree = _resolve(OmegaConf.to_container(OmegaConf.merge(tree, overrides)), out)
        tree.update(stages=[], per_stage={}, output_dir=str(out / name), resume_from="auto",
                    overwrite_output_dir=False, print_config=False, run_name=f"{cfg.run_name or out.name}-{name}")
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(base), tree))
    except OmegaConfBaseException as err:
        raise ConfigError(f"stage {name}: bad value for {getattr(err, 'full_key', None) or '?'}: "
                          f"{str(err).splitlines()[0]}") from None
    except ConfigError as err:
        raise ConfigError(f"stage {name}: {err}") from None


def _status(folder: Path) -> str:
    from rlhf_app.run_dir.claim import finished_at, holds_run

    return "finished" if finished_at(folder) is not None else "started" if holds_run(folder) else "new"


def _check_folder(cfg: TrainConfig, stages: list[Stage]) -> None:
    """On the main process, the pipeline's lock held: may this pipeline use output_dir? Replaces what
    overwrite_output_dir=true asks to replace, then records the pipeline."""
    from rlhf_app.run_dir.atomic import write_text
    from rlhf_app.run_dir.claim import config_changes, holds_run
    from rlhf_app.run_dir.outputs import clear_run

    out, names = Path(cfg.output_dir), [s.name for s in stages]
    record = out / RECORD
    before = list(OmegaConf.load(record).get("stages") or []) if record.is_file() else None
    if cfg.overwrite_output_dir:
        for folder in [out] + [out / n for n in dict.fromkeys((before or []) + names)]:
            if folder.is_dir():
                clear_run(folder)
        print(f"note: overwrite_output_dir=true: removed the earlier runs in {out}")
        stages[:] = [s._replace(status="new") for s in stages]
    elif holds_run(out):
        raise PipelineError(f"output_dir={out} holds a training run, not a pipeline: choose another output_dir, "
                            "or overwrite_output_dir=true to replace it")
    elif before is not None and before != names:
        raise PipelineError(f"output_dir={out} holds the pipeline [{', '.join(before)}], not [{', '.join(names)}]: "
                            "choose another output_dir, or overwrite_output_dir=true to replace it")
    for earlier, later in zip(stages, stages[1:]):  # a finished stage was fed by the stages before it as they are
        if later.status == "finished" and earlier.status != "finished":
            raise PipelineError(f"stage {later.name} in {out} has finished but stage {earlier.name} before it has not: "
                                f"{later.name} was made from another {earlier.name}; choose another output_dir, or "
                                "overwrite_output_dir=true to run the pipeline again")
    for stage in stages:  # a finished stage is skipped: it must be the one asked for (a started one: its own claim)
        saved = Path(stage.cfg.output_dir) / "config.yaml"
        if stage.status != "finished" or not saved.is_file():
            continue
        refused, applied, _ = config_changes(saved, stage.cfg, only=READS[stage_kind(stage.name)] or ())
        changed = refused + applied
        if changed:
            raise PipelineError(f"stage {stage.name} in {out} finished with other settings "
                                f"({'; '.join(changed[:4])}): restore them, choose another output_dir, or "
                                "overwrite_output_dir=true to run the pipeline again")
    write_text(record, to_yaml(cfg))


def _runner(kind: str):
    if kind == "ppo":
        from rlhf_app.run import run
    elif kind == "sft":
        from rlhf_app.stages.sft import run
    elif kind == "pairs":
        from rlhf_app.stages.pairs import run
    else:
        from rlhf_app.stages.rm import run
    return run


def _terminate(signum, frame):
    raise Stopped(signum, None)  # outside a stage's own handling: before its first save, between stages


def run_pipeline(cfg: TrainConfig, argv: list[str]) -> Path:
    """Run what is not finished; returns the pipeline's report.html. `argv` is the command's arguments
    (named in the line that says how to continue)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, parse_flag_from_env

    from rlhf_app.offline import set_network_env
    from rlhf_app.report.pipeline import write_pipeline_report
    from rlhf_app.run_dir.claim import RunLock, check_output_dir

    if cfg.resume_from not in (None, "", "auto"):
        raise PipelineError(f"resume_from={cfg.resume_from}: a pipeline continues by itself where it stopped "
                            "(each stage from its newest checkpoint): leave resume_from out")
    set_network_env(cfg.offline)
    stages = [Stage(n, stage_config(cfg, n), "new") for n in cfg.stages]  # every stage's config checked first
    out = Path(cfg.output_dir)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    lock, message = RunLock(out), None
    if state.is_main_process:  # decides; the other processes follow its plan
        try:
            check_output_dir(str(out))
            lock.acquire()
            stages = [s._replace(status=_status(Path(s.cfg.output_dir))) for s in stages]
            _check_folder(cfg, stages)
        except UserError as err:
            lock.release()
            message = str(err)
    if state.num_processes > 1:
        message, statuses = broadcast_object_list([message, [s.status for s in stages]])
        stages = [s._replace(status=status) for s, status in zip(stages, statuses)]
    if message is not None:
        raise PipelineError(message)
    again = f"rlhf-app pipeline {' '.join(shlex.quote(a) for a in argv)}".rstrip()
    old_term = signal.signal(signal.SIGTERM, _terminate)
    current = None
    try:
        state.print(f"pipeline {out}: {' -> '.join(cfg.stages)}")
        if all(s.status == "finished" for s in stages):
            state.print(f"every stage has finished ({', '.join(cfg.stages)}): nothing to run")
        for index, stage in enumerate(stages, 1):
            where = f"stage {stage.name} ({index}/{len(stages)})"
            if stage.status == "finished":
                state.print(f"{where}: finished, skipped ({stage.cfg.output_dir}/final)")
                continue
            current = stage.name
            doing = "continuing the run in" if stage.status == "started" else "starting in"
            state.print(f"{where}: {doing} {stage.cfg.output_dir}")
            _runner(stage_kind(stage.name))(stage.cfg)
            current = None
    except (Stopped, KeyboardInterrupt):
        if state.is_main_process:
            during = f" in stage {current}" if current else ""
            print(f"\npipeline stopped{during}: continue it with {again}", flush=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
        lock.release()
    report = out / "report.html"
    if state.is_main_process:
        report = write_pipeline_report(out, cfg.stages)
        print(f"pipeline finished: {', '.join(cfg.stages)} in {out}; report: {report}")
    return report
