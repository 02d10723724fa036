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
from trl.data_utils import is_conversational

from rlhf_app.data import DataError
from rlhf_app.data.columns import CONVERSATION_COLUMN

LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def read_split(d, split: str) -> Dataset:
    """One split of `data.name`: a local file (its only split is "train"), a folder or a Hub id."""
    path = Path(d.name).expanduser()
    if path.is_file():
        if path.suffix not in LOADERS:
            raise DataError(f"data.name={d.name}: cannot read {path.suffix or 'extension-less'} files; "
                            f"use one of {', '.join(LOADERS)}")
        return load_dataset(LOADERS[path.suffix], data_files=str(path), split=split)
    if path.is_dir():
        return load_dataset(str(path), split=split)
    return load_dataset(d.name, d.config, split=split)


def train_eval_splits(cfg) -> tuple[Dataset, Dataset]:
    """(train, held-out): `data.eval_split`, or a seeded `data.eval_fraction` of `data.split`."""
    d = cfg.data
    train = read_split(d, d.split)
    if d.eval_split:
        return train, read_split(d, d.eval_split)
    if len(train) < 2:
        raise DataError(f"data.name={d.name} has {len(train)} row: too few to hold any out")
    parts = train.train_test_split(test_size=d.eval_fraction, seed=cfg.seed)
    return parts["train"], parts["test"]


def _check_prompt_column(ds: Dataset, d, tokenizer) -> bool:
    """Whether the prompts are conversations; a missing column or chat template is a DataError."""
    if d.prompt_column not in ds.column_names:
        raise DataError(f"data.prompt_column={d.prompt_column!r} is not a column of {d.name}: its columns are "
                        f"{', '.join(ds.column_names)}")
    if len(ds) == 0:
        raise DataError(f"data.name={d.name}: the split holds no rows")
    conversational = is_conversational({"prompt": ds[0][d.prompt_column]})
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"data.prompt_column={d.prompt_column!r} holds conversations but the policy tokenizer "
                        "has no chat template: use a chat model, set tokenizer.chat_template, or give text prompts")
    if CONVERSATION_COLUMN in ds.column_names:
        raise DataError(f"the dataset has a column {CONVERSATION_COLUMN!r}, a name rlhf_app keeps for "
                        "conversational prompts: rename it")
    return conversational


def prompt_rows(ds: Dataset, cfg, tokenizer, what: str, limit: int | None) -> Dataset:
    """Rows with `prompt` (text the policy sees), `input_ids` and every other column; prompts over
    data.max_prompt_length tokens are dropped (cutting a chat prompt would lose its header)."""
    d = cfg.data
    conversational = _check_prompt_column(ds, d, tokenizer)
    if limit is not None and limit < len(ds):
        ds = ds.select(range(limit))

    def render(row):
        prompt = row[d.prompt_column]
        extra = {}
        if conversational:
            extra[CONVERSATION_COLUMN] = prompt
            prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True,
                                                   **d.chat_template_kwargs)
        elif not isinstance(prompt, str):
            raise DataError(f"data.prompt_column={d.prompt_column!r} holds a {type(prompt).__name__}: "
                            "it must hold text or a list of {role, content} messages")
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return {**extra, "prompt": prompt, "input_ids": ids}

    drop = [d.prompt_column] if d.prompt_column != "prompt" else []
    rows = ds.map(render, remove_columns=drop)
    kept = rows.filter(lambda r: len(r["input_ids"]) <= d.max_prompt_length)
    if len(kept) < len(rows):
        print(f"data: dropped {len(rows) - len(kept)} of {len(rows)} {what} prompts longer than "
              f"data.max_prompt_length={d.max_prompt_length} tokens")
    if len(kept) == 0:
        raise DataError(f"every {what} prompt is longer than data.max_prompt_length={d.max_prompt_length} "
                        "tokens: raise it")
    return kept


def load(cfg, tokenizer) -> tuple[Dataset, Dataset]:
    """(train, eval) prompt datasets of `data.name`, a Hub id or a local file / folder."""
    train, evals = train_eval_splits(cfg)
    return (prompt_rows(train, cfg, tokenizer, "training", cfg.data.num_train),
            prompt_rows(evals, cfg, tokenizer, "held-out", cfg.data.num_eval))
