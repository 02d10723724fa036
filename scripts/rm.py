"""A reward model on TRL's RewardTrainer: `python scripts/rm.py recipe=NAME rm.dataset=FILE ...` (same as `rlhf-app rm`)."""
import sys

from rlhf_app.cli.main import main

if __name__ == "__main__":
    main(["rm", *sys.argv[1:]])
