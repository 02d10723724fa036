"""The `rlhf-app` console command: `rlhf-app train|eval|push|report|env ...`.

Each subcommand takes the arguments of its script in scripts/ (which keep working, `accelerate
launch scripts/train.py` above all): `key=value` or TRL's `--key value`.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

USAGE = """usage: rlhf-app COMMAND [ARGS]

  train   PPO training:          rlhf-app train recipe=tiny ppo.learning_rate=1e-5  (or --config tiny --learning_rate 1e-5)
  eval    score a saved policy:  rlhf-app eval run_dir=runs/tiny [split=eval|train] [num=N] [checkpoint=final|checkpoint-N]
  push    push a run to the Hub: rlhf-app push run_dir=runs/tiny hub.repo_id=user/name [hub.dry_run=true]
  report  rebuild the report:    rlhf-app report run_dir=runs/tiny
  env     versions and devices for a bug report

Several processes: accelerate launch -m rlhf_app train recipe=NAME (or accelerate launch scripts/train.py ...)."""


def train(argv: list[str]) -> None:
    from rlhf_app.run import main

    main(argv)


def evaluate(argv: list[str]) -> None:
    from rlhf_app.cli.eval import main

    main(argv)


def push(argv: list[str]) -> None:
    from rlhf_app.hub.upload import main

    main(argv)


def report(argv: list[str]) -> None:
    """`report run_dir=PATH`: rebuild report.html and the plots of a run."""
    from rlhf_app.config import ConfigError, normalize_args

    try:
        args = normalize_args(argv)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    pairs = dict(a.split("=", 1) for a in args)
    if len(args) != 1 or set(pairs) != {"run_dir"}:
        sys.exit("usage: rlhf-app report run_dir=PATH (the output_dir of a training run)")
    run_dir = Path(pairs["run_dir"])
    if not run_dir.is_dir():
        sys.exit(f"error: run_dir {run_dir} does not exist: pass the output_dir of a training run")
    from rlhf_app.report import write_report

    try:
        out = write_report(run_dir)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(f"report written to {out}")


def env(argv: list[str]) -> None:
    if argv:
        sys.exit("usage: rlhf-app env (takes no arguments)")
    from rlhf_app.cli.env import print_env

    print_env()


COMMANDS = {"train": train, "eval": evaluate, "push": push, "report": report, "env": env}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        sys.exit(f"error: unknown command {command!r}: {hint}commands: {', '.join(COMMANDS)} (rlhf-app --help)")
    COMMANDS[command](rest)
