"""The run report: built from a synthetic run folder, no models involved."""

import json
import math
import re
from pathlib import Path

import pytest

from rlhf_app.cli.main import main
from rlhf_app.config import to_yaml
from rlhf_app.report.page import eval_rows, load_jsonl, pair_samples, summarize, write_report
from rlhf_app.report.plots import cumulative_mean
from rlhf_app.text_stats import distinct_word_share

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVIL = "aaa <script>alert(1)</script> a"


def _metric_row(step: int) -> dict:
    score = 2.0 + 0.1 * step
    return {
        "step": step, "episode": 16 * step, "objective/scores": score,
        "objective/rlhf_reward": score - 0.01 * step, "objective/non_score_reward": -0.01 * step,
        "objective/kl": 0.5 * step, "objective/entropy": 40.0 - step, "loss/policy_avg": -0.01,
        "loss/value_avg": 1.0 / step, "policy/clipfrac_avg": 0.1, "val/clipfrac_avg": 0.2,
        "policy/approxkl_avg": 0.01, "val/explained_variance": 1 - 1.0 / step,
        "val/mean_response_length": 16.0, "val/eos_fraction": 0.0, "lr": 3e-3, "kl_coef": 0.01,
        "time/update_s": 0.5,
    }


def _samples(completions: list[str], scores: list[float]) -> list[dict]:
    return [{"prompt": f"prompt {i}", "completion": c, "score": s}
            for i, (c, s) in enumerate(zip(completions, scores))]


@pytest.fixture
def run_dir(tmp_path: Path, tiny_cfg) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(_metric_row(s)) + "\n" for s in range(1, 41)))
    (d / "samples.jsonl").write_text("".join(
        json.dumps({"step": s, "prompt": "bab", "completion": f"sample of step {s}", "score": 0.1 * s}) + "\n"
        for s in range(10, 41, 10)))
    before = _samples(["the cat sat on the mat", "a dog ran far away"], [1.0, 2.0])
    after = _samples([EVIL, "a a a a a"], [4.0, 5.0])[::-1]  # reversed: pairing goes by prompt
    (d / "eval.json").write_text(json.dumps({
        "before": {"mean_score": 1.5, "extra": {"positive_share": 0.25}, "samples": before},
        "after": {"mean_score": 4.5, "extra": {"positive_share": 0.75}, "samples": after}}))
    tokens = ["a", "$x$", " b", "\n", "a"]
    (d / "values.json").write_text(json.dumps({
        "high": {"tokens": tokens, "values": [0.1, 0.5, 1.0, 1.5, 2.0], "score": 2.0, "prompt": "ab"},
        "low": {"tokens": tokens[:3], "values": [0.1, -0.2, -0.4], "score": -0.5, "prompt": "b$"}}))
    (d / "config.yaml").write_text(to_yaml(tiny_cfg()))
    return d


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_full_report(run_dir: Path):
    out = write_report(run_dir)
    assert out == run_dir / "report.html"
    _assert_png(run_dir / "plots" / "diagnostics.png")
    _assert_png(run_dir / "plots" / "values.png")
    page = out.read_text()
    # Before/after numbers and their delta.
    assert re.search(r"mean_score</td><td[^>]*>1\.5</td><td[^>]*>4\.5</td><td[^>]*>3</td>", page)
    assert re.search(r"positive_share</td><td[^>]*>0\.25</td><td[^>]*>0\.75</td><td[^>]*>0\.5</td>", page)
    # Pairing by prompt: prompt 0's before and after completions share one row.
    assert re.search(r"prompt 0</td><td[^>]*>the cat sat on the mat</td><td[^>]*>1</td>"
                     r"<td[^>]*>aaa &lt;script&gt;", page)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "sample of step 40" in page and "sample of step 10" in page
    assert "asset:tiny" in page and "0.003" in page  # recipe settings from config.yaml
    assert page.count('src="data:image/png;base64,') == 2
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "<link" not in page
    assert "http" not in page
    # Summary: 40 updates, last episode, 40 × 0.5 s wall time, final KL 20.
    assert re.search(r"<td[^>]*>40</td><td[^>]*>640</td><td[^>]*>20</td>", page)


@pytest.mark.parametrize("after, warned", [(5.9, True), (4.9, False)])
def test_the_reference_nll_of_the_completions_and_its_salad_warning(run_dir: Path, after: float, warned: bool):
    evals = json.loads((run_dir / "eval.json").read_text())
    evals["before"]["ref_nll"], evals["after"]["ref_nll"] = 3.6, after
    (run_dir / "eval.json").write_text(json.dumps(evals))
    page = write_report(run_dir).read_text()
    rise = f"{after - 3.6:.4g}"
    assert re.search(rf"ref_nll</td><td[^>]*>3\.6</td><td[^>]*>{after}</td><td[^>]*>{rise}</td>", page), \
        page[page.find("ref_nll"):][:400]
    assert ("word salad. Read them below" in page) is warned


