"""`rlhf-app pairs`: a policy's completions labelled by a function, best against worst, in TRL's preference
format with a margin; read unchanged by `rlhf-app rm` and TRL's RewardTrainer; a pipeline stage (pairs -> rm
-> ppo); bad inputs one line."""

import json
from pathlib import Path

import pytest

from rlhf_app.cli.main import main as cli
from rlhf_app.config import ConfigError, load_config
from rlhf_app.stages.pairs import PairsError, make_pairs

# A labeller counting the letter "a", which logs every completion it scores (in order) beside itself.
LABELLER = '''
import json, pathlib

LOG = pathlib.Path(__file__).with_name("labelled.jsonl")


def count_a(completions, **kwargs):
    with LOG.open("a") as f:
        for c in completions:
            f.write(json.dumps({"completion": c, "score": c.count("a")}) + "\\n")
    return [float(c.count("a")) for c in completions]


def none_for_some(completions, prompts, **kwargs):
    return [None if i % 3 else 1.0 for i, c in enumerate(completions)]
'''


def _labeller(tmp_path) -> Path:
    path = tmp_path / "labeller.py"
    path.write_text(LABELLER)
    return path


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ---- the pairing rule, by hand

ROWS = [{"prompt": "p0"}, {"prompt": "p1"}, {"prompt": "p2"}]
COMPLETIONS = ["a", "aaa", "aa", "x", "y", "z", "b", "bb", "bbb"]
SCORES = [1.0, 3.0, 2.0, 5.0, 5.0, 5.0, 0.5, 0.5, 0.25]


def test_best_against_worst_with_the_score_difference_as_margin_and_ties_dropped():
    pairs, counts = make_pairs(ROWS, COMPLETIONS, SCORES, 3)
    assert pairs == [{"prompt": "p0", "chosen": "aaa", "rejected": "a", "margin": 2.0},
                     # equal best scores: the first sampled is chosen; equal worst: the last sampled is rejected
                     {"prompt": "p2", "chosen": "b", "rejected": "bbb", "margin": 0.25}]
    assert counts == {"ties": 1, "unscored": 0}  # p1: all three scored 5


def test_a_tie_threshold_and_kept_ties():
    pairs, counts = make_pairs(ROWS, COMPLETIONS, SCORES, 3, tie_threshold=0.25)
    assert [p["prompt"] for p in pairs] == ["p0"] and counts["ties"] == 2
    kept, _ = make_pairs(ROWS, COMPLETIONS, SCORES, 3, tie_threshold=0.25, keep_ties=True)
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in kept] == [
        ("aaa", "a", 2.0), ("x", "z", 0.0), ("b", "bbb", 0.25)]


def test_unscored_completions_are_left_out_and_a_prompt_needs_two_scores():
    pairs, counts = make_pairs(ROWS[:1], ["a", "aaa", "aa"], [1.0, None, 2.0], 3)
    assert pairs == [{"prompt": "p0", "chosen": "aa", "rejected": "a", "margin": 1.0}] and counts["unscored"] == 1
    with pytest.raises(PairsError, match=r"returned None for 2 of the 3 completions of prompt 0 \('p0'\)"):
        make_pairs(ROWS[:1], ["a", "aaa", "aa"], [None, None, 2.0], 3, labeller="count_a")


def test_conversational_prompts_give_trls_conversational_format():
    from trl.data_utils import is_conversational

    messages = [{"role": "user", "content": "say a"}]
    pairs, _ = make_pairs([{"prompt": "<rendered>", "prompt_messages": messages}], ["a", "aa"], [1.0, 2.0], 2)
    assert pairs == [{"prompt": messages, "chosen": [{"role": "assistant", "content": "aa"}],
                      "rejected": [{"role": "assistant", "content": "a"}], "margin": 1.0}]
    assert is_conversational(pairs[0])


# ---- on the tiny model

def test_pairs_of_the_tiny_policy_labelled_by_a_function_then_read_by_trls_reward_trainer(tmp_path):
    labeller = _labeller(tmp_path)
    out = tmp_path / "pairs"
    cli(["pairs", "recipe=tiny", f"output_dir={out}", f"reward.funcs=[{labeller}:count_a]", "data.num_train=24",
         "--num_generations", "4"])
    pairs, summary = _read(out / "final" / "pairs.jsonl"), json.loads((out / "pairs_summary.json").read_text())
    labelled = _read(tmp_path / "labelled.jsonl")  # every completion the labeller saw, 4 per prompt in order
    assert len(labelled) == 24 * 4
    groups = [labelled[i:i + 4] for i in range(0, len(labelled), 4)]
    expected = [(max(g, key=lambda r: r["score"]), min(g, key=lambda r: r["score"])) for g in groups]
    expected = [(b, w) for b, w in expected if b["score"] > w["score"]]  # ties dropped (tie_threshold 0)
    assert len(pairs) == len(expected) >= 2 and summary["ties"] == 24 - len(pairs)
    for pair, (best, worst) in zip(pairs, expected):
        assert set(pair) == {"prompt", "chosen", "rejected", "margin"}
        assert pair["chosen"].count("a") == best["score"] > pair["rejected"].count("a") == worst["score"]
        assert pair["margin"] == pair["chosen"].count("a") - pair["rejected"].count("a")
    assert summary["pairs"] == len(pairs) and summary["ties_dropped"] == summary["ties"]
    assert summary["mean_margin"] == pytest.approx(sum(p["margin"] for p in pairs) / len(pairs))
    assert load_config([f"recipe={out / 'config.yaml'}"], stage="pairs").pairs.num_generations == 4

    # TRL's RewardTrainer prepares the file as it is: tokenized pairs, the margin kept
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from rlhf_app.assets.registry import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("asset:tiny"))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    dataset = load_dataset("json", data_files=str(out / "final" / "pairs.jsonl"), split="train")
    trainer = RewardTrainer(model=resolve("asset:tiny"), processing_class=tokenizer, train_dataset=dataset,
                            args=RewardConfig(output_dir=str(tmp_path / "trl"), report_to="none", bf16=False,
                                              max_steps=1))
    prepared = trainer.train_dataset
    assert len(prepared) == len(pairs) and {"chosen_ids", "rejected_ids", "margin"} <= set(prepared.column_names)
    assert prepared["margin"] == [p["margin"] for p in pairs]


