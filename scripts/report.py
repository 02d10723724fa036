"""Regenerate a run's report: `python scripts/report.py run_dir=runs/tiny` (same as `rlhf-app report`)."""
import sys

from rlhf_app.cli import report

if __name__ == "__main__":
    report(sys.argv[1:])
