"""The pairs a person labels, read from a jsonl file; each row one of

  {"prompt": P, "completions": [A, B]}          two completions of P (what `rlhf-app pairs` samples)
  {"prompt": P, "chosen": A, "rejected": B}     TRL's preference format (a pair to label again)

`prompt` may be left out (TRL's implicit-prompt format); P, A and B are text, or conversations
(lists of {role, content} messages). A row with both holds its pair in chosen/rejected. Other columns
(`margin`, scores) are read past, so `rlhf-app pairs`' output is labelled as it is. A pair is
known by a hash of its text (`key`), so choices stay with their pair if the file is reordered.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import NamedTuple

from rlhf_app.label import LabelError

FORMATS = "{'prompt', 'completions': [a, b]} or {'prompt', 'chosen', 'rejected'} ('prompt' optional)"


class Pair(NamedTuple):
    index: int  # the row of the input file, from 0
    key: str  # a hash of prompt and both completions
    prompt: object  # text, a list of messages, or None (no prompt column)
    completions: tuple  # (first, second) as in the input: completions[0:2], or (chosen, rejected)


def _is_text_or_conversation(value) -> bool:
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _pair(row, where: str, index: int) -> Pair:
    if not isinstance(row, dict):
        raise LabelError(f"{where}: a row must be a JSON object, {FORMATS}; got {type(row).__name__}")
    if "chosen" in row and "rejected" in row:
        completions = [row["chosen"], row["rejected"]]
    elif "completions" in row:
        completions = row["completions"]
        if not isinstance(completions, list) or len(completions) != 2:
            n = len(completions) if isinstance(completions, list) else type(completions).__name__
            raise LabelError(f"{where}: 'completions' must hold exactly two completions to compare, got {n}")
    else:
        raise LabelError(f"{where}: no 'completions' or 'chosen'/'rejected' (its keys: {', '.join(row) or 'none'}); "
                         f"give {FORMATS}")
    prompt = row.get("prompt")
    for name, value in (("prompt", prompt), ("first completion", completions[0]), ("second completion", completions[1])):
        if (value is not None or name != "prompt") and not _is_text_or_conversation(value):
            raise LabelError(f"{where}: the {name} is a {type(value).__name__}: give text or a list of "
                             "{role, content} messages")
    text = json.dumps([prompt, completions], sort_keys=True, ensure_ascii=False)
    return Pair(index, hashlib.sha256(text.encode()).hexdigest()[:16], prompt, tuple(completions))


def read_pairs(path: Path) -> list[Pair]:
    """Every row of the jsonl file `path` as a Pair; a fault is one line naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"input {path} {'is a folder' if path.is_dir() else 'does not exist'}: give a jsonl file "
                         f"of pairs to label, rows {FORMATS}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise LabelError(f"input {path} cannot be read: {err}") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise LabelError(f"{path}, line {number}: not JSON ({err.msg}): give one JSON object a line") from None
        pairs.append(_pair(row, f"{path}, line {number}", len(pairs)))
    if not pairs:
        raise LabelError(f"input {path} holds no pairs: give rows {FORMATS}")
    return pairs


def left_of(seed: int, pair: Pair) -> int:
    """Which completion (0 or 1) the page shows as A: a coin seeded by the seed and the pair, so a
    restart shows each pair as it was shown before, and the person cannot learn which came first."""
    return random.Random(f"{seed}:{pair.key}").randrange(2)


def as_text(value) -> str:
    """A prompt or completion as the page shows it: text as it is, a conversation one message a paragraph."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return "\n\n".join(f"[{m['role']}] {m['content']}" for m in value)
