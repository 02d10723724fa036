"""What makes a prompt dataset unusable, said in one line that names the file (and line) and the fix:
a file its reader cannot parse, a split it does not have, a column name the app or the reward
contract already uses, and prompt rows that are neither text nor {role, content} conversations."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Callable, Iterable

from rlhf_app.data import DataError
from rlhf_app.data.columns import CONVERSATION_COLUMN, EPISODE_COLUMNS, REWARD_ARGUMENTS

ROW = "__rlhf_app_row"  # each row's place in its split, carried through the held-out split for messages


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _root(err: BaseException) -> BaseException:
    """The innermost cause (datasets wraps the parser's error in DatasetGenerationError)."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return err


def _json_lines(path: Path) -> DataError | None:
    """The first line of a JSON-lines file that is not one JSON object, or None."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                return DataError(f"{path}, line {n}: not valid JSON ({err.msg}, column {err.colno}): fix or remove "
                                 "the line (a .jsonl file holds one JSON object per line)")
            if not isinstance(row, dict):
                return DataError(f"{path}, line {n}: holds {_short(row, 40)}, not an object: each line must be one "
                                 'JSON object such as {"prompt": "..."}')
    return None


def _bad_file(path: Path) -> DataError | None:
    """What is wrong with one data file that its format can say: empty, or the first bad JSON line."""
    try:
        if not path.read_bytes().strip():
            return DataError(f"{path} is empty: give it one row per prompt (e.g. a .jsonl line "
                             '{"prompt": "..."})')
        if path.suffix in (".jsonl", ".json"):
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".json" and text.lstrip().startswith("["):
                try:
                    json.loads(text)
                except json.JSONDecodeError as bad:
                    return DataError(f"{path}, line {bad.lineno}: not valid JSON ({bad.msg}, column {bad.colno}): "
                                     "fix the file")
            else:
                return _json_lines(path)
    except UnicodeDecodeError as bad:
        return DataError(f"{path} is not UTF-8 text (byte {bad.start}): save it as UTF-8")
    return None


def unreadable(path: Path, suffixes, err: BaseException) -> DataError:
    """Why `datasets` could not read a local file or folder: a file's first bad line where the format has
    lines, else the reader's own reason."""
    files = sorted(f for f in path.rglob("*") if f.suffix in suffixes) if path.is_dir() else [path]
    for file in files:
        found = _bad_file(file)
        if found is not None:
            return found
    root = _root(err)
    detail = (str(root).strip().splitlines() or [type(root).__name__])[0][:200]
    if path.is_dir():
        return DataError(f"cannot read the data files in {path} ({type(root).__name__}: {detail}): check that "
                         "each is whole and in the format its extension names")
    return DataError(f"cannot read {path} as {path.suffix} ({type(root).__name__}: {detail}): check that it is a "
                     f"whole {path.suffix} file")


def unknown_split(err: ValueError, key: str, name: str, split: str) -> DataError | None:
    """`datasets`' unknown split as one line naming the key that asked for it; None for other errors."""
    if not str(err).startswith("Unknown split"):
        return None
    have = str(err).split("Should be one of", 1)[-1].strip(" .")
    hint = ("; unset data.eval_split to hold out data.eval_fraction of data.split" if key == "data.eval_split"
            else "")
    single = " (a single local file has one split, 'train')" if Path(name).expanduser().is_file() else ""
    return DataError(f"{key}={split}: {name} has no split {split!r}, only {have}{single}{hint}")


def locator(name: str, split: str) -> Callable[[int], str]:
    """Row i of the split -> where a user finds it: `file.jsonl, line N` for a JSON-lines file, else the row."""
    path = Path(name).expanduser()

    def where(i: int) -> str:
        if path.is_file() and path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                lines = (n for n, line in enumerate(f, 1) if line.strip())  # the reader skips blank lines
                return f"{path}, line {next(itertools.islice(lines, i, None))}"
        return f"{name} (split {split}), row {i + 1}"

    return where


def check_columns(columns: list[str], prompt_column: str, name: str) -> None:
    """No column may carry a name the loader writes (`prompt`, `input_ids`, the kept conversation) or the
    reward contract passes itself (`completions`, ...): it would be overwritten or collide in the call."""
    if prompt_column not in columns:
        raise DataError(f"data.prompt_column={prompt_column!r} is not a column of {name}: its columns are "
                        f"{', '.join(columns)}")
    written = {"input_ids", CONVERSATION_COLUMN, ROW, *EPISODE_COLUMNS} | \
        ({"prompt"} if prompt_column != "prompt" else set())
    for column in columns:
        if column in written:
            raise DataError(f"{name} has a column {column!r}, which rlhf_app writes itself: rename that column")
        if column in REWARD_ARGUMENTS and column != prompt_column:
            raise DataError(f"{name} has a column {column!r}, a name the reward functions already receive "
                            f"({', '.join(REWARD_ARGUMENTS)}): rename that column")


def prompt_kind(values: Iterable, column: str, name: str, where: Callable[[int], str]) -> bool:
    """Whether the prompts are conversations; every row must be the same kind, text or a non-empty
    list of {role, content} messages, and not every text prompt may be empty."""
    first: dict[str, int] = {}
    filled = False
    for i, value in enumerate(values):
        if isinstance(value, str):
            kind, filled = "text", filled or bool(value.strip())
        elif isinstance(value, list):
            if not value:
                raise DataError(f"{where(i)}: the conversation is empty: give it at least one {{role, content}} "
                                "message, or remove the row")
            bad = next((m for m in value if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                                                  and m.get("content") is not None)), None)
            if bad is not None:
                raise DataError(f"{where(i)}: {_short(bad)} is not a {{role, content}} message: give each message "
                                "a role and a content")
            kind = "conversation"
        else:
            what = "no prompt (null)" if value is None else f"{_short(value, 40)} ({type(value).__name__})"
            raise DataError(f"{where(i)}: data.prompt_column={column!r} holds {what}: it must hold text or a "
                            "list of {role, content} messages")
        first.setdefault(kind, i)
        if len(first) > 1:
            raise DataError(f"{where(first['conversation'])} holds a conversation but {where(first['text'])} holds "
                            f"text: data.prompt_column={column!r} must hold one kind, text or conversations")
    if "text" in first and not filled:
        raise DataError(f"{name}: every prompt in column {column!r} is empty: fill the prompts, or set "
                        "data.prompt_column to the column that holds them")
    return "conversation" in first
