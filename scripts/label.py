"""Label pairs on a local page: `python scripts/label.py pairs.jsonl preferences.jsonl` (same as `rlhf-app label`)."""
import sys

from rlhf_app.cli.main import main

if __name__ == "__main__":
    main(["label", *sys.argv[1:]])
