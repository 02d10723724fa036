"""The datasets of the stages in TRL's formats, checked before any model loads, each fault one line.

SFT: `text` (sft.dataset_text_field), `messages` (a conversation), or `prompt` + `completion` (text or
conversations). Reward model: `chosen` + `rejected`, with an implicit or explicit `prompt`, text or
conversations, optionally a numeric `margin`. Conversations need a tokenizer with a chat template.
"""

from __future__ import annotations

import numbers
from types import SimpleNamespace

from rlhf_app.data import DataError
from rlhf_app.data.checks import ROW, locator
from rlhf_app.data.files import read_split

SFT_FORMATS = "'{text}' (text), 'messages' (a conversation) or 'prompt' + 'completion'"
PAIR_COLUMNS = ("chosen", "rejected")


def _split(section, stage: str, split: str, key: str):
    from rlhf_app.assets import registry as assets  # `asset:NAME` datasets: built on first use, like models

    source = SimpleNamespace(name=assets.resolve(section.dataset), config=section.dataset_config)
    ds = read_split(source, split, f"{stage}.{key}")
    if len(ds) == 0:
        raise DataError(f"{stage}.dataset={section.dataset}: the split {split} holds no rows")
    return ds


def _conversational(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)


def _needs_template(conversational: bool, tokenizer, stage: str, name: str) -> None:
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{stage}.dataset={name} holds conversations but the tokenizer of model.name_or_path has no "
                        "chat template: use a chat model, or give text rows")


def check_sft(ds, section, tokenizer, where) -> bool:
    """The SFT format of `ds` is one TRL takes; returns whether its rows are conversations."""
    columns = [c for c in ds.column_names if c != ROW]
    text = section.dataset_text_field
    if text in columns:
        first, column = ds[0][text], text
        if not isinstance(first, str):
            raise DataError(f"{where(0)}: column {text!r} holds {type(first).__name__}, not text: give text, or "
                            "use 'messages' for conversations")
    elif "messages" in columns:
        first, column = ds[0]["messages"], "messages"
    elif "prompt" in columns and "completion" in columns:
        first, column = ds[0]["prompt"], "prompt"
    else:
        raise DataError(f"sft.dataset={section.dataset} has no text column: its columns are {', '.join(columns)}; "
                        f"give one of TRL's SFT formats, {SFT_FORMATS.format(text=text)}")
    conversational = _conversational(first)
    if column == "messages" and not conversational:
        raise DataError(f"{where(0)}: 'messages' must hold a list of {{role, content}} messages")
    _needs_template(conversational, tokenizer, "sft", section.dataset)
    if conversational:
        _check_tool_turns(ds, "messages" if column == "messages" else "completion", section, tokenizer)
    return conversational


def _check_tool_turns(ds, column: str, section, tokenizer) -> None:
    """Conversations with tool turns need a template that renders them, and the loss on the assistant turns
    only: else the model is trained to write the tools' results itself."""
    if not any(m.get("role") == "tool" for turns in ds[column] for m in turns):
        return
    from trl.chat_template_utils import supports_tool_calling

    if not supports_tool_calling(tokenizer):
        raise DataError(f"sft.dataset={section.dataset} holds tool turns but the chat template of model.name_or_path "
                        "cannot render tool calls: set model.chat_template=asset:chatml-tools (ChatML) or a .jinja "
                        "file with tool support")
    if not section.assistant_only_loss:
        raise DataError(f"sft.dataset={section.dataset} holds tool turns: set sft.assistant_only_loss=true, so the "
                        "loss is on the assistant turns and not on the tools' results")


def check_pairs(ds, section, tokenizer, where) -> bool:
    """Preference pairs as RewardTrainer takes them; returns whether they are conversations."""
    columns = [c for c in ds.column_names if c != ROW]
    missing = [c for c in PAIR_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"rm.dataset={section.dataset} has no {' or '.join(map(repr, missing))} column: a preference "
                        f"pair needs 'chosen' and 'rejected' (an optional 'prompt', 'margin'); its columns are "
                        f"{', '.join(columns)}")
    if "margin" in columns:
        for i, value in enumerate(ds["margin"]):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise DataError(f"{where(i)}: margin {value!r} is a {type(value).__name__}, not a number: 'margin' "
                                "must hold numbers (how much better chosen is than rejected)")
    first = ds[0]
    conversational = _conversational(first["chosen"])
    for column in ("prompt", *PAIR_COLUMNS):
        if column in columns and _conversational(first[column]) != conversational:
            raise DataError(f"{where(0)}: 'chosen' and {column!r} must both be text or both conversations")
        if column in columns and not conversational and not isinstance(first[column], str):
            raise DataError(f"{where(0)}: {column!r} holds {type(first[column]).__name__}: give text or a list "
                            "of {role, content} messages")
    _needs_template(conversational, tokenizer, "rm", section.dataset)
    return conversational


def load(cfg, stage: str, tokenizer):
    """(train, held-out, conversational) of the stage's dataset, checked; the held-out split is
    `eval_split`, or a seeded `eval_fraction` of `split`; `num_train` / `num_eval` cap them."""
    section = getattr(cfg, stage)
    if not section.dataset:
        raise DataError(f"{stage}.dataset is not set: give a local jsonl/json/parquet/csv file, a folder or a Hub "
                        f"dataset id ({stage}.dataset=path/to/file.jsonl)")
    check = check_sft if stage == "sft" else check_pairs
    train = _split(section, stage, section.split, "split")
    conversational = check(train, section, tokenizer, locator(section.dataset, section.split))
    if section.eval_split:
        held = _split(section, stage, section.eval_split, "eval_split")
        if check(held, section, tokenizer, locator(section.dataset, section.eval_split)) != conversational:
            raise DataError(f"{stage}.split and {stage}.eval_split must both hold text or both conversations")
    else:
        if len(train) < 2:
            raise DataError(f"{stage}.dataset={section.dataset} has {len(train)} row: too few to hold any out")
        parts = train.train_test_split(test_size=section.eval_fraction, seed=cfg.seed)
        train, held = parts["train"], parts["test"]
    if section.num_train is not None and section.num_train < len(train):
        train = train.select(range(section.num_train))
    if section.num_eval < len(held):
        held = held.select(range(section.num_eval))
    return train.remove_columns(ROW), held.remove_columns(ROW), conversational
