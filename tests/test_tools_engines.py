"""Tool episodes through the engines and a whole run (issue 23): greedy episodes are the same on the hf and the
vllm engine; a run with tools logs the tool metrics and shows the conversations in its samples and report."""

import json

import pytest
import torch
from accelerate import Accelerator

from rlhf_app.config import load_config
from rlhf_app.engines.hf import HFEngine
from rlhf_app.models import policy as models
from tool_fixtures import NOBODY, RIGHT, WRONG, write_tools

pytestmark = pytest.mark.slow  # a vLLM engine; a training run


def test_greedy_tool_episodes_are_the_same_on_both_engines(tool_model, tmp_path):
    pytest.importorskip("vllm")
    from rlhf_app.engines.vllm_engine import VLLMEngine

    cfg = load_config(["recipe=tiny", f"model.name_or_path={tool_model}", "ppo.response_length=128",
                       "ppo.do_sample=false", f"tools=[{write_tools(tmp_path, 'good')}]"])
    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    model, _ = models.build_models(cfg)
    rows = [{"prompt": p, "input_ids": tokenizer(p)["input_ids"]} for p in (RIGHT, WRONG, NOBODY)]
    accelerator = Accelerator(cpu=True)
    slow = HFEngine(cfg, accelerator, model, tokenizer).generate(rows, greedy=True)
    engine = VLLMEngine(cfg, accelerator, model, tokenizer)
    try:
        engine.sync_weights(model)
        fast = engine.generate(rows, greedy=True)
    finally:
        engine.close()
    assert slow.columns["tool_calls"] == [1, 1, 1]  # every episode called a tool
    assert torch.equal(fast.response, slow.response)
    assert torch.equal(fast.mask, slow.mask) and torch.equal(fast.tool_mask, slow.tool_mask)
    assert fast.columns["conversation"] == slow.columns["conversation"]
    assert fast.prompts == slow.prompts and torch.equal(fast.query, slow.query)
    assert not (fast.logprobs * (1 - fast.tool_mask)).any()  # no engine log-prob on the tool turns
    assert (fast.logprobs * fast.tool_mask).abs().sum() > 0


def test_a_run_with_tools_logs_tool_metrics_and_shows_the_conversations(tool_model, tmp_path):
    from rlhf_app.run import run

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [RIGHT, NOBODY] * 20))
    out = tmp_path / "run"
    cfg = load_config(["recipe=tiny", f"model.name_or_path={tool_model}", f"data.name={data}", "data.num_eval=4",
                       f"tools=[{write_tools(tmp_path, 'good')}]", "ppo.response_length=96",
                       "ppo.total_episodes=32", "ppo.per_device_train_batch_size=8", "ppo.num_mini_batches=2",
                       "ppo.temperature=0.3", "ppo.learning_rate=1e-6", "sample_every=1", f"output_dir={out}"])
    run(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["tools/calls_per_episode"] > 0 and row["time/tools_s"] >= 0
        assert 0 <= row["tools/failures"] <= 16 and 0 <= row["tools/failure_frequency"] <= 1
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert any("\ntool lookup: banana\nassistant:" in s["completion"] for s in samples)
    assert "tool lookup: banana" in (out / "report.html").read_text()
    evals = json.loads((out / "eval.json").read_text())  # held-out episodes call the tools too
    assert all(" r " in s["completion"] for s in evals["before"]["samples"] + evals["after"]["samples"])
