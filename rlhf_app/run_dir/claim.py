"""The run folder: who may write into it, and whether a new run may start, continue or replace one.

Nothing a user made is lost: a new run into a folder that holds another run is refused unless it
asks to continue (`resume_from`) or to replace (`overwrite_output_dir=true`); a lock file keeps a
second live run out; a resume is checked against the checkpoint's config before anything in the
folder is written. Runs on the main process, before any model loads.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from rlhf_app.config import TrainConfig, flat_keys
from rlhf_app.preflight import PreflightError
from rlhf_app.run_dir.checkpoint import STATE_FILE, STATE_JSON, check_whole, checkpoints, find_resume, remove_leftovers
from rlhf_app.run_dir.integrity import CheckpointError
from rlhf_app.run_dir.outputs import clear_run

LOCK_FILE = ".lock"
FINISHED_FILE = "trainer_state.json"  # in final/: the update the run finished at
# Changes a resume may make. Any other changed key alters what is trained: the resume is refused.
SAFE = ("output_dir", "resume_from", "overwrite_output_dir", "recipe", "save_steps", "save_total_limit",
        "report_to", "run_name", "logging_steps", "sample_every", "eval_before_after", "eval_steps", "print_config",
        "num_threads", "offline", "hub.", "data.num_eval", "reward.batch_size", "reward.device", "log_completions",
        "num_completions_to_print", "ppo.local_rollout_forward_batch_size", "model.gradient_checkpointing",
        "model.attn_implementation", "rollout.vllm_gpu_memory_utilization", "rollout.vllm_kv_cache_gib",
        "rollout.vllm_enable_sleep_mode", "rollout.vllm_enforce_eager")
# Changes a resume applies from the next update on, with a note.
APPLIED = ("ppo.learning_rate", "ppo.max_grad_norm", "ppo.total_episodes")
# A refused resume names these first: the setup of the weights (model, critic, adapters, estimator).
SETUP = ("model.name_or_path", "model.value_model", "peft.enabled", "algorithm.advantage_estimator")
MAX_SHOWN = 6


class RunDirError(PreflightError):
    """The run folder cannot be used as asked; the message names the three ways on."""


def check_output_dir(output_dir: str) -> None:
    """The run folder can be created and written to (before any model loads)."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise RunDirError(f"output_dir={output_dir} is not writable ({reason}): choose another output_dir") \
            from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class RunLock:
    """`output_dir/.lock` holding {"pid", "host"}; a lock whose process is gone (same host) is stale."""

    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / LOCK_FILE
        self.held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    other = json.loads(self.path.read_text())
                except (OSError, ValueError):  # torn by a kill while it was written: nobody holds it
                    other = {"pid": -1, "host": me["host"]}
                if other.get("host") == me["host"] and not _pid_alive(int(other.get("pid", -1))):
                    print(f"note: removing the stale lock {self.path} of a run that ended (pid {other.get('pid')})",
                          file=sys.stderr)
                    self.path.unlink(missing_ok=True)
                    continue
                raise RunDirError(
                    f"output_dir={self.path.parent} is in use by a live run (pid {other.get('pid')} on "
                    f"{other.get('host')}, lock {self.path}): wait for it to end, or choose another output_dir "
                    "(if that run is gone, delete the lock file)") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RunDirError(f"could not take the lock {self.path}: another run took it first; choose another output_dir")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def holds_run(output_dir: Path, marker: str = STATE_FILE) -> bool:
    """Whether the folder holds a run's results: a logged update, a checkpoint (holding `marker`) or final/.
    A config.yaml alone (a run that failed before its first update) is rewritten by the next start."""
    out = Path(output_dir)
    metrics = out / "metrics.jsonl"
    return (metrics.is_file() and metrics.stat().st_size > 0) or (out / "final").exists() or \
        bool(checkpoints(out, marker))


