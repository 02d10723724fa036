"""Atomic, resumable checkpoints.

A checkpoint is written into `.checkpoint-N.tmp/` and renamed to `checkpoint-N/` only when every
process has written its part, so a folder named `checkpoint-N` is always complete: resume never
picks a half-written one. It holds the policy and critic (`save_policy`, full weights gathered
from every process), every process's own optimizer state (`optimizer_R.pt`: under ZeRO or FSDP each
process holds only its shard), LR scheduler, KL controller, sampler position, step, every process's
RNG states, and with asynchronous rollouts every process's batch in flight (`engine_state_R.pt`).
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from pathlib import Path

from rlhf_app.run_dir.atomic import remove_dir, replace_dir
from rlhf_app.run_dir.integrity import CheckpointError, damage, first_line, mismatch_error

# Listing checkpoints needs none of torch: it is imported where a checkpoint is written or read.
STATE_FILE = "trainer_state.pt"  # a checkpoint-N folder without it is not listed (not a checkpoint of ours)
STATE_JSON = "trainer_state.json"  # step, episode, num_processes: readable without torch
ENGINE_STATE = "engine_state_{}.pt"  # a process's engine's checkpoint_state(), when it has one


def _rng_state() -> dict:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(output_dir: Path, marker: str = STATE_FILE) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first: checkpoint-N folders holding `marker` (ours:
    trainer_state.pt; a transformers Trainer's, as the sft / rm stages save them: trainer_state.json)."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)
             and (p / marker).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def policy_folders(output_dir: Path) -> list[str]:
    """Names of the saved policies a run holds: its complete checkpoints, oldest first, then `final`, and
    `gold-best` (reward.gold's best evaluation)."""
    ends = [name for name in ("final", "gold-best") if (Path(output_dir) / name).is_dir()]
    return [p.name for p in checkpoints(output_dir)] + ends


def save_checkpoint(accelerator, output_dir: Path, model, tokenizer, trainer_state: dict,
                    total_limit: int, optimizer, engine_state: dict | None = None) -> Path:
    """Write checkpoint-{step} atomically; keep only the newest `total_limit` (0 keeps all). Every process calls it.
    `engine_state`: this process's engine's `checkpoint_state()` (None: nothing to save)."""
    import torch

    from rlhf_app.models.policy import save_policy

    step = trainer_state["step"]
    weights = accelerator.get_state_dict(model)  # collective: gathers sharded weights onto the main process
    final, tmp = output_dir / f"checkpoint-{step}", output_dir / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng_state_{accelerator.process_index}.pt")
    torch.save(optimizer.state_dict(), tmp / f"optimizer_{accelerator.process_index}.pt")
    if engine_state is not None:
        torch.save(engine_state, tmp / ENGINE_STATE.format(accelerator.process_index))
    if accelerator.is_main_process:
        save_policy(accelerator.unwrap_model(model), tokenizer, tmp, state_dict=weights)
        torch.save(trainer_state, tmp / STATE_FILE)
        (tmp / STATE_JSON).write_text(json.dumps(
            {**{k: v for k, v in trainer_state.items() if isinstance(v, (int, float, str))},
             "num_processes": accelerator.num_processes}, indent=2))
        if (output_dir / "config.yaml").is_file():  # what the resume checks compare against
            shutil.copy2(output_dir / "config.yaml", tmp / "config.yaml")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, final)
        if total_limit > 0:  # checkpoints past this one (a resume from an older one) are replaced as reached
            kept = [c for c in checkpoints(output_dir) if int(c.name.split("-")[1]) <= step]
            for old in kept[:-total_limit]:
                remove_dir(old)
    accelerator.wait_for_everyone()
    return final


def remove_leftovers(output_dir: Path) -> None:
    """Hidden temporary and half-deleted folders that a killed run left behind."""
    for path in list(Path(output_dir).glob(".*.tmp")) + list(Path(output_dir).glob(".*.deleting")):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def apply_learning_rate(optimizer, scheduler, learning_rate: float) -> bool:
    """Make a resumed run train at `learning_rate` (the schedule's base), not the checkpoint's rate.

    transformers' schedulers are LambdaLR: rate = base rate x factor(step); the factor is kept.
    Returns whether anything changed.
    """
    if all(base == learning_rate for base in scheduler.base_lrs):
        return False
    scheduler.base_lrs = [learning_rate] * len(scheduler.base_lrs)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return True


