"""Prompt datasets: offline IMDB and GSM8K load with the right columns and lengths, eval never
overlaps training, and the Hub code paths call `load_dataset` as documented (faked here)."""


import pytest
import torch

torch.set_num_threads(1)

from datasets import Dataset  # noqa: E402

from rlhf_app.data import DataError  # noqa: E402
from rlhf_app.data import prompts as data  # noqa: E402
from rlhf_app.assets import gsm8k as gsm8k_offline  # noqa: E402
from rlhf_app.config import ConfigError, load_config  # noqa: E402

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE (600 tokens) trained on 500 shipped reviews: multi-character tokens like
    a real policy tokenizer's, and no unknown characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rlhf_app.assets.imdb import offline_imdb_reviews

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([r["text"] for r in offline_imdb_reviews("train")[:500]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer):
    chat = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>", eos_token="<eos>")
    chat.chat_template = CHAT_TEMPLATE
    return chat


# ---------------------------------------------------------------- IMDB

def test_offline_imdb_prompts(tokenizer):
    cfg = load_config(["data.name=imdb", "data.source=offline", "data.num_train=300", "data.num_eval=40"])
    train, evals = data.load_prompts(cfg, tokenizer)
    assert (len(train), len(evals)) == (300, 40)
    assert train.column_names == evals.column_names == ["prompt", "input_ids"]
    lengths = [len(ids) for ids in list(train["input_ids"]) + list(evals["input_ids"])]
    assert min(lengths) >= 2 and max(lengths) <= 8 and len(set(lengths)) > 4  # sampled, not fixed
    for row in list(train)[:50]:
        assert row["prompt"] and "<br" not in row["prompt"]
        assert tokenizer.decode(row["input_ids"]) == row["prompt"]
    again, _ = data.load_prompts(cfg, tokenizer)
    assert list(again["input_ids"]) == list(train["input_ids"])  # deterministic in the seed
    other, _ = data.load_prompts(load_config(["data.name=imdb", "data.source=offline", "data.num_train=300",
                                              "seed=1"]), tokenizer)
    assert list(other["prompt"]) != list(train["prompt"])


def test_offline_imdb_eval_reviews_are_held_out_and_prefix_tokens_are_exact(tokenizer):
    train_rows, eval_rows = data.imdb_reviews("offline", "train"), data.imdb_reviews("offline", "eval")
    assert {r["row"] for r in eval_rows}.isdisjoint(r["row"] for r in train_rows)
    assert all(r["row"] % 10 == 0 for r in eval_rows) and len(eval_rows) > 2000
    assert all(len(r["text"]) > data.MIN_REVIEW_CHARS and "<br />" not in r["text"] for r in train_rows)
    assert {r["label"] for r in train_rows[:100] + train_rows[-100:]} == {0, 1}
    texts = [r["text"] for r in train_rows[:200]]
    prompts = data.truncated_prompts(texts, tokenizer, 6, 8, seed=0)
    for text, row in zip(texts, prompts):  # the word-prefix shortcut gives the full text's tokens
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert row["input_ids"] == full[:len(row["input_ids"])]


def test_hub_imdb_uses_train_and_test_splits(tokenizer, monkeypatch):
    calls = []
    long_pos, long_neg = "Great fun.<br /><br />" + "good " * 60, "Dull stuff. " + "bad " * 60

    def fake_load_dataset(name, split=None, **kwargs):
        calls.append((name, split))
        texts = [long_pos, "too short", long_neg] if split == "train" else [long_neg, long_pos]
        return Dataset.from_dict({"text": texts, "label": list(range(len(texts)))})

    monkeypatch.setattr(data, "load_dataset", fake_load_dataset)
    train, evals = data.load_prompts(load_config(["data.name=imdb", "data.num_eval=2"]), tokenizer)
    assert sorted(calls) == [("stanfordnlp/imdb", "test"), ("stanfordnlp/imdb", "train")]
    assert len(train) == 2 and len(evals) == 2  # the short review is dropped
    assert all("<br" not in p for p in list(train["prompt"]))
    with pytest.raises(DataError, match=r"^data.num_eval \(imdb\): 3 asked for but only 2 available: lower it "
                                        r"to 2 or less$"):
        data.load_prompts(load_config(["data.name=imdb", "data.num_eval=3"]), tokenizer)


def test_too_many_eval_prompts_end_the_run_in_one_line_before_the_model_loads(tmp_path, capsys):
    from rlhf_app.cli.main import main

    with pytest.raises(SystemExit) as end:
        main(["train", "recipe=tiny", f"output_dir={tmp_path / 'run'}", "data.name=imdb", "data.source=offline",
              "data.num_eval=100000"])
    held_out = len(data.imdb_reviews("offline", "eval"))
    assert end.value.code == (f"error: data.num_eval (imdb): 100000 asked for but only {held_out} available: "
                              f"lower it to {held_out} or less")
    assert "parameters" not in capsys.readouterr().out  # the policy was never built


# ---------------------------------------------------------------- GSM8K

def test_offline_gsm8k_prompts(tokenizer, chat_tokenizer):
    cfg = load_config(["data.name=gsm8k", "data.source=offline", "data.num_train=40", "data.num_eval=10",
                       "data.max_prompt_length=2048"])  # this 600-token BPE spells long questions out
    train, evals = data.load_prompts(cfg, chat_tokenizer)
    assert (len(train), len(evals)) == (40, 10)
    assert train.column_names == evals.column_names == ["prompt", "input_ids", "answer"]
    assert all(a.lstrip("-").isdigit() for a in list(train["answer"]))       # generated: integer answers
    assert all("\n#### " in a for a in list(evals["answer"]))                 # real: GSM8K solutions
    for row in list(train) + list(evals):
        assert row["prompt"].startswith("<|user|>") and row["prompt"].endswith("<|assistant|>")
        assert "#### <number>" in row["prompt"] and "Give the result" not in row["prompt"]
        assert row["input_ids"] == chat_tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    real = {p["question"] for p in gsm8k_offline.test_problems()}
    assert all(any(q in p for q in real) for p in list(evals["prompt"]))
    assert not any(q in p for q in real for p in list(train["prompt"]))
    plain, _ = data.load_prompts(cfg, tokenizer)  # no chat template: plain Question/Answer text
    assert all(p.startswith("Question: ") and p.endswith("\nAnswer:") for p in list(plain["prompt"]))
    no_chat, _ = data.load_prompts(load_config(["data.name=gsm8k", "data.source=offline", "data.num_train=4",
                                                "data.num_eval=2", "data.use_chat_template=false"]), chat_tokenizer)
    assert list(no_chat["prompt"])[0].startswith("Question: ")


def test_offline_gsm8k_templates_of_eval_problems_never_train():
    origins = gsm8k_offline.template_origins()
    assert sorted(origins.values()) == list(range(100))  # one generator per real test problem
    train_generators, eval_indices = gsm8k_offline.template_split()
    assert {origins[g] for g in train_generators}.isdisjoint(eval_indices)
    assert len(train_generators) >= 40 and len(eval_indices) >= 50
    problems = gsm8k_offline.train_problems(30, seed=3)
    assert problems == gsm8k_offline.train_problems(30, seed=3) != gsm8k_offline.train_problems(30, seed=4)
    with pytest.raises(ValueError, match=r"data.num_eval .*only \d+ available"):
        data.load_prompts(load_config(["data.name=gsm8k", "data.source=offline", "data.num_train=2",
                                       "data.num_eval=100"]), None)


def test_hub_gsm8k_and_overlong_prompts(tokenizer, monkeypatch):
    calls = []
    rows = {"question": ["What is 2+2?", "What is 3+3? " * 200], "answer": ["2+2=4\n#### 4", "#### 6"]}

    def fake_load_dataset(*args, **kwargs):
        calls.append(args)
        return {"train": Dataset.from_dict(rows), "test": Dataset.from_dict(rows)}

    monkeypatch.setattr(data, "load_dataset", fake_load_dataset)
    train, evals = data.load_prompts(load_config(["data.name=gsm8k", "data.num_eval=2"]), tokenizer)
    assert calls == [("openai/gsm8k", "main")]
    assert list(train["answer"]) == list(evals["answer"]) == ["2+2=4\n#### 4"]  # the overlong prompt is dropped
    with pytest.raises(DataError, match="longer than data.max_prompt_length=5 tokens: raise it"):
        data.load_prompts(load_config(["data.name=gsm8k", "data.num_eval=2", "data.max_prompt_length=5"]), tokenizer)


# ---------------------------------------------------------------- names and the toy set

def test_unknown_dataset_names_list_the_choices(tokenizer):
    with pytest.raises(ConfigError, match="data.name='imbd' is not one of toy, imdb, gsm8k, a local file or "
                                          "folder, or a Hub dataset id .*did you mean imdb"):
        load_config(["data.name=imbd"])
    with pytest.raises(ConfigError, match="data.name='nope/prompts.jsonl': no such file"):
        load_config(["data.name=nope/prompts.jsonl"])
    assert load_config(["data.name=someone/prompts"]).data.name == "someone/prompts"  # a Hub id
    with pytest.raises(ConfigError, match="1 <= min <= max"):
        load_config(["data.prompt_min_tokens=9", "data.prompt_max_tokens=4"])


def test_toy_prompts_unchanged(tokenizer):
    train, evals = data.load_prompts(load_config(["data.num_train=20", "data.num_eval=5"]), tokenizer)
    assert list(train["prompt"]) == data.toy_prompts(20, 0) and list(evals["prompt"]) == data.toy_prompts(5, 10_000)
    assert train.column_names == ["prompt", "input_ids"]
