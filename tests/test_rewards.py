"""Reward sources: the GSM8K checker, the python-file loader, checked(), and the sentiment reward
on a tiny classifier built here (plus the offline IMDB classifier when it can be built)."""

import math
import re

import pytest
import torch

torch.set_num_threads(1)

from rlhf_app.assets import gsm8k as gsm8k_offline  # noqa: E402
from rlhf_app.config import RewardConfig  # noqa: E402
from rlhf_app.rewards import BUILDERS, RewardError, build_reward, checked, gsm8k  # noqa: E402
from rlhf_app.rewards.sources import BUILTINS, load_function  # noqa: E402
from rlhf_app.rewards.sentiment import label_index  # noqa: E402


# ---------------------------------------------------------------- GSM8K checker

@pytest.mark.parametrize("text, strict, flexible", [
    ("#### 72", "72", "72"),
    ("so the total is\n#### 1,000 apples.", "1000", "1000"),
    ("#### $3.50", "3.5", "3.5"),
    ("It is 15%.\n#### 15%", "15", "15"),
    ("#### -5", "-5", "-5"),
    ("#### −5", "-5", "-5"),              # unicode minus
    ("#### 18.", "18", "18"),              # trailing period
    ("#### 72\n#### 73", "73", "73"),      # the last answer counts
    ("10-5=5", None, "5"),                 # a hyphen glued to a number is no sign
    ("between 3-4 hours", None, "4"),
    ("version x2 of it", None, None),       # digits inside a word are no number
    ("the value is 3.5.", None, "3.5"),
    ("costs $1,234,567.89 in all", None, "1234567.89"),
    ("no answer here", None, None),
    ("#### .5", "0.5", "0.5"),
    ("#### forty", None, None),
])
def test_extract_answer(text, strict, flexible):
    for method, want in (("strict", strict), ("flexible", flexible)):
        got = gsm8k.extract_answer(text, method)
        assert (got is None if want is None else got == gsm8k.to_number(want)), (method, text, got)


@pytest.mark.parametrize("solution, truth, method, want", [
    ("#### 3.50", "3.5", "strict", 1.0),
    ("#### 3.5", "Janet pays <<7*0.5=3.5>>3.5\n#### 3.50", "strict", 1.0),
    ("#### 1000", "#### 1,000", "strict", 1.0),
    ("#### 999", "#### 1,000", "strict", 0.25),       # parsable but wrong: format_score
    ("the answer is 1000", "1000", "strict", 0.0),    # no #### under strict: 0
    ("the answer is 1000", "1000", "flexible", 1.0),
    ("the answer is 7 dogs", 7, "flexible", 1.0),     # an integer ground truth
    ("", "5", "flexible", 0.0),
])
def test_compute_score(solution, truth, method, want):
    assert gsm8k.compute_score(solution, truth, method, format_score=0.25, score=1.0) == want


def test_ground_truth_without_number_is_a_clear_error():
    with pytest.raises(ValueError, match="#### N"):
        gsm8k.compute_score("#### 4", "four")
    with pytest.raises(ValueError, match="strict or flexible"):
        gsm8k.extract_answer("#### 4", "loose")


def _perturb(solution: str) -> str:
    """The solution with the number after its last #### increased by one."""
    head, _, tail = solution.rpartition("####")
    number = gsm8k.extract_answer(solution, "strict")
    return f"{head}#### {number + 1}" + re.sub(r"^\s*\$?[-\d.,]+", "", tail)


def test_real_gsm8k_test_solutions_score_one_and_perturbed_ones_format_score():
    problems = gsm8k_offline.test_problems()
    assert len(problems) == 100 and len({p["id_orig"] for p in problems}) == 100
    for p in problems:
        for method in ("strict", "flexible"):
            assert gsm8k.compute_score(p["answer"], p["answer"], method, 0.1, 1.0) == 1.0, p["answer"][-40:]
            assert gsm8k.compute_score(_perturb(p["answer"]), p["answer"], method, 0.1, 1.0) == 0.1, p["index"]


