"""Score a saved policy on its recipe's held-out prompts (same as `rlhf-app eval`):

    python scripts/evaluate.py run_dir=runs/tiny [split=eval|train] [num=N] [checkpoint=final|checkpoint-N]
"""
import sys
from pathlib import Path

# This file's name shadows the `evaluate` library (the GSM8K metric imports it): drop scripts/ from the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from rlhf_app.cli.eval import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
