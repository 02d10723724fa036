"""The `rlhf-app` command, `rlhf-app train|sft|rm|pairs|pipeline|eval|push|report|label|env ...`, and the one place where an error a
user can fix (`rlhf_app.errors.UserError`) ends the program: `error: <message>` on stderr, exit status 1.

Each command is a module of this package with `main(argv)`; it takes the arguments of its script in
scripts/ (which call this dispatcher, so `accelerate launch scripts/train.py` keeps working):
`key=value` or TRL's `--key value`.
"""

from __future__ import annotations

import difflib
import sys

from rlhf_app.cli import env, label, pairs, pipeline, push, report, stage, train
from rlhf_app.cli import eval as evaluate
from rlhf_app.errors import UserError
from rlhf_app.run_dir.signals import Stopped

USAGE = """usage: rlhf-app COMMAND [ARGS]

  train   PPO training:          rlhf-app train recipe=tiny ppo.learning_rate=1e-5  (or --config tiny --learning_rate 1e-5)
  sft     supervised stage:      rlhf-app sft recipe=tiny sft.dataset=data.jsonl --max_steps 100  (TRL's SFTTrainer)
  rm      reward-model stage:    rlhf-app rm recipe=tiny rm.dataset=pairs.jsonl  (TRL's RewardTrainer)
  pairs   preference pairs:      rlhf-app pairs recipe=tiny pairs.num_generations=4  (a policy's completions, labelled by a reward)
  pipeline stages in order:      rlhf-app pipeline recipe=tiny-pipeline  (the same command continues it)
  eval    score a saved policy:  rlhf-app eval run_dir=runs/tiny [split=eval|train] [num=N] [checkpoint=final|checkpoint-N]
  push    push a run to the Hub: rlhf-app push run_dir=runs/tiny hub.repo_id=user/name [hub.dry_run=true]
  report  rebuild the report:    rlhf-app report run_dir=runs/tiny
  label   a person labels pairs: rlhf-app label pairs.jsonl preferences.jsonl [--port 7860]  (a local page)
  env     versions and devices for a bug report

Several processes: accelerate launch -m rlhf_app train recipe=NAME (or accelerate launch scripts/train.py ...)."""

COMMANDS = {"train": train.main, "sft": stage.sft, "rm": stage.rm, "pairs": pairs.main, "pipeline": pipeline.main,
            "eval": evaluate.main, "push": push.main, "report": report.main, "label": label.main, "env": env.main}


class UnknownCommand(UserError):
    """`rlhf-app trian`: the message names the closest command."""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    try:
        if command not in COMMANDS:
            close = difflib.get_close_matches(command, COMMANDS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise UnknownCommand(f"unknown command {command!r}: {hint}commands: {', '.join(COMMANDS)} "
                                 "(rlhf-app --help)")
        COMMANDS[command](rest)
    except UserError as err:
        sys.exit(f"error: {err}")
    except Stopped as err:  # Ctrl-C or SIGTERM: the trainer saved a checkpoint at an update boundary and said where
        sys.exit(128 + err.signum)
    except KeyboardInterrupt:  # before training, or a second Ctrl-C
        sys.exit(130)
