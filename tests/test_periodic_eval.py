"""The held-out evaluation as `eval/...` metrics (eval_steps rows of metrics.jsonl)."""

import pytest

from rlhf_app.evaluation import eval_metrics


def test_eval_metrics_hold_the_score_the_extras_and_the_distinct_word_share():
    result = {"mean_score": 0.5, "extra": {"positive_share": 0.75},
              "samples": [{"prompt": "A", "completion": "great great great", "score": 1.0},
                          {"prompt": "B", "completion": "Great fun", "score": 0.0}]}
    # words: great, great, great, great, fun -> 2 distinct of 5
    assert eval_metrics(result) == {"eval/mean_score": 0.5, "eval/positive_share": 0.75,
                                    "eval/distinct_word_share": pytest.approx(0.4)}


def test_no_words_no_distinct_share():
    result = {"mean_score": 0.0, "extra": {}, "samples": [{"prompt": "A", "completion": "", "score": 0.0}]}
    assert eval_metrics(result) == {"eval/mean_score": 0.0}
