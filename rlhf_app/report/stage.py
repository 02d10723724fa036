"""The report page of an SFT or reward-model stage run, from its folder: the loss curve (train and held-out),
TRL's logged metrics, and for the reward model the held-out pairwise accuracy and the distribution of
score(chosen) - score(rejected) (rm_eval.json). report.py calls it for a folder whose metrics are a Trainer's."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure
from omegaconf import OmegaConf

from rlhf_app.config.stages import stage_settings
from rlhf_app.report.plots import series

STAGE_PANELS = {  # (title, [(metric key, label)]) drawn when logged
    "sft": [("Loss", [("loss", "train"), ("eval_loss", "held-out")]),
            ("Token accuracy", [("mean_token_accuracy", "train"), ("eval_mean_token_accuracy", "held-out")]),
            ("Learning rate", [("learning_rate", "lr")])],
    "rm": [("Loss", [("loss", "train")]), ("Pairwise accuracy (batch)", [("accuracy", "train")]),
           ("Margin score(chosen) - score(rejected)", [("margin", "train")]), ("Learning rate", [("learning_rate", "lr")])],
}


def settings_keys(stage: str, config) -> list[str]:
    """The stage's settings table: the recipe, seed, model.*, peft.* (its LoRA keys when enabled) and every key
    of its section (config/stages.py)."""
    lora = bool(config is not None and OmegaConf.select(config, "peft.enabled"))
    return ["recipe", *stage_settings(stage, lora=lora)]


def stage_of(metrics: list[dict], rm_eval) -> str:
    return "rm" if rm_eval is not None or any("margin" in r for r in metrics) else "sft"


def is_stage_run(metrics: list[dict]) -> bool:
    """A Trainer's rows (loss, learning_rate), none of PPO's objective/ keys."""
    return any("loss" in r for r in metrics) and not any(k.startswith("objective/") for r in metrics for k in r)


def _plot(metrics: list[dict], stage: str, path: Path) -> bool:
    panels = [(t, [(k, lab) for k, lab in keys if any(math.isfinite(v) for v in series(metrics, k))])
              for t, keys in STAGE_PANELS[stage]]
    panels = [p for p in panels if p[1]]
    if not panels:
        return False
    fig = Figure(figsize=(5 * len(panels), 3.6))
    for i, (title, keys) in enumerate(panels, 1):
        ax = fig.add_subplot(1, len(panels), i)
        for key, label in keys:
            points = [(r["step"], float(r[key])) for r in metrics if r.get(key) is not None]
            ax.plot(*zip(*points), marker="o" if len(points) < 3 else None, label=label)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return True


def _histogram(margins: list[float], path: Path) -> bool:
    if not margins:
        return False
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(margins, bins=min(30, max(5, len(margins) // 3)))
    ax.axvline(0.0, color="k", linestyle="--")
    ax.set_title("Held-out pairs: score(chosen) − score(rejected)")
    ax.set_xlabel("margin (right of 0: ranked correctly)")
    ax.set_ylabel("pairs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return True


def stage_parts(run_dir: Path, metrics: list[dict], rm_eval: dict | None, table, img) -> list[str]:
    """The page's sections (report.py's `table` and `img` helpers draw them the same way as PPO's)."""
    stage = stage_of(metrics, rm_eval)
    losses = [r["loss"] for r in metrics if "loss" in r]
    held = [r["eval_loss"] for r in metrics if "eval_loss" in r]
    steps = max((r["step"] for r in metrics), default=0)
    parts = [f"<h2>{'Reward model' if stage == 'rm' else 'Supervised fine-tuning'} (TRL's "
             f"{'RewardTrainer' if stage == 'rm' else 'SFTTrainer'})</h2>",
             table(["steps", "first loss", "last loss", "held-out loss"],
                   [[steps, losses[0] if losses else None, losses[-1] if losses else None, held[-1] if held else None]])]
    if rm_eval is not None:
        parts.append("<h2>Held-out preference pairs</h2>" + table(
            ["pairs", "pairwise accuracy", "mean margin"], [[rm_eval["pairs"], rm_eval["accuracy"], rm_eval["mean_margin"]]]))
        plot = run_dir / "plots" / "margins.png"
        parts.append(img(_histogram(rm_eval.get("margins", []), plot), plot, "margin histogram",
                         "No held-out margins recorded."))
    plot = run_dir / "plots" / "stage.png"
    parts.append("<h2>Training curves</h2>" + img(_plot(metrics, stage, plot), plot, "loss over steps",
                                                  "No metric rows recorded yet."))
    return parts
