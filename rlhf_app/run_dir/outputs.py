"""The manifest of what runs write into a run folder, and `clear_run`, which removes exactly that.

`overwrite_output_dir=true` must never take a user's file: a path is removed only when its name
matches what this project (or a tracker it starts inside the folder) writes; a folder shared with a
user (plots/, the trackers') loses only our files in it, and goes only once it is empty.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from rlhf_app.run_dir.atomic import remove_dir

# Files at the top of the run folder: launch (config.yaml), the loop's logs, the end of `train`
# (eval.json, values.json, report.html) and `rlhf-app eval` (eval-final.json, eval-checkpoint-N-train.json).
# Not .lock: the run that clears the folder holds it.
RUN_FILES = ("config.yaml", "metrics.jsonl", "samples.jsonl", "eval.json", "values.json", "report.html",
             "rm_eval.json",  # the reward-model stage's held-out pairs (stages/rm.py)
             "pairs_summary.json",  # the pairs stage's counts (stages/pairs.py)
             "gold.json")  # a run with reward.gold: its evaluations and the gold-best update (evaluation.py)
RUN_FILE_PATTERNS = (r"eval-(final|checkpoint-\d+|gold-best)(-train)?\.json",)
# Folders that are wholly ours: checkpoints, final/, the Hub upload folders (hub_upload/ of the final
# push, hub_upload-checkpoint-N/ of each hub.strategy=every_save push, kept by hub.dry_run=true).
RUN_DIR_PATTERNS = (r"checkpoint-\d+", r"final", r"hub_upload", r"hub_upload-checkpoint-\d+", r"gold-best")
# Folders whose files we write beside whatever else is there: {folder: name patterns of our files}.
# wandb (init dir=output_dir) writes wandb/; tensorboard (accelerate's project_dir/<project>) writes
# rlhf_app/: event files, and per start a <time.time()>/ folder with the hparams events and hparams.yml.
SHARED_DIRS = {
    "plots": (r"diagnostics\.png", r"values\.png", r"stage\.png", r"margins\.png", r"gold\.png"),  # PPO's; a stage's
    "wandb": (r"(offline-)?run-.+", r"latest-run", r"debug(-internal|-cli\..*)?\.log"),
    "rlhf_app": (r"events\.out\.tfevents\..+", r"\d+(\.\d+)?"),
}
# Hidden leftovers of a kill (`.NAME.tmp`, `.NAME.deleting`, `.write-test-*`): atomic.py and claim.py.
HIDDEN_PATTERNS = (r"\..+\.tmp", r"\..+\.deleting", r"\.write-test-.+")


def _matches(name: str, patterns) -> bool:
    return any(re.fullmatch(p, name) for p in patterns)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        remove_dir(path)


def run_outputs(output_dir: Path) -> list[Path]:
    """The paths in `output_dir` that runs write (for a shared folder: our files in it), sorted."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = []
    for path in out.iterdir():
        name = path.name
        if path.is_file() and not path.is_symlink() and (name in RUN_FILES or _matches(name, RUN_FILE_PATTERNS)):
            found.append(path)
        elif path.is_dir() and not path.is_symlink() and _matches(name, RUN_DIR_PATTERNS):
            found.append(path)
        elif _matches(name, HIDDEN_PATTERNS):
            found.append(path)
        elif name in SHARED_DIRS and path.is_dir() and not path.is_symlink():
            found += [p for p in path.iterdir() if _matches(p.name, SHARED_DIRS[name])]
    return sorted(found)


def clear_run(output_dir: Path) -> None:
    """Remove what runs wrote (overwrite_output_dir=true); every other file in the folder stays."""
    out = Path(output_dir)
    for path in run_outputs(out):
        _remove(path)
    for name in SHARED_DIRS:  # a shared folder goes once nothing but ours was in it
        folder = out / name
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
