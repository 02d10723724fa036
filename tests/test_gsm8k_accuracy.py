"""One GSM8K accuracy everywhere: training's evaluation (the reward's extra metrics), `rlhf-app eval`
(through the `evaluate` metric module), the module itself and the learning benchmark give the same
strict and flexible figures for the same completions."""

import sys
from pathlib import Path

import pytest
from transformers import TrainerState

from rlhf_app.config import TrainConfig
from rlhf_app.config.checks import ConfigError
from rlhf_app.config.sections import RewardConfig
from rlhf_app.evaluation import gsm8k_metric_scores
from rlhf_app.rewards import build_reward
from rlhf_app.rewards.gsm8k import load_gsm8k_metric

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import learning  # noqa: E402

# (completion, reference, strict hit, flexible hit, well-formed "#### N"); only the first two end
# with their answer ("#### 1,000 dollars" goes on after it)
TABLE = [
    ("2 + 2 = <<2+2=4>>4\n#### 4", "She has 2+2=<<2+2=4>>4\n#### 4", 1, 1, 1),
    ("#### 5", "4", 0, 0, 1),
    ("I think it is 4", "4", 0, 1, 0),
    ("#### 1,000 dollars", "1000", 1, 1, 1),
    ("#### 3, then 3 + 4 = 7", "3", 1, 0, 1),
    ("#### six", "6", 0, 0, 0),
    ("the answer is 12.", "#### 12", 0, 1, 0),
]
COMPLETIONS = [row[0] for row in TABLE]
ANSWERS = [row[1] for row in TABLE]
EXPECTED = {"accuracy_strict": 3 / 7, "accuracy_flexible": 4 / 7, "format_share": 4 / 7, "format_end_share": 2 / 7}


GSM8K = {"name": "gsm8k", "format_score": 0.1}


@pytest.mark.parametrize("method", ["strict", "flexible"])
def test_every_report_grades_the_same_completions_alike(method, reward_cfg):
    expected = {**EXPECTED, "accuracy": EXPECTED[f"accuracy_{method}"]}
    # training's before/after evaluation: rollout.sample_and_score calls the reward's extra_metrics
    training = build_reward(reward_cfg(**GSM8K, method=method)).extra_metrics(["q"] * len(TABLE), COMPLETIONS,
                                                                             answer=ANSWERS)
    # `rlhf-app eval` / scripts/eval.py
    script = gsm8k_metric_scores(COMPLETIONS, ANSWERS, method)
    # the project's `evaluate` metric module, loaded as a user would
    module = load_gsm8k_metric().compute(predictions=COMPLETIONS, references=ANSWERS, method=method)
    # the learning benchmark, from an eval.json entry shaped as training writes it
    entry = {"mean_score": 0.0, "extra": training,
             "samples": [{"prompt": "q", "completion": c, "score": 0.0} for c in COMPLETIONS]}
    bench = learning.gsm8k_figures(entry)
    for name, got in (("training", training), ("script", script), ("module", module), ("bench", bench)):
        assert got == pytest.approx(expected), name


def test_a_rewarded_completion_counts_as_accurate(reward_cfg):
    # The reward pays 1.0 exactly where the accuracy counts a hit (0.1 for a wrong well-formed answer).
    scores = build_reward(reward_cfg(**GSM8K, method="strict"))(["q"] * len(TABLE), COMPLETIONS, answer=ANSWERS)
    assert scores == [1.0 if row[2] else (0.1 if row[4] else 0.0) for row in TABLE]


# A policy that lists answers ("#### 1\n#### 2 ...") hits the last one by chance under veRL's rule.
LISTED = ["Total coins = 1\n\n#### 1\n#### 2\n#### 4", "#### 4\nso 4 + 0 = 4", "#### 7\n#### 7"]
LISTED_ANSWERS = ["4", "4", "7"]


@pytest.mark.parametrize("multiple, strict, formatted, ending", [("last", 3 / 3, 3 / 3, 2 / 3),
                                                                 ("none", 1 / 3, 1 / 3, 0 / 3)])
def test_several_answers_count_as_none_when_asked_on_every_path(multiple, strict, formatted, ending, reward_cfg):
    cfg = reward_cfg(**GSM8K, method="strict")
    cfg.reward.multiple_answers = multiple
    expected = {"accuracy": strict, "accuracy_strict": strict, "accuracy_flexible": 1.0, "format_share": formatted,
                "format_end_share": ending}
    reward = build_reward(cfg)
    training = reward.extra_metrics(["q"] * 3, LISTED, answer=LISTED_ANSWERS)
    script = gsm8k_metric_scores(LISTED, LISTED_ANSWERS, "strict", multiple)
    module = load_gsm8k_metric().compute(predictions=LISTED, references=LISTED_ANSWERS, method="strict",
                                         multiple_answers=multiple)
    for name, got in (("training", training), ("script", script), ("module", module)):
        assert got == pytest.approx(expected), name
    # The reward pays nothing, not even the format score, for a listed answer under "none".
    assert reward(["q"] * 3, LISTED, answer=LISTED_ANSWERS) == ([1.0, 1.0, 1.0] if multiple == "last" else [0.0, 1.0, 0.0])


