"""The run's JSON-lines logs (metrics.jsonl, samples.jsonl): appended row by row, rewritten atomically."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def truncate_rows(path: Path, step: int) -> None:
    """Drop logged rows past `step`: a resumed run rewrites what the killed run logged after its checkpoint.

    The new file is written beside the old one and renamed over it, so a kill at any moment leaves
    either file whole. A line that is not JSON (the last one, torn by a kill during its write) is
    dropped with a warning.
    """
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            print(f"warning: {path} line {number} is incomplete (a run was killed while writing it): dropped",
                  file=sys.stderr)
            continue
        if row["step"] <= step:
            keep.append(line)
    if keep == lines:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write("".join(line + "\n" for line in keep))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
