"""Any prompt dataset: a Hub dataset id or a local file / folder (jsonl, json, parquet, csv), read
with `datasets.load_dataset`, as TRL's trainers take it.

`data.prompt_column` holds text or a conversation (a list of {role, content} messages); a
conversation goes through the policy tokenizer's chat template with `add_generation_prompt=True`
(and `data.chat_template_kwargs`), and the conversation itself is kept in CONVERSATION_COLUMN so
the rewards get it as TRL passes it. Every other column is kept: it reaches the rewards by name.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, load_dataset

from rlhf_app.data import DataError
from rlhf_app.data.checks import ROW, check_columns, locator, prompt_kind, unknown_split, unreadable
from rlhf_app.data.columns import CONVERSATION_COLUMN

LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def read_split(d, split: str, key: str = "data.split") -> Dataset:
    """One split of `data.name` (asked for by `key`): a local file (its only split is "train"), a folder or
    a Hub id. A file its reader cannot parse and a split it lacks are DataErrors; rows are numbered (ROW)."""
    path = Path(d.name).expanduser()
    local = path.is_file()
    if local and path.suffix not in LOADERS:
        raise DataError(f"data.name={d.name}: cannot read {path.suffix or 'extension-less'} files; "
                        f"use one of {', '.join(LOADERS)}")
    try:
        if local:
            ds = load_dataset(LOADERS[path.suffix], data_files=str(path), split=split)
        else:
            ds = load_dataset(str(path), split=split) if path.is_dir() else load_dataset(d.name, d.config, split=split)
    except Exception as err:  # noqa: BLE001 - each reader fails its own way (pyarrow, StopIteration, ...)
        known = unknown_split(err, key, d.name, split) if isinstance(err, ValueError) else None
        if known is not None:
            raise known from None
        if not (local or path.is_dir()):
            raise  # a Hub dataset: hub_access names what failed
        raise unreadable(path, LOADERS, err) from None
    return ds.add_column(ROW, list(range(len(ds))))


def checked_split(d, split: str, key: str) -> tuple[Dataset, bool]:
    """A split whose column names and prompt rows are usable (checks.py), before any of it is
    held out or rendered: (the split, whether its prompts are conversations)."""
    ds = read_split(d, split, key)
    where = d.name if key == "data.split" else f"{d.name} (split {split})"
    check_columns([c for c in ds.column_names if c != ROW], d.prompt_column, where)
    if len(ds) == 0:
        raise DataError(f"data.name={d.name}: the split {split} holds no rows")
    values = (v for batch in ds.select_columns([d.prompt_column]).iter(batch_size=4096) for v in batch[d.prompt_column])
    return ds, prompt_kind(values, d.prompt_column, where, locator(d.name, split))


def train_eval_splits(cfg) -> tuple[Dataset, Dataset, bool]:
    """(train, held-out, conversational): `data.eval_split`, or a seeded `data.eval_fraction` of `data.split`."""
    d = cfg.data
    train, conversational = checked_split(d, d.split, "data.split")
    if d.eval_split:
        evals, eval_conversational = checked_split(d, d.eval_split, "data.eval_split")
        if eval_conversational != conversational:
            raise DataError(f"data.split={d.split} holds {'conversations' if conversational else 'text'} but "
                            f"data.eval_split={d.eval_split} {'conversations' if eval_conversational else 'text'}: "
                            "give both the same kind of prompts")
        return train, evals, conversational
    if len(train) < 2:
        raise DataError(f"data.name={d.name} has {len(train)} row: too few to hold any out")
    parts = train.train_test_split(test_size=d.eval_fraction, seed=cfg.seed)
    return parts["train"], parts["test"], conversational


def prompt_rows(ds: Dataset, cfg, tokenizer, what: str, limit: int | None, conversational: bool) -> Dataset:
    """Rows with `prompt` (text the policy sees), `input_ids` and every other column; prompts over
    data.max_prompt_length tokens, and empty ones, are dropped (cutting a chat prompt would lose its header)."""
    d = cfg.data
    split = d.eval_split if what == "held-out" and d.eval_split else d.split
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"data.prompt_column={d.prompt_column!r} holds conversations but the policy tokenizer "
                        "has no chat template: use a chat model, set tokenizer.chat_template, or give text prompts")
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))

    def render(row):
        prompt = row[d.prompt_column]
        extra = {}
        if conversational:
            extra[CONVERSATION_COLUMN] = prompt
            try:
                prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True,
                                                       **d.chat_template_kwargs)
            except Exception as err:  # noqa: BLE001 - a template refuses with its own error type (jinja2's, ...)
                raise DataError(f"{locator(d.name, split)(row[ROW])}: the policy tokenizer's chat template refused "
                                f"this conversation ({type(err).__name__}: {str(err)[:160]}): fix the row's "
                                "messages (roles, order) for this model's template") from None
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return {**extra, "prompt": prompt, "input_ids": ids}

    drop = [ROW] + ([d.prompt_column] if d.prompt_column != "prompt" else [])
    rows = ds.map(render, remove_columns=drop)
    kept = rows.filter(lambda r: 0 < len(r["input_ids"]) <= d.max_prompt_length)
    empty = sum(1 for ids in rows["input_ids"] if not ids)
    if empty:
        print(f"data: dropped {empty} of {len(rows)} {what} prompts that are empty (no tokens)")
    if len(kept) < len(rows) - empty:
        print(f"data: dropped {len(rows) - empty - len(kept)} of {len(rows)} {what} prompts longer than "
              f"data.max_prompt_length={d.max_prompt_length} tokens")
    if len(kept) == 0:
        if empty == len(rows):
            raise DataError(f"data.name={d.name}: every {what} prompt is empty (no tokens): fill the prompts")
        raise DataError(f"every {what} prompt is longer than data.max_prompt_length={d.max_prompt_length} "
                        "tokens: raise it")
    return kept


def load(cfg, tokenizer) -> tuple[Dataset, Dataset]:
    """(train, eval) prompt datasets of `data.name`, a Hub id or a local file / folder."""
    train, evals, conversational = train_eval_splits(cfg)
    return (prompt_rows(train, cfg, tokenizer, "training", cfg.data.num_train, conversational),
            prompt_rows(evals, cfg, tokenizer, "held-out", cfg.data.num_eval, conversational))
