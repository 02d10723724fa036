"""Run a pipeline recipe's stages: `python scripts/pipeline.py recipe=NAME key=value ...` (same as `rlhf-app pipeline`)."""
import sys

from rlhf_app.cli.main import main

if __name__ == "__main__":
    main(["pipeline", *sys.argv[1:]])
