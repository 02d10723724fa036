"""Regenerate a run's report: `python scripts/report.py run_dir=runs/tiny`."""
import sys
from pathlib import Path

from rlhf_app.report import write_report


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith("-"))
    if len(argv) != 1 or set(args) != {"run_dir"}:
        sys.exit("usage: python scripts/report.py run_dir=PATH (the output_dir of a training run)")
    run_dir = Path(args["run_dir"])
    if not run_dir.is_dir():
        sys.exit(f"error: run_dir {run_dir} does not exist: pass the output_dir of a training run")
    try:
        out = write_report(run_dir)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(f"report written to {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
