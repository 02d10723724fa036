"""`rlhf-app report run_dir=PATH` (or `python scripts/report.py ...`): rebuild report.html and the plots of a run."""

from __future__ import annotations

import sys
from pathlib import Path

from rlhf_app.config import ConfigError, normalize_args
from rlhf_app.errors import UserError


def main(argv: list[str]) -> None:
    args = normalize_args(argv)
    pairs = dict(a.split("=", 1) for a in args)
    if len(args) != 1 or set(pairs) != {"run_dir"}:
        sys.exit("usage: rlhf-app report run_dir=PATH (the output_dir of a training run)")
    run_dir = Path(pairs["run_dir"])
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir {run_dir} does not exist: pass the output_dir of a training run")
    from rlhf_app.report.page import write_report

    try:
        out = write_report(run_dir)
    except (FileNotFoundError, ValueError) as err:  # no metrics.jsonl, or a line of it that is not JSON
        raise UserError(str(err)) from None
    print(f"report written to {out}")
