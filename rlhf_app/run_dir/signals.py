"""Ctrl-C (SIGINT) and SIGTERM (SLURM pre-emption, `kill`) stop a run at the next update boundary.

The handler only sets a flag: the update in flight finishes, the loop saves a checkpoint there and
ends with `Stopped`, so a resume continues exactly as an uninterrupted run (the state is never
saved in the middle of an update). A second Ctrl-C stops at once, without saving. After the last
update (saved), `EndPhase` stops at once, but lets final/ be written whole.
"""

from __future__ import annotations

import contextlib
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

    def __init__(self, handler=None):
        self.signum = None
        self._old = {}
        self._handler = handler or self._handle

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: the user wants out now
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this update, then saving a checkpoint "
              "(Ctrl-C again stops without saving)", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
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


class EndPhase:
    """`with EndPhase(checkpoint, final) as end:` the work after the last update (evaluation, report,
    final/, push). Its `checkpoint` holds the last update, so everything up to final/ can be redone by
    `resume_from=auto`: a signal ends the run at once (`Stopped`), except inside `end.finishing()` (final/
    being written, the end checkpoint removed), which it lets complete first. Either way the main
    process prints one line saying what is saved and how to finish."""

    def __init__(self, checkpoint, final, is_main_process: bool = True, push_hint: str | None = None):
        self.checkpoint, self.final, self.main, self.push_hint = checkpoint, final, is_main_process, push_hint
        self.signum, self.done, self._deferring = None, False, False
        self._flag = StopFlag(self._handle)  # the same install / restore, another handler

    def _handle(self, signum, frame):
        if not self._deferring:
            raise Stopped(signum, self.final if self.done else self.checkpoint)
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: out now (the checkpoint still holds the run)
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing {self.final} first (Ctrl-C again stops at once)",
              file=sys.stderr, flush=True)

    def __enter__(self):
        self._flag.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._flag.__exit__()
        if isinstance(exc, Stopped) and self.main:
            if self.done:
                print(f"\ninterrupted after the run finished: {self.final} is complete"
                      + (f"; {self.push_hint}" if self.push_hint else ""), flush=True)
            else:
                print(f"\ninterrupted after the last update: saved {self.checkpoint}; finish the run "
                      "(evaluation, report, final/) with resume_from=auto", flush=True)
        return False

    @contextlib.contextmanager
    def finishing(self):
        """final/ is written whole here: a signal waits for the block to end, then stops the run."""
        self._deferring = True
        try:
            yield
            self.done = True
        finally:
            self._deferring = False
        if self.signum is not None:
            raise Stopped(self.signum, self.final)