def test_bad_pairs_inputs_are_one_line(tmp_path, one_line_error):
    labeller = _labeller(tmp_path)
    one_row = tmp_path / "one.jsonl"
    one_row.write_text(json.dumps({"prompt": "only one"}) + "\n")
    base = ["pairs", "recipe=tiny"]
    message = one_line_error([*base, f"output_dir={tmp_path / 'a'}", "pairs.num_generations=1"])
    assert "pairs.num_generations must be >= 2" in message
    message = one_line_error([*base, f"output_dir={tmp_path / 'b'}", f"data.name={one_row}"])
    assert "has 1 row: too few" in message
    message = one_line_error([*base, f"output_dir={tmp_path / 'c'}", "reward.funcs=[labeler.py:count_a]"])
    assert "does not exist" in message
    for name in ("a", "b", "c"):
        assert not (tmp_path / name).exists()  # refused before the run folder (and any model)
    with pytest.raises(ConfigError, match="set pairs.tie_threshold >= 0"):
        load_config(["recipe=tiny", "pairs.tie_threshold=-1"], stage="pairs")
    # None for a whole prompt's completions: one line, and no pairs file
    message = one_line_error([*base, f"output_dir={tmp_path / 'd'}", "data.num_train=4",
                              f"reward.funcs=[{labeller}:none_for_some]"])
    assert "returned None for 1 of the 2 completions of prompt 0" in message
    assert not (tmp_path / "d" / "final").exists()


@pytest.mark.slow
def test_pairs_rm_ppo_pipeline_and_a_rerun_is_refused_or_replaces(tmp_path, capsys, one_line_error):
    labeller = _labeller(tmp_path)
    out = tmp_path / "pipe"
    argv = ["pipeline", "recipe=tiny", f"output_dir={out}", "stages=[pairs,rm,ppo]",
            f"per_stage.pairs.reward.funcs=[{labeller}:count_a]", "per_stage.pairs.data.num_train=48",
            "pairs.num_generations=4", "rm.dataset=stage:pairs", "rm.max_steps=4", "reward.funcs=[stage:rm]",
            "ppo.total_episodes=64", "eval_before_after=false"]
    cli(argv)
    pairs = _read(out / "pairs" / "final" / "pairs.jsonl")
    rm_eval = json.loads((out / "rm" / "rm_eval.json").read_text())
    assert rm_eval["pairs"] >= 1 and len(pairs) > rm_eval["pairs"]  # rm read the pairs stage's file
    assert load_config([f"recipe={out / 'rm' / 'config.yaml'}"], stage="rm").rm.dataset == str(out / "pairs" / "final")
    assert "rewards/rm/mean" in _read(out / "ppo" / "metrics.jsonl")[-1]
    assert "pairs of 48 prompts" in (out / "report.html").read_text()
    capsys.readouterr()
    cli(argv)  # the same command again: every stage finished
    assert "every stage has finished" in capsys.readouterr().out
    # the pairs stage alone: a finished folder is refused, replaced only when asked
    stage = ["pairs", "recipe=tiny", f"output_dir={out / 'pairs'}", f"reward.funcs=[{labeller}:count_a]",
             "data.num_train=8"]
    assert "holds another run" in one_line_error(stage)
    assert "nothing to continue" in one_line_error([*stage, "resume_from=auto"])
    cli([*stage, "overwrite_output_dir=true"])
    assert json.loads((out / "pairs" / "pairs_summary.json").read_text())["prompts"] == 8


@pytest.fixture(scope="module", autouse=True)
def vllm_pairs(beside, tmp_path_factory):
    """The vLLM test's run (scripts/pairs.py), started as this module begins if that test is selected (conftest's
    beside): it samples on the second core while the tests before it run here; no assertion reads a timing."""
    import importlib.util
    import sys

    if importlib.util.find_spec("vllm") is None:
        return None  # the test skips
    base, root = tmp_path_factory.mktemp("vllm-pairs"), Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "scripts" / "pairs.py"), "recipe=tiny", f"output_dir={base / 'pairs'}",
           "rollout.engine=vllm", f"reward.funcs=[{_labeller(base)}:count_a]", "data.num_train=16",
           "pairs.num_generations=3"]
    return base, beside("vllm-pairs", cmd, for_tests=("test_pairs_sampled_by_the_vllm_engine",), cwd=root)


@pytest.mark.slow
def test_pairs_sampled_by_the_vllm_engine(vllm_pairs):
    pytest.importorskip("vllm")
    tmp_path, run = vllm_pairs
    run.ok()
    out = tmp_path / "pairs"
    labelled, pairs = _read(tmp_path / "labelled.jsonl"), _read(out / "final" / "pairs.jsonl")
    groups = [labelled[i:i + 3] for i in range(0, len(labelled), 3)]
    assert len(groups) == 16 and any(len({r["completion"] for r in g}) > 1 for g in groups)  # k samples, not copies
    expected = [(max(r["score"] for r in g), min(r["score"] for r in g)) for g in groups]
    expected = [(b, w) for b, w in expected if b > w]
    assert [(p["chosen"].count("a"), p["rejected"].count("a"), p["margin"]) for p in pairs] == \
        [(b, w, b - w) for b, w in expected]
