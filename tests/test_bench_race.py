"""bench/race.py: arguments, merging into the result file, the time-to-target arithmetic (by hand), and that
every side gets the same prompts, reward, model and evaluation; a smoke run of the whole race on the tiny model."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
import outputs  # noqa: E402
import race  # noqa: E402
import race_config as rc  # noqa: E402
import race_summary as rs  # noqa: E402


# ---------------------------------------------------------------- arguments

def test_arguments_choose_recipes_sides_and_seeds():
    args = race.parse_args([])
    assert args.recipes == ["imdb-offline", "gsm8k-offline"] and args.sides == ["ours", "ours-grpo", "trl"]
    assert args.seed_list == [0, 1, 2] and args.kind is None  # a full run: merged into bench/race.json
    args = race.parse_args(["--only", "gsm8k", "--sides", "trl,ours", "--seed", "2"])
    assert args.recipes == ["gsm8k-offline"] and args.sides == ["ours", "trl"] and args.seed_list == [2]
    assert race.parse_args(["--seeds", "5"]).seed_list == [0, 1, 2, 3, 4]
    assert race.parse_args(["--quick"]).kind == "quick" and race.parse_args(["--quick"]).seed_list == [0]
    assert race.parse_args(["ppo.learning_rate=1e-4"]).kind == "partial"  # other settings: not the race's figures
    assert race.parse_args(["--points", "3"]).kind == "partial"
    assert race.parse_args(["--held-out", "16"]).kind == "partial"
    assert rc.side_config("imdb-offline", "trl", 0, held=16).data.num_eval == 16


@pytest.mark.parametrize("argv, words", [(["--sides", "ours,vllm"], "--sides ours,vllm"),
                                         (["--seeds", "0"], "--seeds"), (["--fast"], "unrecognized arguments: --fast")])
def test_a_bad_argument_is_one_line(argv, words):
    with pytest.raises(SystemExit) as err:
        race.parse_args(argv)
    assert str(err.value).startswith("error: ") and words in str(err.value) and "\n" not in str(err.value)


def test_a_quick_race_is_refused_the_committed_file(tmp_path):
    with pytest.raises(SystemExit) as err:
        race.main(["--quick", "--out", str(BENCH / "race.json")])
    assert "never replaces the committed results" in str(err.value)


# ---------------------------------------------------------------- arithmetic by hand

def _run(points, fingerprint="f1", train_s=None):
    pts = [{"update": u, "episodes": 32 * u, "time_s": t, "all": {"positive_share": v, "mean_score": v}}
           for u, t, v in points]
    return {"points": pts, "fingerprint": fingerprint, "train_s": train_s or pts[-1]["time_s"]}


OURS = {"0": _run([(0, 0, 0.50), (4, 100, 0.70), (8, 200, 0.85)]),
        "1": _run([(0, 0, 0.50), (4, 110, 0.82), (8, 220, 0.90)])}
TRL = {"0": _run([(0, 0, 0.50), (4, 300, 0.60), (8, 600, 0.81)]),
       "1": _run([(0, 0, 0.50), (4, 280, 0.79), (8, 560, 0.84)])}


def test_mean_curves_and_the_time_to_plus_30_points():
    assert rs.mean_sd([1, 2, 3, 4]) == (2.5, pytest.approx(math.sqrt(5 / 3)))
    s = rs.summarise({"ours": OURS, "trl": TRL}, "positive_share", 0.30)
    assert s["start"] == 0.50 and s["start_equal_across_sides"] is True
    ours = s["curves"]["ours"]
    assert [(p["update"], p["time_s"]) for p in ours] == [(0, 0), (4, 105), (8, 210)]
    assert ours[1]["value"] == pytest.approx(0.76) and ours[1]["sd"] == pytest.approx(0.12 / math.sqrt(2))
    pair = s["pairs"]["ours vs trl"]
    # Target 0.80: ours' mean curve reaches 0.875 at 210 s, TRL's 0.825 at 580 s.
    assert pair["target"] == pytest.approx(0.80) and pair["ours_s"] == 210 and pair["trl_s"] == 580
    assert pair["ratio"] == pytest.approx(210 / 580) and pair["meets_target"] is True
    # Per seed: seed 0 200 s against 600 s; seed 1 110 s (0.82) against 560 s (0.79 at 280 s is short of 0.80).
    assert pair["per_seed"]["0"]["ratio"] == pytest.approx(1 / 3)
    assert pair["per_seed"]["1"]["ratio"] == pytest.approx(110 / 560)
    assert pair["ratio_per_seed_mean"] == pytest.approx((1 / 3 + 110 / 560) / 2)


def test_a_peer_that_never_gets_there_within_twice_our_time():
    flat_long = {"0": _run([(0, 0, 0.50), (4, 250, 0.70), (8, 450, 0.75)])}
    flat_short = {"0": _run([(0, 0, 0.50), (4, 150, 0.70), (8, 300, 0.75)])}
    ours = {"0": OURS["0"]}  # reaches 0.80 at 200 s
    pair = rs.summarise({"ours": ours, "trl": flat_long}, "positive_share", 0.30)["pairs"]["ours vs trl"]
    assert pair["ratio"] is None and pair["never_within_2x"] and "never reached within 2x" in pair["verdict"]
    assert pair["meets_target"] is True
    # rlhf_app with TRL's settings is held to the same target; the pair of our two sides is not.
    pairs = rs.summarise({"ours-grpo": ours, "trl": flat_long, "ours": flat_short}, "positive_share", 0.30)["pairs"]
    assert pairs["ours-grpo vs trl"]["meets_target"] is True and pairs["ours vs trl"]["meets_target"] is False
    assert "meets_target" not in pairs["ours vs ours-grpo"]
    pair = rs.summarise({"ours": ours, "trl": flat_short}, "positive_share", 0.30)["pairs"]["ours vs trl"]
    assert not pair["never_within_2x"] and pair["ratio_below"] == pytest.approx(200 / 300)
    assert "did not reach it within its run of 300 s" in pair["verdict"] and pair["meets_target"] is False


def test_gsm8k_races_to_the_best_accuracy_both_reach():
    def acc(points):
        return {"0": {"points": [{"update": u, "episodes": 8 * u, "time_s": t, "all": {"accuracy_strict": v}}
                                 for u, t, v in points]}}
    s = rs.summarise({"ours": acc([(0, 0, 0.0), (5, 60, 0.05), (10, 120, 0.04)]),
                      "trl": acc([(0, 0, 0.0), (5, 90, 0.01), (10, 200, 0.03)])}, "accuracy_strict", None)
    pair = s["pairs"]["ours vs trl"]  # ours peaks at 0.05, TRL at 0.03: the race is to 0.03
    assert pair["target"] == pytest.approx(0.03) and pair["ours_s"] == 60 and pair["trl_s"] == 200
    s = rs.summarise({"ours": acc([(0, 0, 0.0), (5, 60, 0.0)]), "trl": acc([(0, 0, 0.0), (5, 90, 0.0)])},
                     "accuracy_strict", None)
    assert "no gain to race on" in s["pairs"]["ours vs trl"]["verdict"]


def test_a_side_with_more_seeds_is_compared_on_the_seeds_both_ran():
    s = rs.summarise({"ours": OURS, "trl": {"0": TRL["0"]}}, "positive_share", 0.30)
    # ours' own curve averages both seeds (0.76 at update 4); against TRL only seed 0 counts (0.70 at 4, 0.85 at 8).
    assert s["final"]["ours"]["n"] == 2 and s["curves"]["ours"][1]["value"] == pytest.approx(0.76)
    assert s["final"]["ours"]["start"] == pytest.approx(0.50) and s["final"]["trl"]["n"] == 1
    pair = s["pairs"]["ours vs trl"]
    assert pair["seeds"] == ["0"] and pair["ours_s"] == 200 and pair["trl_s"] == 600
    assert pair["ratio"] == pytest.approx(1 / 3)
    assert "ours vs ours-grpo" not in s["pairs"]


def test_a_seed_timed_on_two_hosts_says_so_in_its_verdict():
    zen = {"cpu": "AMD EPYC", "family": 26, "model": 2, "bf16": ["avx512_bf16"]}
    old = {"cpu": "AMD EPYC", "family": 23, "model": 1, "bf16": []}
    same = rs.summarise({"ours": {"0": {**OURS["0"], "host": zen}}, "trl": {"0": {**TRL["0"], "host": zen}}},
                        "positive_share", 0.30)["pairs"]["ours vs trl"]
    assert "two hosts" not in same["verdict"] and "seeds_across_hosts" not in same
    apart = rs.summarise({"ours": {"0": {**OURS["0"], "host": old}, "1": OURS["1"]},
                          "trl": {"0": {**TRL["0"], "host": zen}, "1": {**TRL["1"], "host": zen}}},
                         "positive_share", 0.30)["pairs"]["ours vs trl"]
    assert apart["seeds_across_hosts"] == ["0", "1"] and "(seeds 0, 1 timed on two hosts)" in apart["verdict"]
    assert apart["per_seed"]["0"]["verdict"].endswith(
        "(timed on two hosts: ours on AMD EPYC family 23 model 1, no bfloat16 hardware, "
        "trl on AMD EPYC family 26 model 2, bfloat16 in hardware)")
    assert "ours on an unrecorded CPU" in apart["per_seed"]["1"]["verdict"]
    assert apart["per_seed"]["0"]["ratio"] == pytest.approx(1 / 3)  # said, not dropped: the figure stays


def test_the_committed_summaries_are_todays_arithmetic_and_summary_redoes_stale_ones(tmp_path, capsys):
    committed = json.loads((BENCH / "race.json").read_text())
    fresh = json.loads(json.dumps(committed))
    assert race.resummarise(fresh) is False, \
        "bench/race.json's summaries are stale: run .venv/bin/python bench/race.py --summary"
    stale = tmp_path / "race.json"
    rec = fresh["recipes"]["imdb-offline"]
    rec["summary"] = {**rec["summary"], "pairs": {}}
    stale.write_text(json.dumps(fresh))
    race.main(["--summary", "--out", str(stale)])
    assert json.loads(stale.read_text()) == committed and "summaries redone" in capsys.readouterr().out


# ---------------------------------------------------------------- merging

def test_runs_merge_per_side_and_seed_and_settings_changes_are_set_aside(tmp_path):
    path = tmp_path / "race.json"
    race.merge(path, "imdb-offline", "ours", 0, OURS["0"])
    race.merge(path, "imdb-offline", "trl", 0, TRL["0"])
    doc = race.merge(path, "imdb-offline", "ours", 1, OURS["1"])
    assert json.loads(path.read_text()) == doc and [p.name for p in tmp_path.iterdir()] == ["race.json"]
    runs = doc["recipes"]["imdb-offline"]["runs"]
    assert sorted(runs["ours"]) == ["0", "1"] and sorted(runs["trl"]) == ["0"]
    assert doc["recipes"]["imdb-offline"]["summary"]["final"]["ours"]["n"] == 2
    # The pair compares seed 0 alone, the one both sides ran: seed 1's 0.82 at 110 s is not TRL's to answer.
    pair = doc["recipes"]["imdb-offline"]["summary"]["pairs"]["ours vs trl"]
    assert pair["seeds"] == ["0"] and pair["ours_s"] == 200 and pair["trl_s"] == 600
    changed = _run([(0, 0, 0.5), (4, 90, 0.9)], fingerprint="f2")
    doc = race.merge(path, "imdb-offline", "ours", 0, changed)  # new settings: the old ours runs are set aside
    rec = doc["recipes"]["imdb-offline"]
    assert rec["runs"]["ours"] == {"0": changed} and len(rec["superseded"]) == 2
    assert rec["runs"]["trl"] == {"0": TRL["0"]}  # the other side is untouched
    assert race.time_cap(doc, "imdb-offline", 0, "trl", "f2") == 2 * 90  # 2x ours' training time
    assert race.time_cap(doc, "imdb-offline", 0, "trl", "f1") is None  # ours not run under today's settings
    # a changed recipe changes every side's settings: today's fingerprints set the other sides' old runs aside
    today = {"ours": "f2", "trl": "t2"}
    doc = race.merge(path, "imdb-offline", "ours", 1, _run([(0, 0, 0.5)], fingerprint="f2"), today)
    rec = doc["recipes"]["imdb-offline"]
    assert sorted(rec["runs"]["ours"]) == ["0", "1"] and rec["runs"]["trl"] == {} and len(rec["superseded"]) == 3
    assert "trl" not in rec["summary"]["final"]


# ---------------------------------------------------------------- a run stopped after its training

def test_a_run_stopped_while_scoring_scores_only_the_snapshots_left(tmp_path):
    import race_child

    scored = tmp_path / "scored"
    scored.mkdir()
    earlier = {"sets": {"heldout": {"n": 2, "positive_share": 0.5}}, "all": {"n": 2, "positive_share": 0.5}}
    (scored / "update-4.json").write_text(json.dumps(earlier))
    (scored / ".update-8.json.tmp").write_text('{"sets": ')  # killed while writing: not a scored snapshot
    points = [{"update": u, "time_s": u * 10.0, "snapshot": f"snapshots/update-{u}.safetensors"} for u in (0, 4, 8)]
    built, calls = [], []

    def build():
        built.append(True)

        def score(point):
            calls.append(point["snapshot"])
            figures = {"n": 2, "positive_share": point["update"] / 10}
            return {"sets": {"heldout": figures}, "all": figures}
        return score

    assert race_child.score_points(points, scored, build) == 1  # one read back
    assert built == [True] and calls == ["snapshots/update-0.safetensors", "snapshots/update-8.safetensors"]
    assert [p["all"]["positive_share"] for p in points] == [0.0, 0.5, 0.8]
    assert all("snapshot" not in p for p in points) and points[1]["time_s"] == 40.0
    assert json.loads((scored / "update-8.json").read_text())["all"]["positive_share"] == 0.8
    again = [{"update": u, "snapshot": "x"} for u in (0, 4, 8)]
    assert race_child.score_points(again, scored, lambda: pytest.fail("all scored: nothing to build")) == 3
    assert again[2]["all"]["positive_share"] == 0.8


def test_only_the_same_run_trained_to_the_end_continues(tmp_path):
    spec = race.spec_of(race.parse_args([]), "gsm8k-offline", "trl", 1, 2844.0, "fp-trl", "c1", False)
    out = tmp_path / "run"
    out.mkdir()
    assert race.continues(out, spec) is None  # nothing there
    (out / "spec.json").write_text(json.dumps(spec))
    assert race.continues(out, spec) is None  # stopped while training: it starts over
    (out / "trained.json").write_text("{}")
    assert race.continues(out, {**spec, "commit": "c2", "dirty": True}) == spec  # the code it trained with
    for change in ({"fingerprint": "fp-other"}, {"seed": 2}, {"time_cap_s": 2900.0}, {"threads": 1}):
        assert race.continues(out, {**spec, **change}) is None, change


# ---------------------------------------------------------------- the same prompts, reward and evaluation

SAMPLING = ("temperature", "response_length", "top_k", "top_p", "stop_token", "do_sample", "learning_rate",
            "lr_scheduler_type", "weight_decay", "per_device_train_batch_size", "num_mini_batches",
            "gradient_accumulation_steps", "num_ppo_epochs", "reward_clip", "ent_coef", "bf16", "cliprange")


@pytest.mark.parametrize("recipe", ["imdb-offline", "gsm8k-offline"])
@pytest.mark.parametrize("quick", [False, True])
def test_every_side_gets_the_same_data_model_reward_and_evaluation(recipe, quick):
    cfgs = {side: rc.side_config(recipe, side, 1, 2, quick) for side in rc.SIDES}
    ours, grpo, trl = cfgs["ours"], cfgs["ours-grpo"], cfgs["trl"]
    for cfg in cfgs.values():
        assert (cfg.seed, cfg.data, cfg.reward, cfg.model, cfg.peft) == (ours.seed, ours.data, ours.reward,
                                                                         ours.model, ours.peft)
        assert all(getattr(cfg.ppo, k) == getattr(ours.ppo, k) for k in SAMPLING)
    assert dataclasses.asdict(grpo) == dataclasses.asdict(trl)
    assert ours.ppo.kl_coef > 0 and ours.algorithm.beta == 0  # the recipe's KL is in the reward (k1)
    # A PPO recipe's GRPO sides get rc.GROUP responses per prompt; a GRPO recipe keeps its own group.
    group = ours.algorithm.group_size if ours.algorithm.advantage_estimator == "grpo" else rc.GROUP
    assert grpo.algorithm.advantage_estimator == "grpo" and grpo.algorithm.group_size == group
    assert grpo.algorithm.beta == ours.ppo.kl_coef and grpo.ppo.kl_coef == 0  # the KL moved into the loss
    assert grpo.ppo.total_episodes == ours.ppo.total_episodes  # peer_factor 1
    ev = rc.eval_config(recipe, 1, 2, quick)
    assert (ev.seed, ev.data, ev.reward, ev.model, ev.rollout) == (ours.seed, ours.data, ours.reward, ours.model,
                                                                   ours.rollout)
    assert all(getattr(ev.ppo, k) == getattr(ours.ppo, k) for k in ("temperature", "response_length", "top_k",
                                                                    "top_p", "stop_token", "do_sample"))
    held = (rc.QUICK_HELD_OUT if quick else rc.HELD_OUT)[recipe]
    if recipe == "imdb-offline":
        assert ev.data.num_eval == held and (quick or held >= 256)
    k = rc.trl_kwargs(trl, "out")
    assert (k["temperature"], k["max_completion_length"], k["top_k"], k["top_p"]) == \
        (ours.ppo.temperature, ours.ppo.response_length, ours.ppo.top_k, ours.ppo.top_p)
    assert (k["num_generations"], k["beta"], k["epsilon"], k["entropy_coef"], k["learning_rate"], k["bf16"]) == \
        (group, grpo.algorithm.beta, grpo.ppo.cliprange, grpo.ppo.ent_coef, grpo.ppo.learning_rate, grpo.ppo.bf16)
    # One TRL generation batch is one of our updates; its optimizer steps are our epochs x mini-batches.
    assert k["per_device_train_batch_size"] * k["steps_per_generation"] == grpo.ppo.local_batch_size
    assert k["num_iterations"] == grpo.ppo.num_ppo_epochs and k["loss_type"] == "dapo"
    updates = math.ceil(grpo.ppo.total_episodes / grpo.ppo.local_batch_size)
    assert k["max_steps"] == updates * grpo.ppo.num_mini_batches * grpo.ppo.num_ppo_epochs
    assert k["gradient_checkpointing"] is False and k["use_vllm"] is False


def test_a_grpo_recipe_keeps_its_estimator_and_only_its_kl_moves():
    ours = rc.side_config("imdb-offline", "ours", 0)
    grpo = rc.side_config("imdb-offline", "ours-grpo", 0)
    assert ours.algorithm.advantage_estimator == "grpo"  # the recipe is GRPO already
    changed = {k for k, v in dataclasses.asdict(grpo.ppo).items() if dataclasses.asdict(ours.ppo)[k] != v}
    assert changed == {"kl_coef"} and (grpo.algorithm.beta, ours.algorithm.beta) == (ours.ppo.kl_coef, 0)
    assert dataclasses.replace(grpo.algorithm, beta=0) == ours.algorithm
    # With no KL at all there is nothing to move: ours-grpo is the recipe.
    no_kl = ["ppo.kl_coef=0"]
    assert dataclasses.asdict(rc.side_config("imdb-offline", "ours-grpo", 0, extra=no_kl)) == \
        dataclasses.asdict(rc.side_config("imdb-offline", "ours", 0, extra=no_kl))


def test_trl_refuses_settings_it_has_no_equivalent_for():
    cfg = rc.side_config("imdb-offline", "trl", 0, extra=["ppo.whiten_rewards=true"])
    with pytest.raises(ValueError, match="ppo.whiten_rewards"):
        rc.trl_kwargs(cfg, "out")
    with pytest.raises(ValueError, match="advantage_estimator"):  # PPO with a critic
        rc.trl_kwargs(rc.side_config("gsm8k-offline", "ours", 0), "out")
    with pytest.raises(ValueError, match="ppo.kl_coef"):  # GRPO, but its KL in the reward: TRL has it in the loss
        rc.trl_kwargs(rc.side_config("imdb-offline", "ours", 0), "out")


@pytest.mark.slow
def test_trl_gets_our_lora_our_clipped_reward_and_a_valid_grpo_config(tmp_path):
    from trl import GRPOConfig

    import race_child
    from rlhf_app.models import policy as models

    for recipe in rc.TARGETS:  # the full settings (gsm8k-offline's bf16 on CPU included) are valid GRPOConfigs
        full = rc.side_config(recipe, "trl", 0)
        args = GRPOConfig(**rc.trl_kwargs(full, str(tmp_path)))
        assert args.generation_batch_size == full.ppo.local_batch_size and args.bf16 == full.ppo.bf16
    cfg = rc.side_config("imdb-offline", "trl", 0, quick=True)
    args = GRPOConfig(**rc.trl_kwargs(cfg, str(tmp_path)))
    # imdb-offline is GRPO with 8 responses a prompt: TRL's groups are the recipe's own.
    assert args.generation_batch_size == cfg.ppo.local_batch_size
    assert args.num_generations == cfg.algorithm.group_size == 8
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from rlhf_app.assets.registry import resolve

    model, _ = models.build_models(cfg)
    # What GRPOTrainer does with peft_config: get_peft_model on the plain model.
    trl_policy = get_peft_model(AutoModelForCausalLM.from_pretrained(resolve(cfg.model.name_or_path)),
                                models.lora_config(cfg.peft))
    ours, theirs = model.policy.peft_config["default"], trl_policy.peft_config["default"]
    for key in ("r", "lora_alpha", "lora_dropout", "target_modules", "task_type"):
        assert getattr(theirs, key) == getattr(ours, key), key
    shapes = [{k: v.shape for k, v in get_peft_model_state_dict(m).items()} for m in (model.policy, trl_policy)]
    assert shapes[0] == shapes[1] and len(shapes[0]) > 0  # a TRL snapshot loads into the evaluation's policy
    toy = rc.side_config("imdb-offline", "trl", 0, quick=True, extra=["reward.name=toy", "reward.funcs=[]",
                                                                        "ppo.reward_clip=0.3", "reward.target=a"])
    reward = race_child.trl_reward(toy, "cpu")
    assert reward(prompts=["x", "y"], completions=["aaaa", "ab"], completion_ids=[[1], [2]]) == [0.3, 0.3]
    assert reward(prompts=["x"], completions=["abcde"]) == [pytest.approx(0.2)] and reward.__name__ == "toy"


# ---------------------------------------------------------------- the whole race, tiny

@pytest.mark.slow
@pytest.mark.bench
def test_a_quick_race_runs_every_side_and_recipe(tmp_path):
    out = tmp_path / "race.json"
    proc = subprocess.run([sys.executable, str(BENCH / "race.py"), "--quick", "--threads", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    for recipe, (metric, _) in rc.TARGETS.items():
        rec = doc["recipes"][recipe]
        assert sorted(rec["runs"]) == sorted(rc.SIDES)
        for side, by_seed in rec["runs"].items():
            run = by_seed["0"]
            assert run["points"][0]["update"] == 0 and len(run["points"]) >= 2  # the start, then each update
            assert all(metric in p["all"] for p in run["points"]) and run["train_s"] > 0
            times = [p["time_s"] for p in run["points"]]
            assert times == sorted(times)
            assert run["host"] == outputs.host()  # the CPU that trained it, from its spec
        assert rec["summary"]["start_equal_across_sides"] is True  # one evaluation, one base model
        assert "grpo_config" in rec["runs"]["trl"]["0"]["settings"]
        assert set(rec["summary"]["pairs"]) == {"ours vs trl", "ours-grpo vs trl", "ours vs ours-grpo"}
