"""Score a saved policy on its recipe's held-out prompts (same as `rlhf-app eval`):

    python scripts/eval.py run_dir=runs/tiny [split=eval|train] [num=N] [checkpoint=final|checkpoint-N]
"""
import sys

from rlhf_app.cli.main import main

if __name__ == "__main__":
    main(["eval", *sys.argv[1:]])
