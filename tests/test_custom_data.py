"""Any prompt dataset: local jsonl / parquet / folder and a (faked) Hub id, text and conversational
prompts, every column kept, overlong prompts dropped with a count, seeded held-out split, and the
one-line errors for a missing prompt column or a missing chat template."""

import json

import pytest
from datasets import Dataset

from rlhf_app.data import prompts as data
from rlhf_app.data import files as prompt_data
from rlhf_app.config import load_config
from rlhf_app.data.columns import CONVERSATION_COLUMN
from rlhf_app.data.files import DataError

# Uses a template variable so that data.chat_template_kwargs visibly reaches the template.
CHAT_TEMPLATE = ("{% if style %}[{{ style }}]{% endif %}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
                 "</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    """A word-level tokenizer: one id per whitespace-separated word, so lengths are countable by hand."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "<pad> <eos> <unk> a b c d e f g h what is two plus one".split()
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer):
    chat = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>", eos_token="<eos>")
    chat.chat_template = CHAT_TEMPLATE
    return chat


def text_rows(n=20):
    # Row i has i % 5 + 1 words: with max_prompt_length=4, the rows of 5 words (every fifth) are dropped.
    return [{"prompt": " ".join("abcde"[: i % 5 + 1]), "answer": str(i), "weight": i / 10} for i in range(n)]


def chat_rows(n=10):
    return [{"prompt": [{"role": "user", "content": f"what is {i}"}], "solution": f"#### {i}"} for i in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_jsonl_text_prompts_keep_columns_drop_overlong_and_split_seeded(tmp_path, tokenizer, capsys):
    path = write_jsonl(tmp_path / "p.jsonl", text_rows())
    c = load_config([f"data.name={path}", "data.max_prompt_length=4", "data.eval_fraction=0.25"])
    train, evals = data.load_prompts(c, tokenizer)
    assert set(train.column_names) == {"prompt", "input_ids", "answer", "weight"}
    out = capsys.readouterr().out
    # 20 rows -> 15 train + 5 held out; 4 of the 20 have 5 words (too long), split between the two.
    dropped = [int(line.split()[2]) for line in out.splitlines() if line.startswith("data: dropped")]
    assert len(train) + len(evals) + sum(dropped) == 20 and sum(dropped) == 4
    assert "longer than data.max_prompt_length=4 tokens" in out
    assert all(len(ids) <= 4 for ids in list(train["input_ids"]) + list(evals["input_ids"]))
    assert all(tokenizer.decode(ids) == p for ids, p in zip(list(train["input_ids"]), list(train["prompt"])))
    assert set(train["answer"]).isdisjoint(list(evals["answer"]))  # the held-out rows never train
    again = data.load_prompts(c, tokenizer)[1]
    assert list(again["answer"]) == list(evals["answer"])  # seeded
    other = data.load_prompts(load_config([f"data.name={path}", "data.max_prompt_length=4",
                                           "data.eval_fraction=0.25", "seed=3"]), tokenizer)[1]
    assert list(other["answer"]) != list(evals["answer"])


def test_local_parquet_conversational_prompts_use_the_chat_template(tmp_path, chat_tokenizer):
    path = tmp_path / "chat.parquet"
    Dataset.from_list(chat_rows()).to_parquet(str(path))
    c = load_config([f"data.name={path}", "data.eval_fraction=0.2", "data.chat_template_kwargs={style: terse}"])
    train, evals = data.load_prompts(c, chat_tokenizer)
    assert (len(train), len(evals)) == (8, 2)
    assert set(train.column_names) == {"prompt", "input_ids", "solution", CONVERSATION_COLUMN}
    for row in list(train) + list(evals):
        i = row["solution"].split()[-1]
        assert row["prompt"] == f"[terse]<user>what is {i}</s><assistant>"
        assert row[CONVERSATION_COLUMN] == [{"role": "user", "content": f"what is {i}"}]
        assert row["input_ids"] == chat_tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]


def test_folder_with_train_and_test_files_and_eval_split(tmp_path, tokenizer):
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"prompt": "a b", "answer": "1"}] * 6)
    write_jsonl(folder / "test.jsonl", [{"prompt": "c d e", "answer": "2"}] * 3)
    c = load_config([f"data.name={folder}", "data.eval_split=test", "data.num_eval=2"])
    train, evals = data.load_prompts(c, tokenizer)
    assert (len(train), len(evals)) == (6, 2)
    assert set(train["answer"]) == {"1"} and set(evals["answer"]) == {"2"}


def test_hub_dataset_id_goes_through_load_dataset(monkeypatch, chat_tokenizer):
    calls = []

    def fake_load_dataset(name, config=None, split=None, **kwargs):
        calls.append((name, config, split))
        return Dataset.from_list(chat_rows(4 if split == "validation" else 12))

    monkeypatch.setattr(prompt_data, "load_dataset", fake_load_dataset)
    c = load_config(["data.name=someone/math-prompts", "data.config=main", "data.eval_split=validation",
                     "data.num_train=10"])
    train, evals = data.load_prompts(c, chat_tokenizer)
    assert calls == [("someone/math-prompts", "main", "train"), ("someone/math-prompts", "main", "validation")]
    assert (len(train), len(evals)) == (10, 4)
    assert list(train["solution"])[:2] == ["#### 0", "#### 1"]


def test_missing_prompt_column_lists_the_columns(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "a b", "answer": "1"}] * 4)
    with pytest.raises(DataError, match=r"^data.prompt_column='prompt' is not a column of .*q.jsonl: its columns "
                                        r"are question, answer$"):
        data.load_prompts(load_config([f"data.name={path}"]), tokenizer)
    train, _ = data.load_prompts(load_config([f"data.name={path}", "data.prompt_column=question"]), tokenizer)
    assert list(train["prompt"])[0] == "a b" and "question" not in train.column_names


def test_conversations_need_a_chat_template(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    with pytest.raises(DataError, match="holds conversations but the policy tokenizer has no chat template"):
        data.load_prompts(load_config([f"data.name={path}"]), tokenizer)


def test_the_shipped_example_prompts_load(chat_tokenizer):
    train, evals = data.load_prompts(load_config(["recipe=custom"]), chat_tokenizer)
    assert (len(train), len(evals)) == (32, 8)
    assert "keyword" in train.column_names and train[0]["prompt"].startswith("<system>")
