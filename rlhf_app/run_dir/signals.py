"""Ctrl-C (SIGINT) and SIGTERM (SLURM pre-emption, `kill`) stop a run at the next update boundary.

The handler only sets a flag: the update in flight finishes, the loop saves a checkpoint there and
ends with `Stopped`, so a resume continues exactly as an uninterrupted run (the state is never
saved in the middle of an update). A second Ctrl-C stops at once, without saving.
"""

from __future__ import annotations

import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    """The run stopped on a signal after saving `path`; the process exits with 128 + signum."""

    def __init__(self, signum: int, path):
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {path}")
        self.signum, self.path = signum, path


class StopFlag:
    """Context manager: installs the handlers (main thread only) and restores the old ones on exit."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: the user wants out now
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this update, then saving a checkpoint "
              "(Ctrl-C again stops without saving)", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        return False

    def requested(self, accelerator) -> int | None:
        """The signal any process received (all processes agree, so they stop at the same update)."""
        if accelerator.num_processes == 1:
            return self.signum
        import torch

        flag = torch.tensor([float(self.signum == sig) for sig in SIGNALS], device=accelerator.device)
        got = accelerator.reduce(flag, reduction="sum").tolist()  # per signal: how many processes got it
        return next((sig for sig, n in zip(SIGNALS, got) if n), None)
