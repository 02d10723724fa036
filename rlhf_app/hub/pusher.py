"""Hub pushes during training (`hub.strategy=every_save|checkpoint`, transformers' hub_strategy).

`CheckpointPusher` is called right after each `checkpoint-N/` is saved: it prepares that
checkpoint's upload folder (hard links, about as quick as listing it) and uploads it on one
background thread, so an update never waits on the network. While an upload is still running, the
next checkpoint is skipped, as transformers does; `finish()` waits for the one in flight, and the
final push follows it. With `hub.dry_run=true` each checkpoint's folder, `hub_upload-checkpoint-N/`,
is kept: exactly what that push would upload. The token lives only in this object and the HTTP client.
"""

from __future__ import annotations

import dataclasses
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from rlhf_app.hub import upload as hub


class CheckpointPusher:
    def __init__(self, run_dir: Path, cfg, token: str | None):
        self.run_dir, self.cfg, self._token = Path(run_dir), cfg, token
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-push")
        self._pending: tuple[str, Future] | None = None
        self.pushed: list[str] = []  # checkpoints uploaded (or, in a dry run, prepared)

    def __call__(self, checkpoint: Path) -> None:
        """Push `checkpoint` (a complete checkpoint-N folder of the run), without waiting for the upload."""
        checkpoint = Path(checkpoint)
        if self._pending is not None and not self._pending[1].done():
            print(f"hub: {self._pending[0]} is still uploading; {checkpoint.name} is not pushed "
                  "(a later save or the final push will be)", flush=True)
            return
        self._collect()
        cfg = dataclasses.replace(self.cfg, hub=dataclasses.replace(self.cfg.hub, checkpoint=checkpoint.name))
        try:
            folder = hub.prepare_upload(self.run_dir, cfg, target=f"{hub.UPLOAD_DIR}-{checkpoint.name}")
        except hub.HubError as err:  # e.g. a token-like string in the run files: training goes on
            print(f"warning: not pushing {checkpoint.name}: {err}", flush=True)
            return
        if cfg.hub.dry_run:
            hub.print_listing(folder, cfg)
            self.pushed.append(checkpoint.name)
            return
        message = f"{cfg.hub.commit_message} ({checkpoint.name})"
        self._pending = (checkpoint.name, self._executor.submit(self._upload, folder, cfg, message))

    def _upload(self, folder: Path, cfg, message: str) -> str:
        url = hub.upload(folder, cfg, self._token, message)
        shutil.rmtree(folder, ignore_errors=True)  # uploaded; the checkpoint itself stays in the run
        return url

    def _collect(self) -> None:
        """Report the finished upload, if any (a failure is a warning: the run and its checkpoints stay)."""
        if self._pending is None:
            return
        name, future = self._pending
        self._pending = None
        try:
            print(f"hub: pushed {name} ({future.result()})", flush=True)
            self.pushed.append(name)
        except hub.HubError as err:
            print(f"warning: pushing {name} failed: {err}", flush=True)

    def finish(self) -> None:
        """Wait for the upload in flight (its result() blocks), then stop the background thread."""
        self._collect()
        self._executor.shutdown(wait=True)


def pusher(cfg, run_dir: Path, token: str | None) -> CheckpointPusher | None:
    """The on_save callback for the trainer: a CheckpointPusher, or None with hub.strategy=end (or no push)."""
    return CheckpointPusher(run_dir, cfg, token) if cfg.hub.push and cfg.hub.strategy != "end" else None
