"""Files and folders that are either whole or absent: a kill at any moment never leaves a
half-written file, or a half-built or half-deleted folder, under a name a user or a resume trusts.

Everything is first written under a hidden name beside its target and then renamed, which on one
file system is atomic. Leftovers of a kill are hidden (`.NAME....tmp`, `.NAME.deleting`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a hidden temporary file beside it, flushed to disk, then renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj, indent: int = 2) -> None:
    """`obj` as indented JSON, written atomically."""
    write_text(path, json.dumps(obj, indent=indent))


def remove_dir(path: Path) -> None:
    """Rename, then delete: a kill during the delete leaves a hidden `.NAME.deleting`, never a
    half-deleted folder under a name that resume or a user would trust."""
    path = Path(path)
    doomed = path.with_name(f".{path.name.lstrip('.')}.deleting")
    shutil.rmtree(doomed, ignore_errors=True)
    path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a completely written `tmp` to `final`, replacing an older `final` only once tmp is in place."""
    tmp, final = Path(tmp), Path(final)
    old = final.with_name(f".{final.name}.deleting")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def building(target: Path, replace: bool = True):
    """`with building(target) as tmp:` fill the fresh hidden folder `tmp`; once the block ends
    without an error it becomes `target`; on an error it is deleted and `target` is untouched.

    `replace=False`: a `target` that already exists (another process built it first) wins, and
    this build is dropped.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()  # not mkdtemp: the folder gets the permissions any new folder gets (the umask's)
    try:
        yield tmp
        if replace:
            replace_dir(tmp, target)
        else:
            try:
                os.replace(tmp, target)
            except OSError:  # a non-empty target: another process finished the same build first
                if not target.is_dir():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
