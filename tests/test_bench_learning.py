"""bench/learning.py reads its figures back from a run folder as the trainer writes it."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import learning  # noqa: E402


def _sample(completion: str, score: float) -> dict:
    return {"prompt": "The film", "completion": completion, "score": score}


def test_run_figures_from_a_run_folder(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({
        "before": {"mean_score": -1.0, "extra": {"positive_share": 0.25},
                   "samples": [_sample("was dull and slow", -2.0), _sample("a bore", -1.0)]},
        "after": {"mean_score": 3.0, "extra": {"positive_share": 1.0},
                  "samples": [_sample("great great great", 4.0), _sample("great fun", 2.0)]}}))
    rows = [{"episode": 8 * (i + 1), "objective/kl": kl, "objective/scores": s, "time/update_s": 3.0 + i,
             "time/generate_s": 1.0, "time/train_s": 2.0 + i} for i, (kl, s) in enumerate([(0.0, -1.0), (2.0, 1.0)])]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = learning.run_figures(tmp_path)
    assert fig["updates"] == 2 and fig["episodes"] == 16
    assert fig["s_per_update"]["update_s"] == pytest.approx(3.5)
    assert fig["s_per_update"]["train_s"] == pytest.approx(2.5)
    assert fig["s_per_update"]["reward_s"] is None  # not logged: not made up
    assert fig["kl_final"] == 2.0 and fig["score_first"] == -1.0
    assert fig["before"]["positive_share"] == 0.25 and fig["after"]["positive_share"] == 1.0
    # distinct words / words: 6 of 6 before; {great, fun} of 5 words after
    assert fig["before"]["distinct_word_share"] == pytest.approx(1.0)
    assert fig["after"]["distinct_word_share"] == pytest.approx(2 / 5)
    assert "positive_share 0.250 -> 1.000" in learning.headline("imdb-offline", {
        **fig, "rc": 0, "wall_s": 60.0, "peak_rss_mib": 500.0})
