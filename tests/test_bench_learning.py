"""bench/learning.py reads its figures back from a run folder as the trainer writes it."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import learning  # noqa: E402
import learning_figures  # noqa: E402


def _sample(completion: str, score: float) -> dict:
    return {"prompt": "The film", "completion": completion, "score": score}


def test_run_figures_from_a_run_folder(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({
        "before": {"mean_score": -1.0, "extra": {"positive_share": 0.25},
                   "samples": [_sample("was dull and slow", -2.0), _sample("a bore", -1.0)]},
        "after": {"mean_score": 3.0, "extra": {"positive_share": 1.0}, "ref_nll": 4.75,
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
    # the reference's NLL a token: kept where the run scored it (LoRA), absent where it did not
    assert fig["after"]["ref_nll"] == 4.75 and "ref_nll" not in fig["before"]
    evals = json.loads((tmp_path / "eval.json").read_text())
    evals["before"]["ref_nll"] = 3.5
    (tmp_path / "eval.json").write_text(json.dumps(evals))
    fig = learning.run_figures(tmp_path)
    assert learning_figures.derived(learning_figures.flatten(fig))["change/ref_nll"] == pytest.approx(1.25)
    assert "ref_nll 3.500 -> 4.750" in learning.headline("imdb-offline", {
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


def test_a_variant_is_its_own_entry_with_its_settings_and_a_wrong_one_clears_nothing(tmp_path, monkeypatch):
    import learning
    from learning_plan import variants, with_means

    from rlhf_app.config import load_config

    runs = variants(["gsm8k-offline"], [0, 2], 1.0, False, [], tmp_path, tmp_path / "r", "fp32")
    assert [v.name for v in runs] == ["gsm8k-offline@fp32@seed0", "gsm8k-offline@fp32@seed2"]
    assert runs[1].overrides == ("ppo.bf16=false", "seed=2") and runs[1].work == tmp_path / runs[1].name
    assert load_config(["recipe=gsm8k-offline"]).ppo.bf16 and not load_config(
        ["recipe=gsm8k-offline", *runs[1].overrides]).ppo.bf16
    means = with_means({"gsm8k-offline@fp32@seed0": {"seed": 0, "wall_s": 10.0},
                        "gsm8k-offline@fp32@seed2": {"seed": 2, "wall_s": 20.0},
                        "gsm8k-offline": {"wall_s": 99.0}})
    assert means["gsm8k-offline@fp32@mean"]["wall_s"] == 15.0 and "gsm8k-offline@mean" not in means
    # imdb-offline trains in float32 already: the variant is refused before the bench's cache is touched
    cache = tmp_path / "work" / "cache"
    (cache / "asset").mkdir(parents=True)
    monkeypatch.setattr(learning, "WORK", tmp_path / "work")
    with pytest.raises(SystemExit, match="--variant fp32 is defined for gsm8k-offline"):
        learning.main(["--only", "imdb-offline", "--variant", "fp32"])
    assert (cache / "asset").is_dir()


def test_quick_and_partial_runs_never_write_the_committed_results():
    bench = learning.BENCH
    assert learning.destination(False, []) == (None, bench / "learning.json", bench / "learning")
    assert learning.destination(True, []) == ("quick", bench / "work" / "learning-quick.json",
                                              bench / "work" / "learning-quick")
    assert learning.destination(False, ["ppo.kl_coef=0.1"])[:2] == ("partial", bench / "work" / "learning-partial.json")
    with pytest.raises(SystemExit, match="never replaces the committed results"):
        learning.destination(True, [], str(bench / "learning.json"))


def test_a_run_with_out_keeps_its_reports_beside_its_json(tmp_path):
    # a full run sent elsewhere must not copy its reports over the committed bench/learning/
    assert learning.destination(False, [], str(tmp_path / "mine.json")) == (None, tmp_path / "mine.json",
                                                                             tmp_path / "mine")
    assert learning.destination(False, [], str(tmp_path / "mine"))[2] == tmp_path / "mine-reports"
    assert learning.destination(True, [], str(tmp_path / "q.json"))[1:] == (tmp_path / "q.json", tmp_path / "q")


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


# ---- every recipe over seeds: the mean ± sd, the held-out curve, the README's tables

def _seed_entry(seed: int, before: float, after: float, distinct_after: float, kl: float, update_s: float,
                wall_s: float, curve_s: float) -> dict:
    point = lambda update, t, share: {"update": update, "episodes": 32 * update, "time_s": t,  # noqa: E731
                                      "kl": kl, "all": {"positive_share": share}}
    return {"rc": 0, "seed": seed, "wall_s": wall_s, "peak_rss_mib": 2048.0, "kl_final": kl,
            "s_per_update": {"update_s": update_s, "reward_s": None},
            "before": {"positive_share": before, "distinct_word_share": 0.5, "n": 256, "samples": [{"score": 9.0}]},
            "after": {"positive_share": after, "distinct_word_share": distinct_after, "n": 256},
            "generated": {"before": {"accuracy_strict": 0.0}, "after": {"accuracy_strict": 0.1 * seed}},
            "curve": [point(0, 0.0, before), point(8, curve_s, after)], "run": {"cpus": 2}}


def test_every_figure_of_a_recipe_has_a_mean_and_sd_over_its_seeds(tmp_path):
    out = tmp_path / "learning.json"
    # three commands, one seed each, and a failed fourth seed
    for seed, args in enumerate([(0.5, 0.8, 0.4, 1.0, 10.0, 100.0, 80.0), (0.6, 1.0, 0.5, 2.0, 12.0, 200.0, 100.0),
                                 (0.7, 0.9, 0.45, 3.0, 14.0, 300.0, 120.0)]):
        learning.write_results({f"imdb-offline@seed{seed}": _seed_entry(seed, *args)}, {"commit": "abc"}, out)
    learning.write_results({"imdb-offline@seed3": {"rc": 1, "seed": 3, "log": "x.log"}}, {"commit": "abc"}, out)
    mean = json.loads(out.read_text())["recipes"]["imdb-offline@mean"]
    assert mean["seeds"] == [0, 1, 2] and mean["failed"] == 1
    # by hand: 0.5, 0.6, 0.7 -> 0.6 ± 0.1; changes 0.3, 0.4, 0.2 -> 0.3 ± 0.1; distinct 0.8, 1.0, 0.9 of the start
    expected = {"before/positive_share": (0.6, 0.1), "after/positive_share": (0.9, 0.1),
                "change/positive_share": (0.3, 0.1), "distinct_word_share_ratio": (0.9, 0.1),
                "kl_final": (2.0, 1.0), "s_per_update/update_s": (12.0, 2.0), "wall_s": (200.0, 100.0),
                "peak_rss_mib": (2048.0, 0.0), "generated/change/accuracy_strict": (0.1, 0.1)}
    for path, (m, sd) in expected.items():
        assert mean[path] == pytest.approx(m) and mean["sd"][path] == pytest.approx(sd), path
    assert mean["per_seed"]["after/positive_share"] == {"0": 0.8, "1": 1.0, "2": 0.9}
    # run facts, samples, the seed and a phase never timed are not figures; nor is a change of the prompt count
    assert not {"run/cpus", "seed", "rc", "s_per_update/reward_s", "change/n"} & set(mean)
    [start, end] = mean["curve"]["positive_share"]
    assert start["time_s"] == 0.0 and start["value"] == pytest.approx(0.6)
    assert end == {"update": 8, "episodes": 256, "time_s": 100.0, "value": pytest.approx(0.9),
                   "sd": pytest.approx(0.1), "n": 3}


def test_the_held_out_curve_is_timed_by_the_updates_alone(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({
        "before": {"mean_score": -1.0, "extra": {"positive_share": 0.25}, "samples": [_sample("a bore", -1.0)]},
        "after": {"mean_score": 1.0, "extra": {"positive_share": 0.75}, "samples": [_sample("fine fun", 1.0)]}}))
    rows = [{"step": 1, "episode": 8, "time/update_s": 3.0, "objective/kl": 0.5},
            {"step": 2, "episode": 16, "time/update_s": 4.0, "objective/kl": 1.5, "eval/mean_score": 0.5,
             "eval/positive_share": 0.5},
            {"step": 3, "episode": 24, "time/update_s": 5.0, "objective/kl": 2.5},
            {"step": 4, "episode": 32, "time/update_s": 6.0, "objective/kl": 3.5, "eval/mean_score": 1.0,
             "eval/positive_share": 0.75}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = learning.run_figures(tmp_path)
    assert fig["train_s"] == 18.0
    assert [(p["update"], p["episodes"], p["time_s"], p["kl"]) for p in fig["curve"]] == [
        (0, 0, 0.0, 0.0), (2, 16, 7.0, 1.5), (4, 32, 18.0, 3.5)]
    assert fig["curve"][0]["all"] == {"mean_score": -1.0, "positive_share": 0.25, "distinct_word_share": 1.0}
    assert fig["curve"][2]["all"] == {"mean_score": 1.0, "positive_share": 0.75}


def test_every_recipe_runs_three_seeds_on_at_least_256_held_out_prompts(tmp_path):
    import generated_eval
    import phases
    from learning_plan import SEEDS, variants

    from rlhf_app.config import load_config
    from rlhf_app.stages.pipeline import stage_config

    assert learning.parse_args([])[0].seeds == [0, 1, 2] == list(SEEDS)
    assert learning.parse_args(["--seeds", "1"])[0].seeds == [1]
    runs = variants(list(learning.RECIPES), list(SEEDS), 1.0, False, [], tmp_path, tmp_path)
    assert len(runs) == 3 * len(learning.RECIPES) and runs[1].name == "imdb-offline@seed1"
    for v in runs:
        cfg = load_config([f"recipe={v.recipe}", *v.overrides])
        if v.recipe in learning.PIPELINES:
            cfg = stage_config(cfg, "ppo")
        assert cfg.seed == v.seed and cfg.eval_steps > 0, v.name
        if v.recipe.startswith("imdb"):
            assert cfg.data.num_eval >= 256, v.name
    # GSM8K: 300 generated problems (single runs and the pipelines' phases), besides all 55 real items
    assert generated_eval.GENERATED == phases.GENERATED >= 300


def test_a_tools_seed_is_set_against_the_same_seed_of_its_twin(tmp_path):
    def entry(p):
        ppo = {"generated": {"accuracy_strict": p, "accuracy_strict_se": 0.03}}
        return {"rc": 0, "phases": {"phases": {"ppo": ppo}}}

    out = tmp_path / "learning.json"
    learning.write_results({"gsm8k-pipeline-offline@seed0": entry(0.1), "gsm8k-pipeline-offline@seed1": entry(0.2),
                            "gsm8k-tools-offline@seed1": entry(0.3)}, {}, out)
    recipes = json.loads(out.read_text())["recipes"]
    against = recipes["gsm8k-tools-offline@seed1"]["against_no_tools"]
    assert against["twin"] == "gsm8k-pipeline-offline@seed1" and against["ppo/generated"]["diff"] == pytest.approx(0.1)
    assert "against_no_tools" not in recipes["gsm8k-pipeline-offline@seed0"]


def test_the_results_table_gives_mean_and_sd_labels_one_seed_and_makes_nothing_up():
    import learning_table

    entries = [_seed_entry(s, *a) for s, a in enumerate([(0.5, 0.8, 0.4, 1.0, 10.0, 100.0, 80.0),
                                                         (0.6, 1.0, 0.5, 2.0, 12.0, 200.0, 100.0),
                                                         (0.7, 0.9, 0.45, 3.0, 14.0, 300.0, 120.0)])]
    from learning_figures import seed_mean

    gsm = {"rc": 0, "wall_s": 600.0, "peak_rss_mib": 1024.0, "kl_final": 4.0, "s_per_update": {"update_s": 20.0},
           "before": {"format_end_share": 0.0, "n": 55}, "after": {"format_end_share": 0.5, "n": 55}}
    block = learning_table.tables({"recipes": {"imdb-offline@mean": seed_mean(entries), "gsm8k-offline": gsm}}, {})
    recipes_table = block.split("The race against")[0]
    rows = {line.split(" | ")[0].strip("| `"): line for line in recipes_table.splitlines() if line.startswith("| `")}
    assert ("| 3 (0, 1, 2) | positive share, 256 held-out prompts | 60.0% ± 10.0 → 90.0% ± 10.0 | +30.0 ± 10.0 | "
            "0.90 ± 0.10× | 2.0 ± 1.0 | 12.0 ± 2.0 | 3.3 ± 1.7 min | 2.0 ± 0.0 GiB |") in rows["imdb-offline"]
    # one seed: labelled; its generated problems never scored: not measured yet, not a zero
    assert "| one seed | strict accuracy, generated problems | not measured yet → not measured yet" in rows[
        "gsm8k-offline"] and "| 10.0 min | 1.0 GiB |" in rows["gsm8k-offline"]
    assert "| ends with `#### N`, 55 real GSM8K items | 0.0% → 50.0% | +50.0 |" in block
    assert rows["imdb-rlhf-offline"].count("not measured yet") == 1
    assert "not measured yet" in rows["gsm8k-tools-offline"]
    with pytest.raises(ValueError, match="markers are missing"):
        learning_table.replace_block("no markers", block)
    # a variant's seeds (bench/learning.py --variant fp32): their own row right under the recipe's, none when unmeasured
    assert "float32" not in block
    fp32 = [{**gsm, "seed": s, "wall_s": w, "after": {"format_end_share": f, "n": 55}}
            for s, w, f in ((0, 600.0, 0.6), (1, 1200.0, 0.8))]
    lines = learning_table.tables({"recipes": {"gsm8k-offline": gsm, "gsm8k-offline@fp32@mean": seed_mean(fp32)}},
                                  {}).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| `gsm8k-offline`, float32 training | 2 (0, 1) |"))
    assert lines[at - 2].startswith("| `gsm8k-offline` | one seed |") and "| 15.0 ± 7.1 min |" in lines[at]
    assert "| ends with `#### N`, 55 real GSM8K items | 0.0% ± 0.0 → 70.0% ± 14.1 | +70.0 ± 14.1 |" in lines[at + 1]


def test_the_readme_holds_the_tables_of_the_committed_results():
    import learning_table

    readme = (learning.ROOT / "README.md").read_text()
    block = learning_table.tables(json.loads(learning.OUT_JSON.read_text()),
                                  learning_table._load(learning.BENCH / "race.json"))
    assert learning_table.replace_block(readme, block) == readme, \
        "README.md's results tables are stale: run .venv/bin/python bench/learning_table.py --write README.md"


def test_the_race_table_gives_each_side_from_the_start_and_the_verdict_against_its_target():
    import learning_table

    summary = {"start": 0.5, "pairs": {"ours vs trl": {"target": 0.8, "verdict": "ours 90 s, trl 200 s: ratio 0.45"}},
               "final": {"ours": {"value": 0.85, "sd": 0.0, "time_s": 100.4, "n": 1},
                         "trl": {"value": 0.6, "sd": 0.05, "time_s": 200.0, "n": 3}}}
    rows = learning_table.race_rows({"recipes": {"imdb-offline": {"summary": summary}}})
    assert rows[0] == ["`imdb-offline`", "positive share, 256 held-out prompts", "50.0% → 85.0% after 100 s (one seed)",
                       "not measured yet", "50.0% → 60.0% ± 5.0 after 200 s (3 seeds)",
                       "ours vs TRL, target 80.0%: ours 90 s, trl 200 s: ratio 0.45"]
    assert rows[1][2:] == ["not measured yet"] * 4
    # With TRL's settings raced too, the verdict cell gives both rlhf_app sides against TRL, the shipped recipe first.
    summary["pairs"]["ours-grpo vs trl"] = {"target": 0.8, "verdict": "trl never reached within 2x ours-grpo's time"}
    summary["pairs"]["ours vs ours-grpo"] = {"target": 0.8, "verdict": "not a TRL pair"}
    summary["final"]["ours-grpo"] = {"value": 0.9, "sd": 0.0, "time_s": 300.0, "n": 1}
    row = learning_table.race_rows({"recipes": {"imdb-offline": {"summary": summary}}})[0]
    assert row[3] == "50.0% → 90.0% after 300 s (one seed)"
    assert row[5] == ("ours vs TRL, target 80.0%: ours 90 s, trl 200 s: ratio 0.45. "
                      "ours-grpo vs TRL, target 80.0%: trl never reached within 2x ours-grpo's time")
    # Over several seeds: the verdict on the mean curves, then each seed's against its own start + the gain.
    summary["pairs"]["ours vs trl"].update(seeds=["0", "1"], target=0.87, verdict="neither reached it", per_seed={
        "0": {"target": 0.862, "verdict": "neither reached it"},
        "1": {"target": 0.882, "verdict": "ours 1095 s, trl 2923 s: ratio 0.37"}})
    summary["pairs"]["ours-grpo vs trl"]["seeds"] = ["0"]
    row = learning_table.race_rows({"recipes": {"imdb-offline": {"summary": summary}}})[0]
    assert row[5] == ("ours vs TRL, seeds 0, 1, mean curves to 87.0%: neither reached it; "
                      "seed 0, target 86.2%: neither reached it; "
                      "seed 1, target 88.2%: ours 1095 s, trl 2923 s: ratio 0.37. "
                      "ours-grpo vs TRL, seed 0, target 80.0%: trl never reached within 2x ours-grpo's time")


def test_a_race_run_before_the_recipe_changed_says_what_changed_and_how_to_rerun_it():
    import learning_table
    import race_config

    today = race_config.settings(race_config.side_config("imdb-offline", "ours", 0))
    runs = {"ours": {"0": {"settings": {**today, "kl_coef": 0.5}}, "1": {"settings": {**today, "kl_coef": 0.25}}}}
    assert learning_table.since_run("imdb-offline", runs) == f"kl_coef 0.25 / 0.5 → {today['kl_coef']}"
    assert learning_table.since_run("imdb-offline", {"ours": {"0": {"settings": today}}}) == ""
    summary = {"start": 0.5, "pairs": {}, "final": {"ours": {"value": 0.85, "sd": 0.0, "time_s": 100.0, "n": 1}}}
    figure = learning_table.race_rows({"recipes": {"imdb-offline": {"summary": summary, "runs": runs}}})[0][1]
    assert figure == (f"positive share, 256 held-out prompts (raced before the recipe changed: kl_coef 0.25 / 0.5 → "
                      f"{today['kl_coef']}; `bench/race.py --only imdb` reruns it)")
    same = {"ours": {"0": {"settings": today}}}
    assert learning_table.race_rows({"recipes": {"imdb-offline": {"summary": summary, "runs": same}}})[0][1] == \
        "positive share, 256 held-out prompts"
