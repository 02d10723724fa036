"""Preference pairs from a policy, labelled by a reward: `python scripts/pairs.py recipe=NAME ...` (same as `rlhf-app pairs`)."""
import sys

from rlhf_app.cli.main import main

if __name__ == "__main__":
    main(["pairs", *sys.argv[1:]])
