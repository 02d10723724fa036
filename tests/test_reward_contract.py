"""TRL's reward contract, whole: what a reward function receives (prompts, conversational
completions, completion_ids, trainer_state, columns by name, log_extra / log_metric), None
handling and weights on hand-computed numbers, trl.rewards functions in a real training update
with eval_steps rows, and every bad reward source or output as one line before models load."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerState

from rlhf_app import run as cli
from rlhf_app.config import load_config
from rlhf_app.rl.rollout import RewardLog, Rollout, score
from rlhf_app.data.columns import CONVERSATION_COLUMN
from rlhf_app.rewards import build_reward, resolve_sources

import warm

REWARDS = '''
CALLS = []

def record(prompts, completions, completion_ids, trainer_state, log_metric, log_extra, **columns):
    CALLS.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                  "step": trainer_state.global_step, "max_steps": trainer_state.max_steps, "columns": columns})
    log_metric("my/metric", 2.0)
    log_extra("my_column", ["x"] * len(completions))
    if "{out}":
        with open("{out}", "a") as f:
            f.write(__import__("json").dumps(CALLS[-1]) + "\\n")
    return [0.0] * len(completions)

def first(completions, **kwargs):
    return [1.0, None, None]

def second(completions, **kwargs):
    return [2.0, 4.0, None]

def no_kwargs(prompts, completions):
    return [0.0] * len(completions)

def needs_solution(completions, solution, **kwargs):
    return [0.0] * len(completions)

def as_dict(completions, **kwargs):
    return {"a": 1.0}

def as_strings(completions, **kwargs):
    return ["1.0"] * len(completions)

def as_2d(completions, **kwargs):
    import numpy
    return numpy.zeros((len(completions), 2))
'''


def reward_file(tmp_path, out="") -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARDS.replace("{out}", str(out)))
    return path


def rollout(columns) -> Rollout:
    response = torch.tensor([[5, 6, 1, 0], [7, 0, 0, 0], [8, 8, 8, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float)
    return Rollout(None, None, response, mask, torch.tensor([True, False, False]), ["p0 ", "p1 ", "p2 "],
                   ["aa", "b", "a b"], columns)


def test_a_reward_gets_trls_arguments_and_conversational_completions(tmp_path):
    path = reward_file(tmp_path)
    cfg = load_config([f"reward.funcs=[{path}:record,toy]"])
    sources = resolve_sources(cfg)
    fn = build_reward(cfg, sources=sources)
    messages = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    log = RewardLog()
    scores = score(fn, rollout({CONVERSATION_COLUMN: messages, "answer": ["1", "2", "3"]}), "cpu",
                   TrainerState(global_step=3, max_steps=9), log)
    call = sources[0].fn.__globals__["CALLS"][-1]
    assert call["prompts"] == messages  # the conversations, as TRL passes them
    assert call["completions"] == [[{"role": "assistant", "content": c}] for c in ("aa", "b", "a b")]
    assert call["completion_ids"] == [[5, 6, 1], [7], [8, 8, 8, 8]]  # up to and including the stop token
    assert (call["step"], call["max_steps"]) == (3, 9)
    assert call["columns"] == {"answer": ["1", "2", "3"]}
    # toy (a built-in) reads text: share of "a" = [1, 0, 1/3]; record scores 0; weights 1, 1.
    assert scores.tolist() == pytest.approx([1.0, 0.0, 1 / 3])
    means = log.means()
    assert means["rewards/my/metric"] == 2.0 and means["rewards/toy/mean"] == pytest.approx(4 / 9)
    assert log.extra["my_column"] == ["x"] * 3 and log.extra["rewards/record"] == [0.0] * 3
    text = score(fn, rollout({"answer": ["1", "2", "3"]}), "cpu")  # text prompts stay text
    assert sources[0].fn.__globals__["CALLS"][-1]["prompts"] == ["p0 ", "p1 ", "p2 "]
    assert sources[0].fn.__globals__["CALLS"][-1]["completions"] == ["aa", "b", "a b"]
    assert text.tolist() == scores.tolist()


def test_none_is_skipped_and_weights_multiply(tmp_path, capsys):
    path = reward_file(tmp_path)
    cfg = load_config([f"reward.funcs=[{path}:first,{path}:second]", "reward.weights=[0.5,2.0]"])
    log = RewardLog()
    scores = score(build_reward(cfg), rollout({}), "cpu", None, log)
    # episode 0: 0.5*1 + 2*2 = 4.5; episode 1: first is None -> 2*4 = 8; episode 2: both None -> 0
    assert scores.tolist() == [4.5, 8.0, 0.0]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("reward:")]
    assert len(lines) == 1 and "(first, second) returned None for 1 of 3 episodes, e.g. episode 2" in lines[0]
    means = log.means()
    assert means["rewards/first/mean"] == 1.0 and means["rewards/first/std"] == 0.0
    assert means["rewards/second/mean"] == 3.0 and means["rewards/second/std"] == pytest.approx(math.sqrt(2))
    assert log.extra["rewards/first"][0] == 1.0 and math.isnan(log.extra["rewards/first"][1])


CHAT = "{% for m in messages %}{{ m['content'] }}. {% endfor %}{% if add_generation_prompt %}a {% endif %}"


@pytest.fixture(scope="module")
def chat_policy(tmp_path_factory):
    """asset:tiny with a chat template, and a jsonl of conversational prompts with a `solution` column."""
    import shutil

    from transformers import AutoTokenizer

    from rlhf_app.assets.registry import resolve

    folder = tmp_path_factory.mktemp("chat-tiny") / "policy"
    shutil.copytree(resolve("asset:tiny"), folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT
    tokenizer.save_pretrained(folder)
    prompts = folder.parent / "prompts.jsonl"
    words = "the movie was a story about an actor who said this film is not bad".split()
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": " ".join(words[i % 9:i % 9 + 3])}],
                                           "solution": str(i) if i % 2 else "no math here"}) + "\n"
                               for i in range(40)))
    return folder, prompts


def test_trl_rewards_train_with_eval_steps(chat_policy, tmp_path):
    """Every function of trl.rewards in real updates, eval every update: think_format_reward and the
    math_verify ones need conversational completions, the length ones completion_ids, and
    accuracy_reward / get_cosine_scaled_reward return None where the gold `solution` does not parse."""
    policy, prompts = chat_policy
    calls = tmp_path / "calls.jsonl"
    funcs = ["trl.rewards:think_format_reward",
             "'trl.rewards:get_soft_overlong_punishment(max_completion_len=12, soft_punish_cache=6)'",
             "'trl.rewards:get_repetition_penalty_reward(ngram_size=2)'", f"{reward_file(tmp_path, calls)}:record",
             "trl.rewards:accuracy_reward", "trl.rewards:reasoning_accuracy_reward",
             "'trl.rewards:get_cosine_scaled_reward(max_len=16)'"]
    cfg = load_config(["recipe=tiny", f"output_dir={tmp_path / 'run'}", f"model.name_or_path={policy}",
                       f"data.name={prompts}", f"reward.funcs=[{','.join(funcs)}]", "reward.weights=[1,1,0.5,1,1,1,1]",
                       "ppo.total_episodes=64", "eval_steps=1", "data.num_eval=4", "eval_before_after=false",
                       "sample_every=1"])
    cli.run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_calls = [c for c in map(json.loads, calls.read_text().splitlines()) if len(c["completions"]) == 32]
    assert [r["step"] for r in rows] == [1, 2] and [c["step"] for c in train_calls] == [0, 1]
    for row, call in zip(rows, train_calls):
        lengths = [len(ids) for ids in call["completion_ids"]]
        overlong = [0.0 if n <= 6 else (6 - n) / 6 if n <= 12 else -1.0 for n in lengths]
        assert row["rewards/soft_overlong_punishment_reward/mean"] == pytest.approx(sum(overlong) / len(overlong))
        assert row["rewards/think_format_reward/mean"] == 0.0  # the tiny policy writes no <think>
        assert -1.0 <= row["rewards/repetition_penalty_reward/mean"] <= 0.0
        # No tiny-policy completion holds a right answer: 0 over the parseable golds, None for the rest,
        # so the cosine reward is the wrong-answer schedule over those episodes only (TRL's nanmean).
        assert row["rewards/accuracy_reward/mean"] == row["rewards/reasoning_accuracy_reward/mean"] == 0.0
        parsed = [n for n, gold in zip(lengths, call["columns"]["solution"]) if gold != "no math here"]
        cosine = [-0.5 - 0.25 * (1 + math.cos(min(n / 16, 1.0) * math.pi)) for n in parsed]
        assert 0 < len(parsed) < 32
        assert row["rewards/cosine_scaled_reward/mean"] == pytest.approx(sum(cosine) / len(cosine))
        assert row["rewards/my/metric"] == 2.0
        assert call["completions"][0][0]["role"] == "assistant" and call["prompts"][0][0]["role"] == "user"
        assert len(call["columns"]["solution"]) == 32
        assert {"eval/mean_score", "eval/rewards/soft_overlong_punishment_reward/mean"} <= set(row)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert "rewards/think_format_reward" in samples[0]
    assert any(math.isnan(s["rewards/accuracy_reward"]) for s in samples)  # None kept as NaN per episode
    report = (tmp_path / "run" / "report.html").read_text()
    assert "rewards/soft_overlong_punishment_reward/mean" in report and "eval/mean_score" in report


@pytest.fixture()
def text_data(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"question": "the movie", "answer": "1"}\n' * 40)
    (tmp_path / "p.jsonl").write_text('{"prompt": "the movie", "answer": "1"}\n' * 40)
    (tmp_path / "chat.jsonl").write_text('{"prompt": [{"role": "user", "content": "hi"}]}\n' * 40)
    return tmp_path


def _train_argv(argv: list[str]) -> list[str]:
    """`rlhf-app train` of the tiny recipe with ARGV, into a run folder of its own (a refused run must never
    touch the checkout's runs/)."""
    import tempfile

    return ["train", "recipe=tiny", "eval_before_after=false", "ppo.total_episodes=32",
            f"output_dir={tempfile.mkdtemp(prefix='rlhf_app-refused-')}/run", *argv]


@pytest.mark.parametrize("argv, expected", [
    (["data.name={d}/q.jsonl"], "data.prompt_column='prompt' is not a column of {d}/q.jsonl: its columns are "
                                "question, answer"),
    (["data.name={d}/chat.jsonl"], "holds conversations but the policy tokenizer has no chat template"),
    (["reward.funcs=[{f}:nope]"], "defines no 'nope'; its functions are: as_2d, as_dict"),
    (["reward.funcs=[{d}/missing.py:f]"], "missing.py does not exist"),
    (["reward.funcs=[no_such_module_xyz:f]"], "cannot import module no_such_module_xyz: ModuleNotFoundError"),
    (["reward.funcs=[trl.rewards:no_such_reward]"], "module trl.rewards has no function 'no_such_reward'"),
    (["reward.funcs=[{f}:no_kwargs]"], "takes no **kwargs"),
    (["data.name={d}/p.jsonl", "reward.funcs=[{f}:needs_solution]"],
     "needs the dataset column(s) solution; the dataset's columns are answer"),
    (["reward.funcs=[toy,toy]", "reward.weights=[1.0]"],
     "reward.weights has 1 entries for 2 reward functions"),
    (["'reward.funcs=[\"trl.rewards:get_soft_overlong_punishment(max_completion_len=x)\"]'"], "must be literals"),
])
def test_bad_inputs_fail_in_one_line_before_models_load(one_line_error, text_data, argv, expected):
    f = reward_file(text_data)
    argv = [a.format(d=text_data, f=f).strip("'") for a in argv]
    assert expected.format(d=text_data) in one_line_error(_train_argv(argv), models_may_load=False)


@pytest.mark.parametrize("name, expected", [("as_dict", "returned a dict (keys a)"), ("as_strings", "returned a str"),
                                            ("as_2d", "returned a 2-D ndarray of shape (32, 2)")])
def test_bad_reward_outputs_fail_in_one_line(one_line_error, tmp_path, name, expected):
    argv = [f"output_dir={tmp_path}/run", f"reward.funcs=[{reward_file(tmp_path)}:{name}]"]
    message = one_line_error(_train_argv(argv))
    assert f"reward '{name}' {expected}" in message


@pytest.mark.slow  # a fresh interpreter: what the user sees on stderr
def test_a_bad_reward_source_prints_no_traceback(tmp_path):
    result = warm.run([sys.executable, "scripts/train.py", "recipe=tiny", f"output_dir={tmp_path}",
                       "reward.funcs=[no_such_module_xyz:f]"], capture_output=True, text=True,
                      cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: reward source 'no_such_module_xyz:f'")
