"""Train with PPO: `accelerate launch scripts/train.py recipe=NAME key=value ...`."""
import sys

from rlhf_app.run import main

if __name__ == "__main__":
    main(sys.argv[1:])
