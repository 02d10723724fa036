"""The variety reward: the share of a completion's words that no other prompt's completion uses, minus 1."""

import pytest

from rlhf_app.rewards import build_reward
from rlhf_app.rewards.variety import variety_scores
from rlhf_app.text_stats import distinct_word_share


def test_hand_computed_scores():
    # "great" and "cast" are q's words too; "film" and "a" are p's alone.
    assert variety_scores(["p", "p", "q"], ["great film", "a great cast", "great cast"]) == \
        pytest.approx([-0.5, -2 / 3, -1.0])
    # Repeating a word costs as in the distinct-word share (distinct over all words); case and punctuation
    # are counted as it counts them; no words at all is the lowest score.
    assert variety_scores(["p", "q"], ["Film, film FILM!", ""]) == pytest.approx([1 / 3 - 1, -1.0])
    # Completions of one prompt never count against each other: a group that agrees scores 0.
    assert variety_scores(["p"] * 3, ["lovely film"] * 3) == [0.0, 0.0, 0.0]


def test_a_stock_phrase_on_every_prompt_scores_below_praise_of_its_own():
    prompts = ["This was a", "I grew up", "The plot"]
    stock = ["a wonderful film , truly wonderful"] * 3
    own = ["a wonderful film , truly wonderful", "childhood memories painted with warmth",
           "twists kept me guessing until the end"]
    assert variety_scores(prompts, stock) == [-1.0] * 3
    scores = variety_scores(prompts, own)
    assert scores[1] == scores[2] == 0.0 and scores[0] == pytest.approx(4 / 5 - 1)
    # the reward ranks batches as the distinct-word share does
    assert distinct_word_share(own) > distinct_word_share(stock)


def test_weighted_beside_another_reward_and_logged_under_its_name(reward_cfg):
    fn = build_reward(reward_cfg(funcs=["toy", "variety"], weights=[1.0, 2.0], target="a"))
    logged = {}
    prompts, completions = ["p", "q"], ["aa", "ab b"]
    # toy: "a" per character, 2/2 and 1/4; variety: "aa" is p's alone (0), "ab" is q's alone, "b" too (0)
    assert fn(prompts, completions, log_metric=logged.__setitem__) == pytest.approx([1.0, 0.25])
    assert logged["rewards/variety/mean"] == 0.0
    shared = fn(["p", "q"], ["aa", "aa"], log_metric=logged.__setitem__)
    assert shared == pytest.approx([1.0 - 2.0, 1.0 - 2.0]) and logged["rewards/variety/mean"] == -1.0


def test_the_only_function_with_extra_metrics_keeps_their_names(reward_cfg):
    # gsm8k reports accuracy; variety reports nothing, so the keys stay as gsm8k alone gives them
    fn = build_reward(reward_cfg(funcs=["gsm8k", "variety"]))
    metrics = fn.extra_metrics(["q"] * 2, ["#### 4", "#### 5"], answer=["4", "4"])
    assert metrics["accuracy"] == 0.5 and not any("/" in key for key in metrics)
    both = build_reward(reward_cfg(funcs=["gsm8k", "gsm8k"])).extra_metrics(["q"], ["#### 4"], answer=["4"])
    assert both["gsm8k/accuracy"] == both["gsm8k_2/accuracy"] == 1.0  # several: under each one's name
