"""Run by tests/test_resume.py: a training run that SIGKILLs itself in the middle of a file operation,
exactly where a power cut or `kill -9` would hurt most.

    python tests/kill_worker.py truncation|rotation key=value ...
"""

import os
import shutil
import signal
import sys

from rlhf_app.cli.main import main

real_rmtree, real_replace = shutil.rmtree, os.replace


def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def replace_metrics_or_die(src, dst, *args, **kwargs):
    if str(dst).endswith("metrics.jsonl"):
        die()
    return real_replace(src, dst, *args, **kwargs)


def half_delete(path, *args, **kwargs):
    """Delete one file of a checkpoint being rotated away, then die."""
    if str(path).endswith(".deleting") and os.path.isdir(path) and os.listdir(path):
        os.unlink(os.path.join(path, sorted(os.listdir(path))[0]))
        die()
    real_rmtree(path, *args, **kwargs)


if __name__ == "__main__":
    mode, argv = sys.argv[1], sys.argv[2:]
    if mode == "truncation":  # the rewritten metrics file is complete beside the old one, not yet renamed
        os.replace = replace_metrics_or_die
    elif mode == "rotation":
        shutil.rmtree = half_delete
    main(["train", *argv])
