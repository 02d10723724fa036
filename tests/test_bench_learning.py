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


# ---- imdb-rlhf-offline: pairs -> reward model -> PPO against it, the classifier as reward.gold

def test_the_rlhf_recipe_loads_through_the_config_checks_and_the_bench_knows_it(tmp_path):
    from rlhf_app.config import load_config
    from rlhf_app.stages.pipeline import stage_config

    cfg = load_config(["recipe=imdb-rlhf-offline", f"output_dir={tmp_path}"])
    pairs, rm, ppo = (stage_config(cfg, name) for name in ("pairs", "rm", "ppo"))
    assert cfg.stages == ["pairs", "rm", "ppo"] and pairs.reward.funcs == ["sentiment"]  # the labeller: the gold
    assert pairs.reward.model == "asset:imdb-sentiment" and pairs.pairs.num_generations == 4
    assert rm.rm.dataset == str(tmp_path / "pairs" / "final") and rm.peft.enabled
    assert ppo.reward.funcs == [str(tmp_path / "rm" / "final")] and ppo.reward.gold == "sentiment"
    assert ppo.eval_steps > 0 and ppo.data.num_eval >= 256  # the targets' held-out prompts, gold-best marked
    assert "imdb-rlhf-offline" in learning.RECIPES and "imdb-rlhf-offline" in learning.PIPELINES
    assert set(learning.ASSETS["imdb-rlhf-offline"]) == {"smollm2-135m-instruct", "imdb-sentiment"}


def test_half_the_pairs_seeds_and_quick_runs_are_their_own_entries(tmp_path):
    from learning_plan import QUICK, variants

    from rlhf_app.config import load_config
    from rlhf_app.stages.pipeline import stage_config

    runs = variants(["imdb-rlhf-offline"], [0, 1], 0.5, False, ["ppo.kl_coef=0.1"], tmp_path, tmp_path / "r")
    assert [v.name for v in runs] == ["imdb-rlhf-offline@pairs0.5@seed0", "imdb-rlhf-offline@pairs0.5@seed1"]
    assert runs[1].overrides == ("ppo.kl_coef=0.1", "per_stage.pairs.data.num_train=512", "seed=1")
    assert runs[1].work == tmp_path / runs[1].name and runs[1].seed == 1
    [plain] = variants(["imdb-rlhf-offline"], None, 1.0, False, [], tmp_path, tmp_path)
    assert plain.name == "imdb-rlhf-offline" and plain.overrides == ()
    cfg = load_config(["recipe=imdb-rlhf-offline", *runs[1].overrides])
    assert stage_config(cfg, "pairs").data.num_train == 512 and stage_config(cfg, "ppo").data.num_train == 2048
    [quick] = variants(["imdb-rlhf-offline"], None, 1.0, True, [], tmp_path, tmp_path)
    cfg = load_config(["recipe=imdb-rlhf-offline", *quick.overrides])  # the tiny sizes pass the checks too
    assert stage_config(cfg, "rm").rm.max_steps == 1 and quick.overrides == tuple(QUICK["imdb-rlhf-offline"])
    with pytest.raises(SystemExit, match="--pairs-scale: imdb-offline trains on no pairs"):
        variants(["imdb-offline"], None, 0.5, False, [], tmp_path, tmp_path)
    with pytest.raises(SystemExit, match="--quick is defined for imdb-rlhf-offline"):
        variants(["imdb-offline"], None, 1.0, True, [], tmp_path, tmp_path)


def test_quick_and_partial_runs_never_write_the_committed_results():
    bench = learning.BENCH
    assert learning.destination(False, []) == (None, bench / "learning.json", bench / "learning")
    assert learning.destination(True, []) == ("quick", bench / "work" / "learning-quick.json",
                                              bench / "work" / "learning-quick")
    assert learning.destination(False, ["ppo.kl_coef=0.1"])[:2] == ("partial", bench / "work" / "learning-partial.json")
    with pytest.raises(SystemExit, match="never replaces the committed results"):
        learning.destination(True, [], str(bench / "learning.json"))


