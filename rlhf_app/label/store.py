"""Every choice on disk the moment it is made, and TRL's preference file written from them.

Two files: `OUTPUT.choices.jsonl` (beside OUTPUT, its suffix replaced) holds every choice, A, B,
tie or skip, one JSON line each, appended and fsync'd before the page moves on: a closed tab or a
killed server loses no choice the page has shown as made. OUTPUT is TRL's preference format
(`prompt`/`chosen`/`rejected`, the input's text or conversations as they were), written whole
(rename) from the choices after each one: A/B choices only; ties and skips stay in the choices
file. When a pair was chosen twice (two tabs, a double click) the last choice counts.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
from pathlib import Path

from rlhf_app.label import LabelError
from rlhf_app.label.pairs import Pair, left_of
from rlhf_app.run_dir.atomic import write_text

CHOICES = ("A", "B", "tie", "skip")


def choices_path(output: Path) -> Path:
    output = Path(output)
    return output.with_name(f"{output.stem if output.suffix else output.name}.choices.jsonl")


def _check_writable(path: Path, what: str) -> None:
    """`path` can be written (made, or replaced through a hidden file beside it): a real write, since
    permission bits say nothing to root; nothing is left behind."""
    if not path.parent.is_dir():
        raise LabelError(f"{what} {path}: the folder {path.parent} does not exist: create it or choose another path")
    if path.is_dir():
        raise LabelError(f"{what} {path} is a folder: give a file name, e.g. {path / 'preferences.jsonl'}")
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
    try:
        probe.write_text("")
        probe.unlink()
        if path.exists():
            open(path, "a").close()
    except OSError as err:
        raise LabelError(f"{what} {path} cannot be written ({err.strerror}): choose a path you can write") from None


class Store:
    """The choices made so far (`made`: pair key -> its last choice) and the files they live in; made,
    it has only checked and read them (`start()` writes)."""

    def __init__(self, output: Path, pairs: list[Pair], seed: int):
        self.output, self.path = Path(output), choices_path(output)
        self.pairs, self.seed = pairs, seed
        self.by_key = {p.key: p for p in pairs}
        self.made: dict[str, dict] = {}
        self._lock = threading.Lock()
        _check_writable(self.output, "output")
        _check_writable(self.path, "choices file")
        if self.output.exists() and not self.path.exists():
            raise LabelError(f"output {self.output} exists and has no {self.path.name} beside it, so rlhf-app label "
                             "did not write it: choose another output (nothing is overwritten)")
        self._load()

    def start(self) -> None:
        """Both files in place (an empty choices file, OUTPUT from the choices) before the page serves."""
        self.path.touch()
        self.write_preferences()

    def _load(self) -> None:
        if not self.path.exists():
            return
        text = self.path.read_text(encoding="utf-8")
        lines = text.splitlines()
        rows = []
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines) and not text.endswith("\n"):
                    # A kill during the write of this line: it was never saved (the page never moved on).
                    write_text(self.path, "".join(f"{json.dumps(r, ensure_ascii=False)}\n" for r in rows))
                    break
                raise LabelError(f"{self.path}, line {number}: not JSON: fix or remove that line "
                                 "(every other choice is kept)") from None
            if not isinstance(row, dict) or row.get("choice") not in CHOICES or "key" not in row:
                raise LabelError(f"{self.path}, line {number}: not a choice written by rlhf-app label")
            if row["key"] not in self.by_key:
                raise LabelError(f"{self.path}, line {number}: a choice for a pair the input does not hold (row "
                                 f"{row.get('pair')}): give the input these choices were made on, or another output")
            rows.append(row)
            self.made[row["key"]] = row
        else:
            if text and not text.endswith("\n"):
                with open(self.path, "a") as f:
                    f.write("\n")

    def next_pair(self) -> Pair | None:
        """The first pair, in input order, with no choice yet."""
        return next((p for p in self.pairs if p.key not in self.made), None)

    def record(self, key: str, choice: str) -> dict:
        """Save the choice for the pair `key`: appended and fsync'd, then OUTPUT rewritten whole."""
        if choice not in CHOICES or key not in self.by_key:
            raise LabelError(f"no such choice {choice!r} for pair {key!r}")
        pair = self.by_key[key]
        row = {"pair": pair.index, "key": key, "choice": choice, "left": left_of(self.seed, pair), "seed": self.seed,
               "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.made[key] = row
            self.write_preferences()
        return row

    def preferences(self) -> list[dict]:
        """TRL's preference rows of the A/B choices, in input order."""
        rows = []
        for pair in self.pairs:
            made = self.made.get(pair.key)
            if made is None or made["choice"] not in ("A", "B"):
                continue
            chosen = made["left"] if made["choice"] == "A" else 1 - made["left"]
            row = {} if pair.prompt is None else {"prompt": pair.prompt}
            rows.append({**row, "chosen": pair.completions[chosen], "rejected": pair.completions[1 - chosen]})
        return rows

    def write_preferences(self) -> None:
        write_text(self.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.preferences()))
