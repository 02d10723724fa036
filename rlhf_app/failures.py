"""Failures a user can fix, raised by libraries, turned into one-line `UserError`s that name the fix.

Training: out of memory, a non-finite loss (`explained`). Loading: a Hub that cannot be reached,
answered with the recipe that needs no Hub (`hub_access`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from rlhf_app.config import TrainConfig, available_recipes
from rlhf_app.errors import UserError


class TrainingFailed(UserError):
    """Training stopped on something its settings can avoid (memory, divergence)."""


class HubUnreachable(UserError):
    """A model or dataset could not be fetched from the Hugging Face Hub."""


def explain(err: BaseException, cfg: TrainConfig) -> str | None:
    """One line for the failures a user can fix by changing settings, else None."""
    import torch

    from rlhf_app.rl.loop import NonFiniteError
    from rlhf_app.run_dir.checkpoint import checkpoints

    if isinstance(err, NonFiniteError):
        found = checkpoints(Path(cfg.output_dir))
        keep = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was saved before it"
        return (f"{err}; {keep}. Lower ppo.learning_rate, set ppo.max_grad_norm, or use model.dtype=float32, "
                "then resume_from=auto")
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
        p = cfg.ppo
        return (f"out of memory: lower ppo.per_device_train_batch_size (now {p.per_device_train_batch_size}) and "
                f"raise ppo.gradient_accumulation_steps to keep the batch, lower ppo.local_rollout_forward_batch_size "
                f"(now {p.local_rollout_forward_batch_size}) or ppo.response_length (now {p.response_length}), "
                "or set model.gradient_checkpointing=true / peft.enabled=true")
    return None


@contextlib.contextmanager
def explained(cfg: TrainConfig):
    """Around training: an error `explain` knows becomes a TrainingFailed; every other error passes."""
    try:
        yield
    except UserError:
        raise
    except (RuntimeError, ValueError) as err:
        message = explain(err, cfg)
        if message is None:
            raise
        raise TrainingFailed(message) from err


@contextlib.contextmanager
def hub_access(what: str, name: str | None, cfg: TrainConfig):
    """Turn a failure to fetch `name` from the Hub into one line that names the offline recipe.

    transformers and datasets both raise OSError (ConnectionError) when the Hub cannot be reached;
    anything else, and anything not fetched from the Hub (None, an asset, a folder), passes through.
    """
    try:
        yield
    except OSError as err:
        if not name or name.startswith("asset:") or Path(name).exists():
            raise
        twin = f"{cfg.recipe}-offline" if f"{cfg.recipe}-offline" in available_recipes() else "demo"
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise HubUnreachable(f"cannot load {what} {name!r} from the Hugging Face Hub ({first}); "
                             f"without the Hub, run recipe={twin}") from err