def find_resume(resume_from: str | None, output_dir: Path, marker: str = STATE_FILE) -> Path | None:
    """`auto` -> the newest complete checkpoint in output_dir (None if there is none); else the path.
    `marker`: the file a complete checkpoint holds (see `checkpoints`)."""
    if not resume_from:
        return None
    if resume_from == "auto":
        found = checkpoints(output_dir, marker)
        return found[-1] if found else None
    path = Path(resume_from)
    if not (path / marker).is_file():
        raise FileNotFoundError(f"resume_from={resume_from}: not a complete checkpoint folder "
                                f"(no {marker}); use resume_from=auto or a checkpoint-N path")
    return path


def check_whole(path: Path) -> None:
    """Before any model loads: every file of checkpoint `path` is there and whole, else one line that
    names the file and offers the newest whole checkpoint before it (`resume_from=...`)."""
    path = Path(path)
    found = damage(path, STATE_JSON, (STATE_FILE,))
    if found is None:
        return
    file, reason = found

    def number(p: Path) -> float:
        return int(p.name.split("-")[1]) if re.fullmatch(r"checkpoint-\d+", p.name) else float("inf")

    earlier = [c for c in checkpoints(path.parent) if number(c) < number(path)
               and damage(c, STATE_JSON, (STATE_FILE,)) is None]
    offer = (f"resume from the previous checkpoint with resume_from={earlier[-1]}" if earlier else
             "no earlier checkpoint is whole: start again in another output_dir")
    raise CheckpointError(f"the checkpoint file {file} is damaged ({reason}): {offer}, or restore the file")


def load_weights(path: Path, model, dtype: str) -> None:
    """The checkpoint's policy and critic into `model` before `accelerator.prepare` (which then shards them).
    Weights of another setup (a hand-edited config.yaml got past the resume checks) are one line."""
    from safetensors import SafetensorError

    from rlhf_app.models.policy import load_policy

    try:
        saved, _ = load_policy(path, dtype=dtype)
    except (OSError, ValueError, RuntimeError, EOFError, KeyError, SafetensorError) as err:
        raise CheckpointError(f"{path} cannot be loaded ({first_line(err)}): resume from another checkpoint, "
                              "or with the settings it was saved with (its config.yaml)") from err
    weights = saved.state_dict()
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise mismatch_error(path, {k: v.shape for k, v in weights.items()},
                             {k: v.shape for k, v in model.state_dict().items()}) from err


def _load(file: Path):
    import torch

    try:
        return torch.load(file, weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:  # torch.load: truncated or not a torch file
        raise CheckpointError(f"the checkpoint file {file} cannot be read ({first_line(err)}): resume from "
                              "an earlier checkpoint, or restore the file") from err


def load_engine_state(path: Path, accelerator) -> dict | None:
    """This process's engine state saved with checkpoint `path`, or None when the run saved none."""
    file = Path(path) / ENGINE_STATE.format(accelerator.process_index)
    return _load(file) if file.is_file() else None


def load_checkpoint(path: Path, accelerator, optimizer) -> dict:
    """Restore this process's optimizer state and RNG; return the saved trainer state."""
    rng_file = path / f"rng_state_{accelerator.process_index}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{path} was saved by a run with fewer processes: {rng_file.name} is missing")
    _set_rng_state(_load(rng_file))
    saved = _load(path / STATE_FILE)
    try:
        optimizer.load_state_dict(_load(path / f"optimizer_{accelerator.process_index}.pt"))
    except ValueError as err:  # parameter groups of another size: another model, LoRA or critic
        raise CheckpointError(f"{path} holds the optimizer state of another setup ({first_line(err)}): resume "
                              "with the settings it was saved with (its config.yaml)") from err
    return saved