def finished_at(output_dir: Path) -> int | None:
    """The update a finished run ended at (final/ exists), else None; -1 when final/ does not say."""
    final = Path(output_dir) / "final"
    if not final.is_dir():
        return None
    try:
        return int(json.loads((final / FINISHED_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def config_changes(old_yaml: Path, cfg: TrainConfig, only: tuple[str, ...] = (),
                   safe_keys: tuple[str, ...] = SAFE) -> tuple[list[str], list[str], list[str]]:
    """(refused, applied, safe) changes between a saved config.yaml and `cfg`, as `key: old -> new`.

    A key the old file lacks (added to rlhf_app since) counts as its default value. `only`: compare just
    the keys under these prefixes (a stage trains from model, peft, seed and its own section);
    `safe_keys`: the changes that alter nothing trained.
    """
    old = flat_keys(OmegaConf.to_container(OmegaConf.load(old_yaml)))
    new = flat_keys(OmegaConf.to_container(OmegaConf.structured(cfg)))
    default = flat_keys(OmegaConf.to_container(OmegaConf.structured(TrainConfig)))
    refused, applied, safe = [], [], []
    for key, value in new.items():
        if only and not key.startswith(only):
            continue
        before = old.get(key, default.get(key))
        if before == value or (isinstance(before, (int, float)) and isinstance(value, (int, float))
                               and float(before) == float(value)):
            continue
        line = f"{key}: {before!r} -> {value!r}"
        if key in APPLIED:
            applied.append(line)
        elif any(key == s or (s.endswith(".") and key.startswith(s)) for s in safe_keys):
            safe.append(line)
        else:
            refused.append(line)
    return refused, applied, safe


def check_start(cfg: TrainConfig, total_updates: int, num_processes: int) -> list[str]:
    """May this run start in cfg.output_dir as asked? Returns notes to print; raises RunDirError.

    Called with the lock held and before anything in the folder is written. Every resume is checked the
    same way, `auto` and a named checkpoint alike, into this run's folder or a new one.
    """
    out = Path(cfg.output_dir)
    again = "continue it with resume_from=auto, replace it with overwrite_output_dir=true, or choose another output_dir"
    if holds_run(out):
        if cfg.overwrite_output_dir:
            clear_run(out)
            return [f"note: overwrite_output_dir=true: removed the earlier run in {out}"]
        if not cfg.resume_from:
            raise RunDirError(f"output_dir={out} holds another run: {again}")
    elif cfg.resume_from in (None, "", "auto"):
        return []
    resume = find_resume(cfg.resume_from, out)
    finished = finished_at(out)
    if resume is None:
        if finished is not None:
            raise RunDirError(f"the run in {out} has finished (final/ holds it) and left no checkpoint to continue "
                              f"from: choose another output_dir, or overwrite_output_dir=true to replace it")
        return [f"note: {out} holds a run that saved no checkpoint: starting it again from update 0"]
    check_whole(resume)  # every file there and whole, before any model loads
    run = resume.resolve().parent
    elsewhere = run != out.resolve()
    if elsewhere and holds_run(out) and run not in _continued_from(out):
        raise RunDirError(f"resume_from={cfg.resume_from} is a checkpoint of the run in {run}, but output_dir={out} "
                          "holds another run: resume it into a new output_dir, or use resume_from=auto to "
                          f"continue the run in {out}")
    saved = json.loads((resume / STATE_JSON).read_text())
    step, saved_processes = saved["step"], saved.get("num_processes", num_processes)
    notes = _compare_configs(cfg, resume, step)
    if finished == -1:
        raise RunDirError(f"the run in {out} has finished (final/ holds it) at an update it did not record: "
                          "choose another output_dir to train further")
    if finished is not None:
        if total_updates <= max(finished, step):
            raise RunDirError(f"the run in {out} has finished at update {finished} (final/ holds it); nothing to "
                              f"resume: raise ppo.total_episodes to train further, or choose another output_dir")
        if step < finished:
            raise RunDirError(f"the run in {out} finished at update {finished} but its newest checkpoint is update "
                              f"{step}: continuing from it would replace final/ with older weights; choose another "
                              "output_dir")
    if total_updates < step:
        raise RunDirError(f"{resume} is at update {step}, past the {total_updates} updates ppo.total_episodes now "
                          "asks for: raise ppo.total_episodes, or choose another output_dir")
    if saved_processes != num_processes:
        raise RunDirError(f"{resume} was saved by {saved_processes} processes, this run has {num_processes}: "
                          "the batch and data order would change; launch with the same number of processes")
    if elsewhere:
        notes.append(f"note: continuing the run in {run} from its update {step} in output_dir={out}: "
                     f"its logs of updates 1-{step} stay in {run}")
    return notes


def _continued_from(out: Path) -> set[Path]:
    """The run folders whose checkpoints the run in `out` was resumed from (its config.yaml's resume_from)."""
    try:
        named = OmegaConf.load(out / "config.yaml").get("resume_from")
    except Exception:  # noqa: BLE001 -- no config, or one a user broke: no such run
        return set()
    return {Path(named).resolve().parent} if named and named != "auto" else set()


def _compare_configs(cfg: TrainConfig, resume: Path, step: int) -> list[str]:
    """The resume's notes; refuses changes to what is trained. Compared with the config the checkpoint
    was saved with, else with its run folder's (a checkpoint of an older version holds none)."""
    old_yaml = resume / "config.yaml" if (resume / "config.yaml").is_file() else resume.parent / "config.yaml"
    if not old_yaml.is_file():
        return [f"note: {resume} holds no config.yaml: the resumed settings could not be compared"]
    try:
        refused, applied, safe = config_changes(old_yaml, cfg)
    except Exception as err:  # noqa: BLE001 -- YAML errors have no common base with OmegaConf's
        raise RunDirError(f"{old_yaml} cannot be read ({str(err).strip().splitlines()[0][:200]}): restore it, "
                          f"or resume from another checkpoint") from None
    if refused:
        shown = sorted(refused, key=lambda line: not line.startswith(SETUP))[:MAX_SHOWN]
        more = f"; and {len(refused) - len(shown)} more" if len(refused) > len(shown) else ""
        raise RunDirError(f"resume_from={cfg.resume_from} with settings that change what is trained ("
                          f"{'; '.join(shown)}{more}): restore them, or start a new run in another output_dir")
    return [f"note: resuming with {line} (applied from update {step + 1})" for line in applied] + \
           [f"note: resuming with {line}" for line in safe]


class claim:
    """`with claim(cfg, state, total_updates):` the checks above and the lock, held for the whole run.

    The main process decides; every process raises the same one-line error, so none waits forever
    for a main process that has stopped.
    """

    def __init__(self, cfg: TrainConfig, state, total_updates: int):
        self.cfg, self.state, self.total_updates = cfg, state, total_updates
        self.lock = RunLock(Path(cfg.output_dir))

    def __enter__(self):
        message, notes = None, []
        if self.state.is_main_process:
            try:
                check_output_dir(self.cfg.output_dir)
                self.lock.acquire()
                remove_leftovers(Path(self.cfg.output_dir))
                notes = check_start(self.cfg, self.total_updates, self.state.num_processes)
            except (PreflightError, CheckpointError, FileNotFoundError) as err:
                self.lock.release()
                message = str(err)
        if self.state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            message = broadcast_object_list([message])[0]
        if message is not None:
            raise RunDirError(message)
        for note in notes:
            print(note)
        return self

    def __exit__(self, *exc):
        self.lock.release()
        return False
