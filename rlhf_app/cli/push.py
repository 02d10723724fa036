"""`rlhf-app push run_dir=PATH [hub.repo_id=user/name hub.dry_run=true ...]` (or `python scripts/push.py ...`):
push a finished run to the Hub with the config it recorded; only `hub.*` keys may change."""

from __future__ import annotations

from pathlib import Path

from rlhf_app.config import ALIASES, TrainConfig, load_config, normalize_args, parse_overrides
from rlhf_app.hub.upload import HubError, push


def load_run_config(run_dir: Path, overrides: list[str]) -> TrainConfig:
    """The config a run recorded (`run_dir/config.yaml`) with `hub.*` overrides on top."""
    from omegaconf import OmegaConf

    recorded = run_dir / "config.yaml"
    if not recorded.is_file():
        raise HubError(f"{recorded} does not exist: run_dir must be a folder written by a training run")
    for arg in overrides:
        if not ALIASES.get(arg.split("=", 1)[0], arg).startswith("hub."):
            raise HubError(f"{arg.split('=', 1)[0]} cannot change after training: only hub.* keys "
                           "may be overridden (e.g. hub.repo_id=user/name)")
    cfg = load_config([f"recipe={recorded}", *overrides])
    cfg.recipe = OmegaConf.load(recorded).get("recipe")  # the recipe name, not the path read here
    return cfg


def main(argv: list[str]) -> None:
    argv = normalize_args(argv)  # --run_dir PATH --hub_model_id NAME works too
    run_dirs = [a.split("=", 1)[1] for a in argv if a.startswith("run_dir=")]
    rest = [a for a in argv if not a.startswith("run_dir=")]
    if len(run_dirs) != 1 or not run_dirs[0]:
        raise HubError("pass the run folder once: python scripts/push.py run_dir=runs/NAME hub.repo_id=user/name")
    parse_overrides(rest)
    run_dir = Path(run_dirs[0])
    push(run_dir, load_run_config(run_dir, rest))