def test_gsm8k_reward_reads_the_answer_column_and_reports_accuracy(reward_cfg):
    fn = build_reward(reward_cfg(name="gsm8k", format_score=0.1))
    completions = ["#### 4", "#### 5", "I think 4"]
    assert fn(["q"] * 3, completions, answer=["2+2 <<2+2=4>>4\n#### 4"] * 3) == [1.0, 0.1, 0.0]
    assert fn.extra_metrics(["q"] * 3, completions, answer=["4"] * 3)["accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(RewardError, match="needs an `answer` column"):
        fn(["q"], ["#### 4"])


def test_gsm8k_metric_module_loads_offline():
    metric = gsm8k.load_gsm8k_metric()
    result = metric.compute(predictions=["#### 42", "#### 41", "it is 7"], references=["x\n#### 42", "42", "7"])
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert metric.compute(predictions=["it is 7"], references=["7"], method="flexible")["accuracy"] == 1.0


# ---------------------------------------------------------------- python-file rewards

def test_python_reward_from_a_file(tmp_path, reward_cfg):
    path = tmp_path / "my_reward.py"
    path.write_text("def length(completions, answer=None, **kwargs):\n"
                    "    return [len(c) + (answer[i] if answer else 0) for i, c in enumerate(completions)]\n"
                    "def helper():\n    pass\n")
    fn = build_reward(reward_cfg(name="python", function=f"{path}:length"))
    assert fn(["p", "p"], ["ab", "abcd"], answer=[10, 20]) == [12.0, 24.0]
    with pytest.raises(ValueError, match=r"defines no 'lenght'; its functions are: helper, length"):
        load_function(f"{path}:lenght")
    with pytest.raises(ValueError, match="does not exist"):
        load_function(f"{tmp_path}/nope.py:length")
    with pytest.raises(ValueError, match="path/to/file.py:function"):
        load_function(str(path))
    with pytest.raises(ValueError, match="reward.function=path/to/file.py:function"):
        build_reward(reward_cfg(name="python", function=None))
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ValueError, match="importing .*broken.py failed: ModuleNotFoundError"):
        load_function(f"{broken}:f")


# ---------------------------------------------------------------- checked()

def test_checked_rejects_wrong_length_nan_inf_and_wrong_types_but_keeps_none():
    import numpy as np

    for bad, pattern in (([1.0], "returned 1 scores for 2"), ([1.0, math.nan], "returned nan for completion 1"),
                         ([math.inf, 0.0], "returned inf for completion 0"),
                         ({"x": 1.0, "y": 0.0}, r"returned a dict \(keys x, y\): return a list"),
                         ("0.5", "returned a str: return a list"), (["1.0", "2.0"], r"returned a str \('1.0'\)"),
                         (np.zeros((2, 1)), r"returned a 2-D ndarray of shape \(2, 1\)"),
                         (torch.zeros(2, 2), r"returned a 2-D Tensor of shape \(2, 2\)"),
                         ([[1.0], [2.0]], r"returned a 2-D list \(an entry is a list of 1\)"),
                         (None, "returned a NoneType"), (3.0, "returned a float")):
        fn = checked("bad", lambda p, c, **k: bad)
        with pytest.raises(RewardError, match=re.escape("reward 'bad'") + ".*" + pattern):
            fn(["a", "b"], ["x", "y"])
    assert checked("ok", lambda p, c, **k: [None, 2])(["a", "b"], ["x", "y"]) == [None, 2.0]
    assert checked("np", lambda p, c, **k: np.array([0.5, 1]))(["a", "b"], ["x", "y"]) == [0.5, 1.0]


def test_checked_names_the_completion_that_raised():
    def picky(prompts, completions, answer=None, **columns):
        return [float(int(a)) / (0 if "boom" in c else 1) for c, a in zip(completions, answer)]

    fn = checked("picky", picky)
    assert fn(["p"] * 2, ["fine", "ok"], answer=["1", "2"]) == [1.0, 2.0]
    long_boom = "boom " + "x" * 500
    with pytest.raises(RewardError) as info:
        fn(["p"] * 3, ["fine", "ok", long_boom], answer=["1", "2", "3"])
    message = str(info.value)
    assert message.startswith("reward 'picky' failed on completion 2 'boom xxx")
    assert "ZeroDivisionError" in message and len(message) < 400 and "…" in message

    def batch_only(prompts, completions, **columns):
        if len(completions) > 1:
            raise MemoryError("batch too large")
        return [0.0]

    with pytest.raises(RewardError, match="each alone scores fine.*MemoryError: batch too large"):
        checked("batchy", batch_only)(["p", "p"], ["a", "b"])


def test_checked_keeps_extra_metrics_and_builders_match_the_config_choices():
    def r(prompts, completions, **columns):
        return [0.0] * len(completions)

    r.extra_metrics = lambda prompts, completions, **columns: {"n": float(len(completions))}
    assert checked("r", r).extra_metrics(["p"], ["c"]) == {"n": 1.0}
    assert not hasattr(checked("r2", lambda p, c, **k: [0.0] * len(c)), "extra_metrics")
    # An unknown name never reaches the rewards: the config refuses it. `python` is a file's function.
    with pytest.raises(Exception, match="is not one of toy, sentiment, gsm8k, variety, python"):
        RewardConfig(name="sentimental")
    assert set(BUILDERS) == set(BUILTINS) == {"toy", "sentiment", "gsm8k", "variety"}


# ---------------------------------------------------------------- sentiment

WORDS = "the a movie film was is great good wonderful loved bad awful terrible hated boring plot acting".split()


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A 2-layer BERT sequence classifier (random weights) with a 23-entry word-piece vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-classifier")
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), model_max_length=32)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2,
                        id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer, model.eval()


def _direct_logits(tokenizer, model, texts):
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        return model(**batch).logits


