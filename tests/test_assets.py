"""Offline assets: the IMDB held-out rule, the quick-mode classifier and demo policy, the cache."""

import json
import os

import pytest
import torch

torch.set_num_threads(1)

from rlhf_app.assets import registry as assets  # noqa: E402
from rlhf_app.assets.imdb import offline_imdb_reviews  # noqa: E402

POSITIVE = ["This movie was wonderful. Brilliant acting, a beautiful story, I loved every minute. "
            "One of the best films I have seen, a true masterpiece. Highly recommended!",
            "An excellent, moving and funny film with a great cast. Perfect, I will watch it again."]
NEGATIVE = ["This movie was awful. Terrible acting, a boring plot, the worst film I have ever seen. "
            "A complete waste of time and money. Avoid it.",
            "Bad, stupid and dull. The script is horrible and the acting is even worse. Utter garbage."]


@pytest.fixture(scope="module")
def quick_cache(tmp_path_factory):
    """Quick-mode assets in a private cache, built once for this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLHF_APP_CACHE", str(tmp_path_factory.mktemp("asset-cache")))
        mp.setenv("RLHF_APP_ASSET_QUICK", "1")
        yield assets.cache_dir()


def test_heldout_rule_splits_imdb_rows_disjointly():
    train, heldout = offline_imdb_reviews("train"), offline_imdb_reviews("heldout")
    # Train drops the few rows that repeat a held-out review verbatim.
    assert len(heldout) == 2500 and 22400 < len(train) < 22500
    assert {r["row"] for r in heldout} == set(range(0, 25000, 10))
    assert not {r["row"] for r in train} & {r["row"] for r in heldout}
    assert not {r["text"] for r in train} & {r["text"] for r in heldout}
    assert 1100 < sum(r["label"] for r in heldout) < 1400
    assert heldout[0]["text"].startswith("I rented I AM CURIOUS-YELLOW")
    assert not any("<br />" in r["text"] for r in heldout + train)
    with pytest.raises(ValueError, match="choose one of train, heldout"):
        offline_imdb_reviews("test")


def test_sentiment_classifier_loads_through_auto_classes(quick_cache):
    import rlhf_app.models.sentiment  # noqa: F401  (registers the architecture)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = assets.resolve("asset:imdb-sentiment")
    info = json.loads((quick_cache / "imdb-sentiment" / "asset.json").read_text())
    assert info["quick"] is True and info["heldout_n"] > 0 and info["heldout_accuracy"] > 0.65
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert model.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    batch = tokenizer(POSITIVE + NEGATIVE, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (4, 2)
    margin = logits[:, 1] - logits[:, 0]
    assert margin[:2].min() > margin[2:].max()
    # Padding on either side gives the same logits: only real tokens enter the mean.
    tokenizer.padding_side = "left" if tokenizer.padding_side == "right" else "right"
    with torch.no_grad():
        flipped = model(**tokenizer(POSITIVE + NEGATIVE, return_tensors="pt", padding=True)).logits
    torch.testing.assert_close(flipped, logits)


def test_demo_policy_generates_with_left_padding(quick_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.resolve("asset:demo-policy")
    info = json.loads((quick_cache / "demo-policy" / "asset.json").read_text())
    assert info["quick"] is True and info["heldout_loss"] < info["heldout_loss_init"] - 0.5
    assert len(info["samples"]) == 2 and info["tokens_per_s"] > 0
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.padding_side == "left"
    assert model.config.vocab_size == len(tokenizer)
    prompts = ["This film", "I watched this movie last night and"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    assert batch["input_ids"][0, 0] == tokenizer.pad_token_id  # the short prompt is padded on the left
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id)
        alone = model.generate(**tokenizer(prompts[:1], return_tensors="pt"), do_sample=False, max_new_tokens=8,
                               pad_token_id=tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    assert out.shape == (2, width + 8)
    # Left padding is invisible to the model: the padded prompt continues as it does alone.
    assert out[0, width:].tolist() == alone[0, -8:].tolist()


def test_resolve_builds_once_and_names_unknown_assets(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLHF_APP_CACHE", str(tmp_path))
    first = assets.resolve("asset:tiny")
    stamp = os.stat(os.path.join(first, "asset.json")).st_mtime_ns
    assert assets.resolve("asset:tiny") == first
    assert os.stat(os.path.join(first, "asset.json")).st_mtime_ns == stamp
    assert capsys.readouterr().out.count("building asset:tiny") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no temporary folder left behind
    assert assets.resolve("gpt2") == "gpt2"
    with pytest.raises(ValueError, match="unknown asset .nope.: available are asset:tiny, .*asset:imdb-sentiment"):
        assets.resolve("asset:nope")
    rebuilt = assets.rebuild("tiny")  # --force: a new copy replaces the old one whole
    assert rebuilt == first and os.stat(os.path.join(first, "asset.json")).st_mtime_ns != stamp
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]
    with pytest.raises(SystemExit, match="unknown asset 'nope': available are tiny, .*imdb-sentiment"):
        assets.main(["build", "nope"])
    assert assets.main(["list"]) == 0
    assert "asset:tiny: " + str(tmp_path / "tiny") in capsys.readouterr().out


def test_smollm2_answers_a_chat_prompt_when_already_built(monkeypatch):
    monkeypatch.delenv("RLHF_APP_CACHE")
    folder = assets.cache_dir() / "smollm2-135m-instruct"
    if not (folder / "asset.json").is_file():
        pytest.skip("asset:smollm2-135m-instruct is not built (~1 min, 538 MB): "
                    "python -m rlhf_app.assets.registry build smollm2-135m-instruct")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_app.assets.smollm2 import chat_answer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.padding_side == "left"
    assert tokenizer.chat_template
    assert "paris" in chat_answer(model, tokenizer, "What is the capital of France?").lower()
