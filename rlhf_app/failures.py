"""Failures a user can fix, raised by libraries, turned into one-line `UserError`s that name the fix.

Training: out of memory, a non-finite loss (`explained`). Loading: a Hub that cannot be reached,
answered with the recipe that needs no Hub (`hub_access`).
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from rlhf_app.config import TrainConfig, available_recipes
from rlhf_app.errors import UserError


class TrainingFailed(UserError):
    """Training stopped on something its settings can avoid (memory, divergence)."""


class HubUnreachable(UserError):
    """A model or dataset could not be fetched from the Hugging Face Hub."""


# The update squares the scores in float32 (value loss, advantage std, whitening): beyond this magnitude
# a square is inf, whatever the learning rate.
SQUARE_SAFE = math.sqrt(3.4028234663852886e38)


def non_finite_source(cfg: TrainConfig, largest: dict) -> str | None:
    """What made an update non-finite when a setting or a reward did: a non-finite learning rate or weight,
    or the reward whose scores (times its weight and ppo.reward_scale) are too large to square; else None.
    `largest` maps each reward function to its largest |weight · score| in the update."""
    if not math.isfinite(cfg.ppo.learning_rate):
        return f"ppo.learning_rate={cfg.ppo.learning_rate} is not a finite number: set a finite learning rate"
    weights = cfg.reward.weights or []
    if not all(math.isfinite(w) for w in weights):
        return f"reward.weights={weights} holds a non-finite weight: give each reward function a finite weight"
    if not largest:
        return None
    name, top = max(largest.items(), key=lambda item: item[1])
    effective = top * cfg.ppo.reward_scale
    if cfg.ppo.reward_clip is not None:
        effective = min(effective, cfg.ppo.reward_clip)
    if not effective > SQUARE_SAFE:  # (NaN included: not a score's doing)
        return None
    overflow = f"the update squares scores in float32, which overflows beyond {SQUARE_SAFE:.2g}"
    if top <= SQUARE_SAFE:
        return (f"ppo.reward_scale={cfg.ppo.reward_scale:g} takes the scores of reward {name!r} (up to {top:.3g}) to "
                f"{effective:.3g}: {overflow}; lower ppo.reward_scale or set ppo.reward_clip")
    return (f"reward {name!r} scored up to {top:.3g} (times its weight) in this update: {overflow}; make {name!r} "
            "return scores of a sensible size, or set ppo.reward_scale / ppo.reward_clip")


def explain(err: BaseException, cfg: TrainConfig, largest: dict | None = None) -> str | None:
    """One line for the failures a user can fix by changing settings, else None; `largest` is the
    reward's per-function largest |weight · score| of the last update (rewards.combine)."""
    import torch

    from rlhf_app.rl.loop import NonFiniteError
    from rlhf_app.run_dir.checkpoint import checkpoints

    if isinstance(err, NonFiniteError):
        found = checkpoints(Path(cfg.output_dir))
        keep = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint was saved before it"
        source = non_finite_source(cfg, largest or {})
        if source is not None:
            return f"{err}: {source}; {keep}"
        scores = f" (the largest |score| was {max(largest.values()):.3g})" if largest else ""
        return (f"{err}{scores}; {keep}. Lower ppo.learning_rate, set ppo.max_grad_norm, or use "
                "model.dtype=float32, then resume_from=auto")
    if isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower():
        p = cfg.ppo
        return (f"out of memory: lower ppo.per_device_train_batch_size (now {p.per_device_train_batch_size}) and "
                f"raise ppo.gradient_accumulation_steps to keep the batch, lower ppo.local_rollout_forward_batch_size "
                f"(now {p.local_rollout_forward_batch_size}) or ppo.response_length (now {p.response_length}), "
                "or set model.gradient_checkpointing=true / peft.enabled=true")
    return None


@contextlib.contextmanager
def explained(cfg: TrainConfig, reward_fn=None):
    """Around training: an error `explain` knows becomes a TrainingFailed; every other error passes.
    `reward_fn` (rewards.combine) says which reward scored what in the failing update."""
    try:
        yield
    except UserError:
        raise
    except (RuntimeError, ValueError) as err:
        message = explain(err, cfg, getattr(reward_fn, "largest", None))
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