def test_missing_optional_files_degrade(run_dir: Path):
    for name in ("eval.json", "values.json", "config.yaml", "samples.jsonl"):
        (run_dir / name).unlink()
    page = write_report(run_dir).read_text()
    assert "No evaluation recorded" in page and "No critic values recorded" in page
    assert "No config recorded" in page and "No training samples recorded" in page
    _assert_png(run_dir / "plots" / "diagnostics.png")
    assert not (run_dir / "plots" / "values.png").exists()


def test_sparse_metrics_and_partial_last_line(run_dir: Path):
    # Only two keys logged and a run killed mid-write: absent panels are skipped, no crash.
    (run_dir / "metrics.jsonl").write_text(
        '{"step": 1, "objective/scores": 1.0}\n{"step": 2, "objective/kl": 0.3}\n{"step": 3, "obj')
    assert len(load_jsonl(run_dir / "metrics.jsonl")) == 2
    write_report(run_dir)
    _assert_png(run_dir / "plots" / "diagnostics.png")


def test_bad_middle_line_names_the_line(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        load_jsonl(path)


def test_empty_metrics(run_dir: Path):
    (run_dir / "metrics.jsonl").write_text("")
    page = write_report(run_dir).read_text()
    assert "No metric rows recorded yet" in page


def test_pure_helpers():
    assert cumulative_mean([1.0, math.nan, 3.0])[1:] == [1.0, 2.0]
    assert math.isnan(cumulative_mean([math.nan])[0])
    assert distinct_word_share(["great great", "GREAT great"]) == 0.25
    assert distinct_word_share(["", "  "]) is None
    s = summarize([_metric_row(1), {"step": 2}])  # a row without the keys keeps the last value
    assert s["updates"] == 2 and s["final_kl"] == 0.5 and s["wall_time_s"] == 0.5
    assert summarize([])["final_reward"] is None
    rows = eval_rows({"before": {"mean_score": 1.0, "extra": {}},
                      "after": {"mean_score": 3.0, "extra": {"accuracy": 0.5}}})
    assert rows == [("mean_score", 1.0, 3.0, 2.0), ("accuracy", None, 0.5, None)]
    pairs = pair_samples([{"prompt": "p"}, {"prompt": "q"}], [{"prompt": "r"}, {"prompt": "p", "x": 1}])
    assert pairs == [("p", {"prompt": "p"}, {"prompt": "p", "x": 1}), ("q", {"prompt": "q"}, None),
                     ("r", None, {"prompt": "r"})]


def _command(*argv: str) -> str:
    """`rlhf-app ARGV` in this process, expected to fail: its one line (the SystemExit's message)."""
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    return str(exit_.value.code)


def test_report_errors_name_the_fix(tmp_path: Path):
    for args, needle in ([[], "run_dir="], [[f"run_dir={tmp_path / 'nope'}"], "does not exist"],
                         [[f"run_dir={tmp_path}"], "metrics.jsonl"]):
        line = _command("report", *args)
        assert needle in line and "\n" not in line, line


# ---- rlhf-app eval (scripts/eval.py): scores a saved policy with the trainer's own generation and reward

def test_evaluate_argument_errors_name_the_fix(run_dir: Path):
    for args, needle in ([[], "run_dir=PATH"], [[f"run_dir={run_dir / 'nope'}"], "does not exist"],
                         [[f"run_dir={run_dir}", "chekpoint=final"], "did you mean checkpoint"],
                         [[f"run_dir={run_dir}", "split=test"], "eval, train"],
                         [[f"run_dir={run_dir}", "num=0"], "positive integer"],
                         [[f"run_dir={run_dir}", "checkpoint=checkpoint-9"], "saved policies: none"]):
        line = _command("eval", *args)
        assert line.startswith("error: ") and needle in line and "\n" not in line, line


def test_evaluate_scores_a_saved_policy(tiny_run_copy, capsys):
    main(["eval", f"run_dir={tiny_run_copy}", "num=4", "ppo.response_length=8"])
    assert "final on 4 eval prompts: mean score" in capsys.readouterr().out
    out = json.loads((tiny_run_copy / "eval-final.json").read_text())
    assert out["checkpoint"] == "final" and out["split"] == "eval" and len(out["samples"]) == 4
    for s in out["samples"]:  # the toy reward: share of "a" characters in the completion
        assert s["score"] == pytest.approx(s["completion"].count("a") / max(len(s["completion"]), 1))
    assert out["mean_score"] == pytest.approx(sum(s["score"] for s in out["samples"]) / 4)
    assert all(len(s["completion"]) <= 8 for s in out["samples"])  # the override reached generation
