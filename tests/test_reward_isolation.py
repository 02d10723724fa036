"""Rewards cannot corrupt each other or the logs (issue 24, case 7 and Must-have 5): each reward gets its
own copies of its arguments; sys.exit, a KeyboardInterrupt of its own and scores too large to train on
end in one line naming the reward; a non-finite update names the reward that caused it."""

import json
import signal

import pytest
from transformers import TrainerState

from rlhf_app.data.columns import CONVERSATION_COLUMN
from rlhf_app.failures import explain
from rlhf_app.rewards import RewardError, build_reward
from rlhf_app.rl.metrics import NonFiniteError

REWARDS = '''
import json, os, signal, sys

def mutate(prompts, completions, completion_ids, trainer_state, key, **kwargs):
    prompts.reverse()
    completions[0] = "MUTATED"
    completion_ids[0].append(-1)
    key[0] = "MUTATED"
    trainer_state.global_step = -5
    for p in kwargs.get("prompt_messages") or []:
        p[0]["content"] = "MUTATED"
    return [0.0] * len(completions)

def record(prompts, completions, completion_ids, trainer_state, key, **kwargs):
    with open(os.environ["RECORD_TO"], "a") as f:
        f.write(json.dumps({"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                            "key": key, "step": trainer_state.global_step,
                            "messages": kwargs.get("prompt_messages")}) + "\\n")
    return [float(len(c) % 3) for c in completions]

def exits(completions, **kwargs):
    sys.exit(3)

def interrupts(completions, **kwargs):
    raise KeyboardInterrupt

def ctrl_c(completions, **kwargs):
    signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C while this reward ran
    return [0.0] * len(completions)

def huge(completions, **kwargs):
    return [1e39] * len(completions)

def large(completions, **kwargs):
    return [1e30 * (len(c) % 2) for c in completions]
'''


@pytest.fixture()
def reward_file(tmp_path, monkeypatch):
    path = tmp_path / "rewards.py"
    path.write_text(REWARDS)
    monkeypatch.setenv("RECORD_TO", str(tmp_path / "record.jsonl"))
    return path


def _recorded(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]


def test_a_mutating_reward_reaches_neither_the_next_reward_nor_the_caller(reward_cfg, reward_file, tmp_path):
    fn = build_reward(reward_cfg(funcs=[f"{reward_file}:mutate", f"{reward_file}:record"]))
    prompts, completions, ids, key = ["p0", "p1", "p2"], ["c0", "c1", "c2"], [[1], [2], [3]], ["p0", "p1", "p2"]
    messages = [[{"role": "user", "content": p}] for p in prompts]
    fn(prompts, completions, completion_ids=ids, trainer_state=TrainerState(global_step=7), key=key,
       **{CONVERSATION_COLUMN: messages})
    seen = _recorded(tmp_path)[0]
    # The second reward gets the conversations (TRL's form) as its prompts, and everything as it was.
    assert [m[0]["content"] for m in seen["prompts"]] == ["p0", "p1", "p2"]
    assert seen["completions"] == [[{"role": "assistant", "content": c}] for c in ["c0", "c1", "c2"]]
    assert seen["completion_ids"] == [[1], [2], [3]] and seen["key"] == ["p0", "p1", "p2"] and seen["step"] == 7
    # The caller's lists (what samples.jsonl and eval.json are written from) are untouched.
    assert prompts == ["p0", "p1", "p2"] and completions == ["c0", "c1", "c2"] and ids == [[1], [2], [3]]
    assert key == ["p0", "p1", "p2"] and messages[0][0]["content"] == "p0"


def test_a_mutating_reward_leaves_the_samples_and_eval_logs_alone(train_tiny, reward_file, tmp_path):
    data = tmp_path / "prompts.jsonl"
    words = "the movie was a story about an actor who said that this film".split()
    data.write_text("".join(json.dumps({"prompt": f"{a} {b}", "key": f"{a} {b}"}) + "\n"
                            for a in words for b in words[:6]))
    out = tmp_path / "run"
    train_tiny(out, f"data.name={data}", f"reward.funcs=[{reward_file}:mutate,{reward_file}:record]",
               "ppo.total_episodes=32", "sample_every=1", "data.num_eval=8")
    calls = _recorded(tmp_path)
    assert calls and all(c["prompts"] == c["key"] and "MUTATED" not in c["completions"] and c["step"] >= 0
                         and all(-1 not in ids for ids in c["completion_ids"]) for c in calls)
    pairs = {(p, c) for call in calls for p, c in zip(call["prompts"], call["completions"])}
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    evals = json.loads((out / "eval.json").read_text())
    logged = samples + evals["before"]["samples"] + evals["after"]["samples"]
    assert samples and all((r["prompt"], r["completion"]) in pairs for r in logged)


@pytest.mark.parametrize("name, expected", [
    ("exits", "reward 'exits' called sys.exit(3)"),
    ("interrupts", "reward 'interrupts' raised KeyboardInterrupt itself (no Ctrl-C was pressed)"),
    ("huge", "reward 'huge' returned 1e+39 for completion 0 'c0', beyond float32's range"),
])
def test_a_reward_that_exits_interrupts_or_overflows_is_one_line_naming_it(reward_cfg, reward_file, name, expected):
    fn = build_reward(reward_cfg(funcs=["toy", f"{reward_file}:{name}"]))
    with pytest.raises(RewardError) as err:
        fn(["p0", "p1"], ["c0", "c1"])
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_the_users_ctrl_c_during_a_reward_is_still_a_ctrl_c(reward_cfg, reward_file):
    fn = build_reward(reward_cfg(funcs=[f"{reward_file}:ctrl_c"]))
    # Python's own handler, set here: in one loaded full-suite run the handler an earlier test left did not raise
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):  # the user's Ctrl-C passes as one
            fn(["p0"], ["c0"])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler in place is restored
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_non_finite_update_names_the_reward_whose_scores_overflow(reward_cfg, reward_file, tiny_cfg):
    fn = build_reward(reward_cfg(funcs=["toy", f"{reward_file}:record"], weights=[1.0, 1e25]))
    fn(["p0", "p1"], ["c0", "c1"], completion_ids=[[1], [2]], trainer_state=TrainerState(), key=["p0", "p1"])
    message = explain(NonFiniteError("non-finite loss/value_avg at update 3"), tiny_cfg(), fn.largest)
    assert "reward 'record' scored up to 2e+25 (times its weight)" in message and "overflows" in message
    scaled = tiny_cfg("ppo.reward_scale=1e25")
    message = explain(NonFiniteError("non-finite loss/value_avg at update 3"), scaled, {"toy": 2.0})
    assert "ppo.reward_scale=1e+25 takes the scores of reward 'toy' (up to 2) to 2e+25" in message
    small = build_reward(reward_cfg(funcs=["toy"]))
    small(["p0"], ["aaa"])
    message = explain(NonFiniteError("non-finite loss/value_avg at update 3"), tiny_cfg(), small.largest)
    assert "the largest |score| was" in message and "Lower ppo.learning_rate" in message


def test_a_training_run_that_diverges_on_large_scores_names_the_reward(reward_file, tmp_path, capsys):
    from rlhf_app.cli.main import main

    with pytest.raises(SystemExit) as info:
        main(["train", "recipe=tiny", f"output_dir={tmp_path}/run", "eval_before_after=false",
              "ppo.total_episodes=32", f"reward.funcs=[toy,{reward_file}:large]"])
    message = str(info.value.code)
    assert message.startswith("error: non-finite ") and "\n" not in message
    assert "reward 'large' scored up to 1e+30" in message and "ppo.learning_rate" not in message
