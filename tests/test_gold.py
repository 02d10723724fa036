"""Proxy against gold (`reward.gold`): both scored at every evaluation, the gold-best policy kept and named,
one warning when gold falls while the proxy rises; on a tiny run whose proxy (the count of "a") is built to
diverge from its gold (a few "a"s are good, more are penalised)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlhf_app.cli.main import main as cli
from rlhf_app.config import ConfigError, load_config

REWARDS = '''
def count_a(completions, **kwargs):
    return [float(c.count("a")) for c in completions]


def capped_a(completions, **kwargs):
    """The objective the proxy stands for: up to 4 "a"s are good, each one more costs 2."""
    return [float(min(c.count("a"), 4) - 2 * max(c.count("a") - 4, 0)) for c in completions]


def over_4(prompts, completions, **kwargs):
    return {"over_4_share": sum(c.count("a") > 4 for c in completions) / len(completions)}


capped_a.extra_metrics = over_4  # the gold's own figure, as the sentiment classifier's positive_share
'''


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_policy():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_app.assets.registry import resolve
    from rlhf_app.models.policy import PolicyAndValue

    path = resolve("asset:tiny")
    return PolicyAndValue(AutoModelForCausalLM.from_pretrained(path), value_head=False), AutoTokenizer.from_pretrained(path)


def _watch(out, tiny_policy, patience=3):
    from rlhf_app.evaluation import GoldWatch

    cfg = SimpleNamespace(output_dir=str(out), reward=SimpleNamespace(gold_patience=patience))
    return GoldWatch(cfg, tiny_policy[1])


def test_the_gold_best_is_kept_and_the_warning_comes_once_after_patience_falls(tmp_path, tiny_policy, capsys):
    from rlhf_app.models.policy import load_policy

    watch = _watch(tmp_path, tiny_policy)
    model = tiny_policy[0]
    # (update, proxy, gold): gold peaks at update 4, then falls at 6, 8, 10 (3 in a row) and 12 as the proxy rises
    for step, proxy, gold in [(2, 1.0, 1.0), (4, 2.0, 2.0), (6, 3.0, 1.5), (8, 4.0, 1.0)]:
        watch.update(step, proxy, gold, model)
    assert "warning" not in capsys.readouterr().out  # two falls: not yet
    watch.update(10, 5.0, 0.5, model)
    out = capsys.readouterr().out
    assert out.count("warning: the gold reward fell 3 evaluations in a row (2 at update 4 -> 0.5 at update 10) "
                     "while the proxy rose (2 -> 5)") == 1
    assert f"Gold peaked at update 4 (2), kept in {tmp_path / 'gold-best'}" in out
    watch.update(12, 6.0, 0.1, model)
    assert "warning" not in capsys.readouterr().out  # once
    record = json.loads((tmp_path / "gold.json").read_text())
    assert record["best"] == {"step": 4, "proxy": 2.0, "gold": 2.0, "checkpoint": "gold-best"}
    assert record["warned_at"] == 10 and [e["step"] for e in record["evaluations"]] == [2, 4, 6, 8, 10, 12]
    assert json.loads((tmp_path / "gold-best" / "trainer_state.json").read_text()) == {"step": 4}
    load_policy(tmp_path / "gold-best")  # a policy folder, as rlhf-app eval checkpoint=gold-best reads it
    # a resumed run (gold.json read back) redoes the updates after the one it resumes at
    again = _watch(tmp_path, tiny_policy)
    again.update(4, 2.5, 2.5, model)
    assert again.best["step"] == 4 and again.best["gold"] == 2.5 and again.warned_at is None
    assert [e["step"] for e in again.history] == [2, 4]


def test_no_warning_when_the_proxy_falls_with_the_gold(tmp_path, tiny_policy, capsys):
    watch = _watch(tmp_path, tiny_policy, patience=2)
    for step, value in enumerate([3.0, 2.0, 1.0, 0.5], 1):
        watch.update(step, value, value, tiny_policy[0])
    assert "warning" not in capsys.readouterr().out and watch.best["step"] == 1


def test_gold_settings_are_checked_before_any_model_loads(tmp_path, capsys):
    with pytest.raises(ConfigError, match="reward.gold_patience must be >= 1"):
        load_config(["recipe=tiny", "reward.gold_patience=0"])
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        cli(["train", "recipe=tiny", f"output_dir={out}", "reward.gold=nowhere.py:gold"])
    message = str(exit_.value.code)
    assert message.startswith("error: reward.gold: reward source 'nowhere.py:gold'") and "\n" not in message
    assert not out.exists()


@pytest.mark.slow
def test_a_proxy_that_diverges_from_its_gold_is_logged_marked_and_warned_once(tmp_path, train_tiny, capsys):
    from rlhf_app.models.policy import load_policy

    rewards = tmp_path / "rewards.py"
    rewards.write_text(REWARDS)
    run = train_tiny(tmp_path / "run", f"reward.funcs=[{rewards}:count_a]", f"reward.gold={rewards}:capped_a",
                     "eval_steps=2", "ppo.total_episodes=640", "ppo.learning_rate=1e-3", "sample_every=0")
    out = capsys.readouterr().out
    metrics = _rows(run.dir / "metrics.jsonl")
    evaluated = [r for r in metrics if "eval/gold" in r]
    assert [r["step"] for r in evaluated] == list(range(2, 21, 2))  # both scored at every evaluation, with the KL
    assert all(r["eval/proxy"] == r["eval/mean_score"] and "objective/kl" in r for r in evaluated)
    peak = max(evaluated, key=lambda r: r["eval/gold"])
    last = evaluated[-1]
    # built to diverge: the proxy rose to the end while the gold peaked earlier and fell
    assert last["eval/proxy"] > peak["eval/proxy"] and last["eval/gold"] < peak["eval/gold"] - 1
    assert peak["step"] < last["step"] and evaluated[0]["eval/gold"] < peak["eval/gold"]
    best = json.loads((run.dir / "eval.json").read_text())["gold_best"]
    assert best == {"step": peak["step"], "proxy": peak["eval/proxy"], "gold": peak["eval/gold"],
                    "gold_extra": {"over_4_share": peak["eval/gold/over_4_share"]}, "checkpoint": "gold-best"}
    assert all(0 <= r["eval/gold/over_4_share"] <= 1 for r in evaluated)
    assert json.loads((run.dir / "gold-best" / "trainer_state.json").read_text()) == {"step": peak["step"]}
    load_policy(run.dir / "gold-best")
    assert out.count("warning: the gold reward fell 3 evaluations in a row") == 1
    assert f"gold peaked at update {peak['step']}" in out
    page = (run.dir / "report.html").read_text()
    assert "Proxy against gold" in page and (run.dir / "plots" / "gold.png").is_file()
    assert f"<td class=\"num\">{peak['step']}</td>" in page and "gold-best/" in page  # the peak, named
    cli(["eval", f"run_dir={run.dir}", "checkpoint=gold-best", "num=4"])  # the kept policy, scored again
    assert json.loads((run.dir / "eval-gold-best.json").read_text())["checkpoint"] == "gold-best"
    before = json.loads((run.dir / "eval.json").read_text())["before"]
    assert "gold_score" in before and all("gold" in s for s in before["samples"])
    over = [s["completion"].count("a") > 4 for s in before["samples"]]  # the gold's extra metric, by hand
    assert before["gold_extra"] == {"over_4_share": pytest.approx(sum(over) / len(over))}
    assert "over_4_share" not in before["extra"]  # the proxy's figures stay the proxy's
    assert "<th>gold over_4_share</th>" in page