# The prompt asks to end with "#### N": under answer_at_end an answer followed by more text is none.
TRAILING = ["#### 24", "so 20 + 4 = 24.\n#### 24.\n", "#### 24\nThe answer is: 24.", "#### 2, no: #### 24"]


@pytest.mark.parametrize("at_end, strict", [(False, 4 / 4), (True, 3 / 4)])
def test_an_answer_must_end_the_completion_when_asked_on_every_path(at_end, strict, reward_cfg):
    cfg = reward_cfg(**GSM8K, method="strict")
    cfg.reward.answer_at_end = at_end
    answers = ["24"] * 4
    # format_end_share counts the three that end with their answer under either setting
    expected = {"accuracy": strict, "accuracy_strict": strict, "accuracy_flexible": 1.0, "format_share": strict,
                "format_end_share": 3 / 4}
    reward = build_reward(cfg)
    training = reward.extra_metrics(["q"] * 4, TRAILING, answer=answers)
    script = gsm8k_metric_scores(TRAILING, answers, "strict", "last", at_end)
    module = load_gsm8k_metric().compute(predictions=TRAILING, references=answers, method="strict",
                                         answer_at_end=at_end)
    for name, got in (("training", training), ("script", script), ("module", module)):
        assert got == pytest.approx(expected), name
    assert reward(["q"] * 4, TRAILING, answer=answers) == [1.0, 1.0, 0.0 if at_end else 1.0, 1.0]


def test_a_trailing_answer_earns_its_partial_credit_and_needs_answer_at_end(reward_cfg):
    cfg = reward_cfg(**GSM8K, method="strict")
    cfg.reward.answer_at_end, cfg.reward.trailing_answer_score = True, 0.05
    answers = ["24", "24", "24", "24", "5"]
    # ends with its right answer, ends with it after a full stop, goes on after it, none, wrong at the end
    assert build_reward(cfg)(["q"] * 5, TRAILING[:3] + ["The answer is 24", "#### 24"], answer=answers) == \
        [1.0, 1.0, 0.05, 0.0, 0.1]
    with pytest.raises(ConfigError, match="needs reward.answer_at_end=true"):
        TrainConfig(reward=RewardConfig(name="gsm8k", trailing_answer_score=0.25))


def test_the_trailing_credit_stops_after_its_share_of_the_updates(reward_cfg):
    """until 0.5 over 30 updates: updates 1-15 (global_step 0-14) pay the credit, 16-30 do not; the answers that
    end with theirs (right: 1, wrong: format_score 0.1) score the same throughout; outside training (no state,
    no max_steps) it is paid."""
    cfg = reward_cfg(**GSM8K, method="strict")
    cfg.reward.answer_at_end, cfg.reward.trailing_answer_score, cfg.reward.trailing_answer_until = True, 0.05, 0.5
    reward = build_reward(cfg)
    texts, answers = ["#### 24\nThe answer is: 24", "#### 24", "#### 7"], ["24", "24", "24"]
    at = [reward(["q"] * 3, texts, answer=answers, trainer_state=TrainerState(global_step=step, max_steps=30))
          for step in (0, 14, 15, 29)]
    assert at == [[0.05, 1.0, 0.1], [0.05, 1.0, 0.1], [0.0, 1.0, 0.1], [0.0, 1.0, 0.1]]
    assert reward(["q"] * 3, texts, answer=answers) == [0.05, 1.0, 0.1]
    assert reward(["q"] * 3, texts, answer=answers, trainer_state=TrainerState()) == [0.05, 1.0, 0.1]


@pytest.mark.parametrize("until, score, match", [
    (0.0, 0.1, r"in \(0, 1\], got 0.0"), (1.5, 0.1, r"in \(0, 1\], got 1.5"),
    (float("nan"), 0.1, r"in \(0, 1\], got nan"), (0.5, 0.0, "set reward.trailing_answer_score too")])
def test_a_bad_trailing_answer_until_is_one_line(until, score, match):
    with pytest.raises(ConfigError, match=match):
        RewardConfig(name="gsm8k", answer_at_end=True, trailing_answer_score=score, trailing_answer_until=until)
