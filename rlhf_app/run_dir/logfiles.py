"""The run's JSON-lines logs (metrics.jsonl, samples.jsonl): appended row by row, rewritten atomically."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rlhf_app.run_dir.atomic import write_text


def truncate_rows(path: Path, step: int) -> None:
    """Drop logged rows past `step`: a resumed run rewrites what the killed run logged after its checkpoint.

    The new file is written atomically, so a kill at any moment leaves either file whole. A line that
    is not JSON (the last one, torn by a kill during its write) is dropped with a warning.
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
        logged = row.get("step") if isinstance(row, dict) else None
        if not isinstance(logged, int) or isinstance(logged, bool):  # the loop writes an int step on every row
            print(f"warning: {path} line {number} has no update number (not a row the trainer wrote): dropped",
                  file=sys.stderr)
            continue
        if logged <= step:
            keep.append(line)
    if keep == lines:
        return
    write_text(path, "".join(line + "\n" for line in keep))