def _json(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _at(path: Path, when: float) -> None:
    import os

    os.utime(path, (when, when))


def _rlhf_folder(run: Path) -> None:
    """A pipeline folder as the stages write it, with figures to check by hand."""
    _json(run / "pairs" / "pairs_summary.json", {"pairs": 10, "prompts": 12, "num_generations": 4, "ties": 2,
                                                 "ties_dropped": 2, "tie_threshold": 1.0, "mean_margin": 2.5,
                                                 "labeller": ["sentiment"]})
    (run / "rm").mkdir()
    (run / "rm" / "config.yaml").write_text("rm:\n  eval_fraction: 0.2\n  num_train: null\n")
    (run / "rm" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 1, "loss": 0.7, "accuracy": 0.5}, {"step": 2, "loss": 0.5, "accuracy": 1.0},
        {"step": 2, "train_runtime": 12.5}]))
    _json(run / "rm" / "rm_eval.json", {"pairs": 2, "accuracy": 0.75, "mean_margin": 0.4, "margins": [1.0, -0.2]})
    best = {"step": 4, "proxy": 1.0, "gold": 1.2, "gold_extra": {"positive_share": 1.0}, "checkpoint": "gold-best"}
    evaluations = [{"step": 2, "proxy": 0.5, "gold": 0.2, "gold_extra": {"positive_share": 0.75}}, best,
                   {"step": 6, "proxy": 2.0, "gold": 0.1, "gold_extra": {"positive_share": 0.75}}]
    before = {"mean_score": 0.1, "gold_score": -0.5, "gold_extra": {"positive_share": 0.5}, "extra": {},
              "samples": [_sample("a bore", -1.0), _sample("fine", 0.5)]}
    after = {**before, "mean_score": 2.0, "gold_score": 0.1, "gold_extra": {"positive_share": 0.75}}
    _json(run / "ppo" / "eval.json", {"before": before, "after": after, "gold_best": best})
    _json(run / "ppo" / "gold.json", {"best": best, "warned_at": None, "patience": 3, "evaluations": evaluations})
    (run / "ppo" / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "episode": 32 * s,
                                                                   "objective/kl": 0.5 * s}) + "\n" for s in range(1, 7)))
    for stage, start, end in (("pairs", 100, 160), ("rm", 170, 400), ("ppo", 410, 1000)):
        (run / stage / "final").mkdir(parents=True)
        (run / stage / "config.yaml").touch()
        _at(run / stage / "config.yaml", start)
        _at(run / stage / "final", end)


def test_rlhf_figures_from_a_pipeline_folder(tmp_path):
    import learning_rlhf

    _rlhf_folder(tmp_path)
    fig = learning_rlhf.figures(tmp_path)
    assert fig["pairs"]["pairs"] == 10 and fig["pairs"]["ties_dropped"] == 2
    # 10 pairs, 20% held out (rounded up: 2): 8 trained on
    assert fig["rm"] == {"accuracy": 0.75, "held_out_pairs": 2, "train_pairs": 8, "mean_margin": 0.4, "steps": 2,
                         "loss_first": 0.7, "loss_last": 0.5, "train_accuracy_last5_mean": 0.75,
                         "train_runtime_s": 12.5}
    gold = fig["gold"]
    assert gold["start"] == {"step": 0, "proxy": 0.1, "gold": -0.5, "positive_share": 0.5, "kl": 0.0}
    assert gold["gold_best"] == {"step": 4, "proxy": 1.0, "gold": 1.2, "positive_share": 1.0, "kl": 2.0}
    assert gold["end"] == {"step": 6, "proxy": 2.0, "gold": 0.1, "positive_share": 0.75, "kl": 3.0}
    assert [p["kl"] for p in gold["curve"]] == [1.0, 2.0, 3.0] and gold["gold_best_gain_points"] == 50.0
    assert gold["held_out_prompts"] == 2
    assert fig["stage_s"] == {"pairs": 60.0, "rm": 230.0, "ppo": 590.0}
    line = learning.headline("imdb-rlhf-offline", {**fig, "rc": 0, "wall_s": 960.0, "peak_rss_mib": 4000.0})
    assert "10 labelled pairs, RM held-out accuracy 0.750 on 2" in line
    assert "positive_share 0.500 -> 1.000 at gold-best (update 4, KL 2.00) -> 0.750 at the end (KL 3.00)" in line


def test_seeds_add_up_to_a_mean_across_commands(tmp_path):
    out = tmp_path / "learning.json"
    run = {"commit": "abc"}
    for seed, accuracy, gain in ((0, 0.7, 20.0), (1, 0.8, 30.0)):  # one command per seed
        learning.write_results({f"imdb-rlhf-offline@seed{seed}": {
            "rc": 0, "seed": seed, "wall_s": 100.0 * (seed + 1), "rm": {"accuracy": accuracy},
            "pairs": {"pairs": 800}, "gold": {"gold_best_gain_points": gain}}}, run, out)
    learning.write_results({"imdb-rlhf-offline@seed2": {"rc": 1, "seed": 2, "log": "x.log"}}, run, out)
    recipes = json.loads(out.read_text())["recipes"]
    assert set(recipes) == {"imdb-rlhf-offline@seed0", "imdb-rlhf-offline@seed1", "imdb-rlhf-offline@seed2",
                            "imdb-rlhf-offline@mean"}
    mean = recipes["imdb-rlhf-offline@mean"]
    assert mean["seeds"] == [0, 1] and mean["failed"] == 1
    assert mean["rm/accuracy"] == pytest.approx(0.75) and mean["gold/gold_best_gain_points"] == pytest.approx(25.0)
    assert mean["pairs/pairs"] == 800 and mean["wall_s"] == pytest.approx(150.0)
