"""Supervised fine-tuning on TRL's SFTTrainer: `python scripts/sft.py recipe=NAME sft.dataset=FILE ...` (same as `rlhf-app sft`)."""
import sys

from rlhf_app.cli.main import main

if __name__ == "__main__":
    main(["sft", *sys.argv[1:]])