def test_sentiment_reward_plumbing(tiny_classifier, reward_cfg):
    folder, tokenizer, model = tiny_classifier
    prompts = ["the movie", "a film", "the plot", "the acting", "a movie"]
    completions = ["was great", "was awful", "is boring", "loved " * 40, "hated it"]  # one over 32 tokens
    logits = _direct_logits(tokenizer, model, completions)

    fn = build_reward(reward_cfg(name="sentiment", model=str(folder), label="positive", batch_size=2))
    assert fn(prompts, completions) == pytest.approx(logits[:, 1].tolist(), abs=1e-5)
    one_by_one = build_reward(reward_cfg(name="sentiment", model=str(folder), batch_size=1))
    assert one_by_one(prompts, completions) == pytest.approx(fn(prompts, completions), abs=1e-5)

    prob = build_reward(reward_cfg(name="sentiment", model=str(folder), label="NEGATIVE", kind="prob"))
    assert prob(prompts, completions) == pytest.approx(logits.softmax(-1)[:, 0].tolist(), abs=1e-5)

    with_prompt = build_reward(reward_cfg(name="sentiment", model=str(folder), score_prompt=True))
    joined = _direct_logits(tokenizer, model, [p + c for p, c in zip(prompts, completions)])
    assert with_prompt(prompts, completions) == pytest.approx(joined[:, 1].tolist(), abs=1e-5)
    assert with_prompt(prompts, completions) != pytest.approx(fn(prompts, completions), abs=1e-5)

    share = (logits.argmax(-1) == 1).float().mean().item()
    assert fn.extra_metrics(prompts, completions) == {"positive_share": pytest.approx(share)}


def test_sentiment_label_errors(tiny_classifier, reward_cfg):
    folder = tiny_classifier[0]
    with pytest.raises(ValueError, match="reward.label='joy' .*choose one of NEGATIVE, POSITIVE"):
        build_reward(reward_cfg(name="sentiment", model=str(folder), label="joy"))
    with pytest.raises(ValueError, match="needs reward.model"):
        build_reward(reward_cfg(name="sentiment"))
    assert label_index("1", {0: "LABEL_0", 1: "LABEL_1"}) == 1


POSITIVE = ["This is one of the best films I have ever seen. The acting is superb, the story is moving "
            "and beautifully told, and I loved every minute of it. A true masterpiece.",
            "Wonderful, funny and heartfelt. A brilliant cast and a great script: highly recommended!"]
NEGATIVE = ["This is one of the worst films I have ever seen. The acting is terrible, the plot is boring "
            "and makes no sense, and I hated every minute of it. A complete waste of time.",
            "Awful, dull and stupid. A dreadful cast and a lazy script: avoid it at all costs."]


def test_offline_imdb_classifier_ranks_clear_reviews(monkeypatch, reward_cfg):
    monkeypatch.setenv("RLHF_APP_ASSET_QUICK", "1")  # conftest's private cache keeps the user's untouched
    fn = build_reward(reward_cfg(name="sentiment", model="asset:imdb-sentiment"))
    scores = fn([""] * 4, POSITIVE + NEGATIVE)
    assert min(scores[:2]) > max(scores[2:]), scores
    assert fn.extra_metrics([""] * 4, POSITIVE + NEGATIVE)["positive_share"] == 0.5


def test_reward_models_in_reward_funcs_score_prompt_and_completion(tiny_classifier, tmp_path, reward_cfg):
    """A classifier folder in reward.funcs (its own tokenizer, reward.label) and a one-logit reward
    model (TRL's kind: its logit is the score), summed with the toy built-in under weights."""
    from transformers import BertForSequenceClassification

    folder, tokenizer, model = tiny_classifier
    torch.manual_seed(1)
    one = BertForSequenceClassification(model.config.__class__(**{**model.config.to_dict(), "num_labels": 1,
                                                                   "id2label": {0: "LABEL_0"},
                                                                   "label2id": {"LABEL_0": 0}}))
    one_folder = tmp_path / "one-logit"
    one.save_pretrained(one_folder)
    tokenizer.save_pretrained(one_folder)
    prompts, completions = ["the movie", "a film"], ["was great a", "was awful"]
    texts = [p + c for p, c in zip(prompts, completions)]
    cfg = reward_cfg(funcs=[str(folder), str(one_folder), "toy"], weights=[1.0, 0.5, 2.0])
    fn = build_reward(cfg)
    positive = _direct_logits(tokenizer, model, texts)[:, 1]
    single = _direct_logits(tokenizer, one.eval(), texts)[:, 0]
    toy_scores = torch.tensor([c.count("a") / len(c) for c in completions])
    assert fn(prompts, completions) == pytest.approx((positive + 0.5 * single + 2 * toy_scores).tolist(), abs=1e-5)
    assert fn.reward_names == [folder.name, "one-logit", "toy"]  # metrics: rewards/<folder name>/mean
