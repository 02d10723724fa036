"""Push a finished run to the Hub: `python scripts/push.py run_dir=runs/NAME hub.repo_id=user/name [hub.dry_run=true]`."""
import sys

from rlhf_app.cli.main import main

if __name__ == "__main__":
    main(["push", *sys.argv[1:]])
