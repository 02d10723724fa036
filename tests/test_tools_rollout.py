"""Tool episodes in the rollout (issue 23): the tiny model (tool_fixtures.py) calls a toy tool through the
chat template, the results go back as tool messages, and the rollout marks what the policy wrote; a raising,
a hanging, a malformed and an unknown call are failed calls the model is told about, never a crash."""

import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhf_app import rewards
from rlhf_app.config import load_config
from rlhf_app.engines.hf import generate
from rlhf_app.engines.tool_specs import ToolSpecError, resolve_tools, reward_sources
from rlhf_app.engines.tools import tool_loop
from rlhf_app.models.policy import load_tokenizer
from rlhf_app.rl.logs import episode_text
from rlhf_app.rl.rollout import score
from tool_fixtures import NOBODY, RIGHT, WRONG, write_tools

ENV = '''
class Words:
    def reset(self, **row):
        self.asked = []
        return HINT

    def lookup(self, key: str) -> str:
        """Look a word up.

        Args:
            key: the word to look up
        """
        self.asked.append(key)
        return "banana"

    def get_reward(self) -> float:
        return float(len(self.asked))


HINT = None


class Hinting(Words):
    def reset(self, **row):
        super().reset(**row)
        return " now"
'''
pytestmark = pytest.mark.slow  # the tool model is taught its conversations first (conftest tool_model, ~10 s)
ZERO = "def zero(completions, **kwargs):\n    return [0.0] * len(completions)\n"


@pytest.fixture(scope="module")
def policy(tool_model):
    return AutoModelForCausalLM.from_pretrained(tool_model).eval()


def _cfg(tool_model, *overrides):
    return load_config(["recipe=tiny", f"model.name_or_path={tool_model}", "ppo.response_length=128",
                        "ppo.do_sample=false", *overrides])


def _episodes(cfg, policy, prompts):
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    rows = [{"prompt": p, "input_ids": tokenizer(p)["input_ids"]} for p in prompts]
    return generate(policy, tokenizer, rows, cfg.ppo, "cpu", greedy=True, tools=tool_loop(cfg, tokenizer)), tokenizer


def _text(tokenizer, rollout, i, keep=None):
    """Episode i's response tokens (where `keep` is 1, default: every real token) as text."""
    keep = rollout.mask[i] if keep is None else keep
    return tokenizer.decode(rollout.response[i][keep.bool()])


def test_the_model_calls_the_tool_and_goes_on_with_its_result(tool_model, policy, tmp_path):
    cfg = _cfg(tool_model, f"tools=[{write_tools(tmp_path, 'good')}]")
    rollout, tokenizer = _episodes(cfg, policy, [RIGHT])
    assert rollout.prompts == ["tools lookup. q say the word. a "]  # the tools shown by the chat template
    assert _text(tokenizer, rollout, 0) == "call lookup key is fruit!<eos> r banana. a banana<eos>"
    tool_only = rollout.mask[0] * (1 - rollout.tool_mask[0])
    assert _text(tokenizer, rollout, 0, tool_only) == " r banana. a "  # the tool turn: not the policy's
    assert _text(tokenizer, rollout, 0, rollout.mask[0] * rollout.tool_mask[0]) == \
        "call lookup key is fruit!<eos>banana<eos>"
    assert rollout.contains_stop.tolist() == [True]
    assert rollout.columns["conversation"][0] == [
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "lookup", "arguments": {"key": "fruit"}}}]},
        {"role": "tool", "name": "lookup", "content": "banana"},
        {"role": "assistant", "content": "banana"}]
    assert (rollout.columns["tool_calls"], rollout.columns["tool_failures"]) == ([1], [0])
    assert episode_text(rollout.columns["conversation"][0]) == \
        "assistant: -> lookup({'key': 'fruit'})\ntool lookup: banana\nassistant: banana"


def test_a_raising_tool_returns_its_error_and_the_episode_goes_on(tool_model, policy, tmp_path):
    cfg = _cfg(tool_model, f"tools=[{write_tools(tmp_path, 'raising')}]")
    rollout, tokenizer = _episodes(cfg, policy, [RIGHT])
    assert rollout.columns["conversation"][0][1] == {"role": "tool", "name": "lookup",
                                                     "content": "{'error': 'no such word'}"}
    assert (rollout.columns["tool_calls"], rollout.columns["tool_failures"]) == ([1], [1])
    after_tool = rollout.tool_mask[0][(rollout.tool_mask[0] == 0).nonzero().max() + 1:]
    assert after_tool[:1].tolist() == [1.0]  # the policy answered after the error


