"""Train with PPO: `accelerate launch scripts/train.py recipe=NAME key=value ...` (same as `rlhf-app train`)."""
import sys

from rlhf_app.cli.main import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
