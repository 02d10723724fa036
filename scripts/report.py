"""Regenerate a run's report: `python scripts/report.py run_dir=runs/tiny` (same as `rlhf-app report`)."""
import sys

from rlhf_app.cli.main import main

if __name__ == "__main__":
    main(["report", *sys.argv[1:]])