@pytest.mark.parametrize("isolation", ["none", "process"])
def test_a_hanging_tool_is_stopped_after_tool_timeout(tool_model, policy, tmp_path, isolation):
    cfg = _cfg(tool_model, f"tools=[{write_tools(tmp_path, 'hanging')}]", "tool_timeout=0.5",
               f"tool_isolation={isolation}")
    start = time.perf_counter()
    for _ in range(2):  # the second batch runs after the first call was stopped (a new subprocess)
        rollout, _ = _episodes(cfg, policy, [RIGHT])
        assert rollout.columns["conversation"][0][1]["content"] == "{'error': 'Tool lookup timed out after 0.5 s.'}"
        assert rollout.columns["tool_failures"] == [1]
        assert rollout.columns["tool_seconds"][0] >= 0.5
    assert time.perf_counter() - start < 30
    tool_loop(cfg, load_tokenizer(str(tool_model))).close()


def test_malformed_and_unknown_calls_are_failed_calls(tool_model, policy, tmp_path):
    cfg = _cfg(tool_model, f"tools=[{write_tools(tmp_path, 'good')}]")
    rollout, _ = _episodes(cfg, policy, [WRONG, NOBODY])
    wrong, nobody = (c[1]["content"] for c in rollout.columns["conversation"])
    assert "missing 1 required positional argument: 'key'" in wrong
    assert nobody == "{'error': 'Tool nobody not found.'}"
    assert rollout.columns["tool_failures"] == [1, 1]


def test_max_tool_calling_iterations_0_calls_nothing(tool_model, policy, tmp_path):
    cfg = _cfg(tool_model, f"tools=[{write_tools(tmp_path, 'good')}]", "max_tool_calling_iterations=0")
    rollout, tokenizer = _episodes(cfg, policy, [RIGHT])
    assert _text(tokenizer, rollout, 0) == "call lookup key is fruit!<eos>"
    assert rollout.tool_mask[0][rollout.mask[0].bool()].tolist() == [1.0] * int(rollout.mask[0].sum())
    assert rollout.columns["tool_calls"] == [0]


def test_an_environment_runs_two_turns_and_scores_with_get_reward(tool_model, policy, tmp_path):
    (tmp_path / "envs.py").write_text(ENV)
    (tmp_path / "zero.py").write_text(ZERO)
    cfg = _cfg(tool_model, f"environment_factory={tmp_path}/envs.py:Words", f"reward.funcs=[{tmp_path}/zero.py:zero]")
    rollout, tokenizer = _episodes(cfg, policy, [RIGHT])
    assert rollout.prompts == ["tools lookup. q say the word. a "]  # the environment's method is its tool
    assert _text(tokenizer, rollout, 0) == "call lookup key is fruit!<eos> r banana. a banana<eos>"
    assert [e.asked for e in rollout.columns["environments"]] == [["fruit"]]
    assert rollout.columns["environment_rewards"] == [{"Words": 1.0}]
    sources = rewards.resolve_sources(cfg) + reward_sources(resolve_tools(cfg.rollout))
    assert [s.name for s in sources] == ["zero", "Words"]
    reward_fn = rewards.build_reward(cfg, sources=sources)
    assert score(reward_fn, rollout, "cpu").tolist() == [1.0]  # zero + Words.get_reward() at weight 1

    hinted = _cfg(tool_model, f"environment_factory={tmp_path}/envs.py:Hinting")
    rollout, _ = _episodes(hinted, policy, [RIGHT])
    assert rollout.prompts == ["tools lookup. q say the word now. a "]  # reset's text ends the user turn


def test_rows_must_name_a_known_environment(tool_model, policy, tmp_path):
    (tmp_path / "envs.py").write_text(ENV)
    cfg = _cfg(tool_model, f"rollout.environment_factory.words={tmp_path}/envs.py:Words")
    tokenizer = load_tokenizer(str(tool_model))
    rows = [{"prompt": RIGHT, "input_ids": [5], "environment": "word"}]
    with pytest.raises(ToolSpecError, match="rows name environment word, not one of .*: words$"):
        generate(policy, tokenizer, rows, cfg.ppo, "cpu", greedy=True, tools=tool_loop(cfg, tokenizer))
    rows[0]["environment"] = "words"
    rollout = generate(policy, tokenizer, rows, cfg.ppo, "cpu", greedy=True, tools=tool_loop(cfg, tokenizer))
    assert rollout.columns["environment_rewards"] == [{"Words": 1.0}]
    assert rollout.columns["environment"] == ["words"]


def test_tool_metrics_count_calls_failures_and_time(tool_model, policy, tmp_path):
    from accelerate import Accelerator

    from rlhf_app.rl.metrics import tool_metrics

    cfg = _cfg(tool_model, f"tools=[{write_tools(tmp_path, 'good')}]")
    rollout, _ = _episodes(cfg, policy, [RIGHT, NOBODY, RIGHT])
    metrics = tool_metrics(Accelerator(cpu=True), rollout)
    assert metrics["tools/calls_per_episode"] == 1.0
    assert metrics["tools/failures"] == 1.0
    assert metrics["tools/failure_frequency"] == pytest.approx(1 / 3)
    assert metrics["time/tools_s"] == pytest.approx(sum(rollout.columns["tool_seconds"]))
    assert torch.equal(rollout.mask * rollout.tool_mask, rollout.mask * rollout.tool_mask.clamp(0, 1))
