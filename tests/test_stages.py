"""The SFT and reward-model stages (`rlhf-app sft`, `rlhf-app rm`) on the tiny model: the loss falls, final/
loads where the next stage needs it (PPO's model.name_or_path, reward.funcs), a stop resumes exactly from the
Trainer's own checkpoint, and bad inputs are one line before any model loads."""

import json
import os
import random
import re
import signal

import pytest
import torch

from rlhf_app.config import ConfigError, load_config
from rlhf_app.run_dir.signals import Stopped


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_rows(n=64):
    rng = random.Random(0)
    return [{"prompt": "say a: ", "completion": "a" * rng.randint(4, 12) + "."} for _ in range(n)]


def pair_rows(n=160):
    """Separable pairs: chosen ends in 'aaaa', rejected holds no 'a'."""
    rng = random.Random(0)
    letters = "bcdefghijklmnop"
    rows = []
    for _ in range(n):
        k = rng.randint(3, 8)
        rows.append({"prompt": "the ", "chosen": "".join(rng.choice(letters) for _ in range(k)) + "aaaa",
                     "rejected": "".join(rng.choice(letters) for _ in range(k + 4))})
    return rows


def _cfg(stage, out, data, *overrides):
    return load_config(["recipe=tiny", f"output_dir={out}", f"{stage}.dataset={data}", *overrides], stage=stage)


def _sft(out, data, *overrides, callbacks=()):
    from rlhf_app.stages import sft

    return sft.run(_cfg("sft", out, data, "--max_steps", "8", "--learning_rate", "3e-3", *overrides),
                   callbacks=callbacks)


def _losses(out):
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.mark.slow
def test_sft_loss_falls_and_ppo_starts_from_its_final(tmp_path, train_tiny):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    final = _sft(out, _jsonl(tmp_path / "sft.jsonl", sft_rows()))
    losses = _losses(out)
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0]
    assert (out / "config.yaml").is_file() and (out / "plots" / "stage.png").is_file()
    report = (out / "report.html").read_text()
    assert "SFTTrainer" in report  # and the settings: the section's every key, model.*, peft.*
    for key, value in (("sft.max_steps", "num\">8"), ("sft.completion_only_loss", "num\">—"),
                       ("model.dtype", "\">float32"), ("peft.enabled", "\">False")):
        assert f'<td class="">{key}</td><td class="{value}</td>' in report
    assert "peft.lora_alpha" not in report
    assert json.loads((final / "trainer_state.json").read_text())["step"] == 8
    AutoModelForCausalLM.from_pretrained(final)
    run = train_tiny(tmp_path / "ppo", f"model.name_or_path={final}", "ppo.total_episodes=64",
                     "eval_before_after=false")
    assert run.result["step"] == 2 and (run.dir / "final").is_dir()


class _Padding:
    """A TrainerCallback that reads the first epoch's batches at the start of training: (real tokens, padded
    tokens) as the model receives them."""

    def __new__(cls, seen):
        from transformers import TrainerCallback

        class Count(TrainerCallback):
            def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
                masks = [batch["attention_mask"] for batch in train_dataloader]
                seen.append((sum(int(m.sum()) for m in masks), sum(m.numel() for m in masks)))

        return Count()


@pytest.mark.slow
def test_sft_group_by_length_batches_rows_of_like_length(tmp_path):
    rng = random.Random(1)  # completions of 1 to 80 letters: a random batch pads most rows to its longest
    data = _jsonl(tmp_path / "sft.jsonl", [{"prompt": "say a: ", "completion": "a" * rng.randint(1, 80) + "."}
                                            for _ in range(256)])
    seen = {}
    for strategy in ("random", "group_by_length"):
        seen[strategy] = []
        out = tmp_path / strategy
        _sft(out, data, f"sft.train_sampling_strategy={strategy}", callbacks=[_Padding(seen[strategy])])
        assert len(_losses(out)) == 8
    (real, padded), (real_grouped, padded_grouped) = seen["random"][0], seen["group_by_length"][0]
    assert real == real_grouped  # the same rows, batched otherwise
    assert padded_grouped - real_grouped < 0.25 * (padded - real)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_reward_model_ranks_held_out_pairs_and_loads_through_reward_funcs(tmp_path, lora):
    from rlhf_app.rewards import build_reward
    from rlhf_app.stages import rm

    out, data = tmp_path / "rm", _jsonl(tmp_path / "pairs.jsonl", pair_rows())
    peft = ["peft.enabled=true", "peft.r=8"] if lora else []
    final = rm.run(_cfg("rm", out, data, "--num_train_epochs", "2", "--learning_rate", "3e-3", *peft))
    result = json.loads((out / "rm_eval.json").read_text())
    assert result["pairs"] == 16 and result["accuracy"] >= 0.9 and len(result["margins"]) == 16
    saved = json.loads((final / "config.json").read_text())
    assert saved["reward_append_eos"] is True and saved["reward_conversational"] is False
    report = (out / "report.html").read_text()
    assert "pairwise accuracy" in report and (out / "plots" / "margins.png").is_file()
    assert "rm.center_rewards_coefficient" in report and ("peft.lora_alpha" in report) == lora
    assert not (final / "adapter_config.json").exists()  # LoRA merged: a plain classifier folder
    cfg = load_config(["recipe=tiny", f"reward.funcs=[{final}]"])
    score = build_reward(cfg)
    assert not hasattr(score, "extra_metrics")  # one logit: no label to take a positive share of
    held = pair_rows(200)[160:]  # pairs never trained on
    chosen = score(["the "] * 40, [r["chosen"] for r in held])
    rejected = score(["the "] * 40, [r["rejected"] for r in held])
    assert sum(c > r for c, r in zip(chosen, rejected)) >= 36
    # scored exactly as RewardTrainer trained it: prompt + completion + EOS
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model, tok = AutoModelForSequenceClassification.from_pretrained(final), AutoTokenizer.from_pretrained(final)
    texts = [held[0]["chosen"], held[0]["rejected"] + "bcd"]  # of different lengths: one is padded
    with torch.inference_mode():
        direct = [model(**tok(["the " + t + tok.eos_token], return_tensors="pt")).logits[0, 0].item() for t in texts]
    assert score(["the "] * 2, texts) == pytest.approx(direct, abs=1e-5)


CHAT = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}")


@pytest.mark.slow
def test_a_conversational_reward_model_scores_ppo_episodes_through_its_chat_template(tmp_path):
    """Trained on conversations, the reward model scores PPO's episodes as [prompt messages..., assistant
    completion] rendered by its own chat template, as RewardTrainer tokenized its pairs: not as plain text."""
    from types import SimpleNamespace

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf_app.assets.registry import build_tiny
    from rlhf_app.data.columns import CONVERSATION_COLUMN
    from rlhf_app.rewards import build_reward
    from rlhf_app.rl.rollout import score
    from rlhf_app.stages import rm

    base = tmp_path / "chat-tiny"
    build_tiny(base)
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = CHAT
    tok.save_pretrained(base)

    def turn(role, text):
        return [{"role": role, "content": text}]

    rows = [{"prompt": turn("user", "the"), "chosen": turn("assistant", r["chosen"]),
             "rejected": turn("assistant", r["rejected"])} for r in pair_rows(64)]
    final = rm.run(_cfg("rm", tmp_path / "rm", _jsonl(tmp_path / "pairs.jsonl", rows), f"model.name_or_path={base}",
                        "--max_steps", "4", "--learning_rate", "3e-3"))
    saved = json.loads((final / "config.json").read_text())
    assert saved["reward_conversational"] is True and saved["reward_append_eos"] is False
    # PPO's scoring call (rl/rollout.score), a conversational prompt set: the text prompt the policy saw and
    # the conversation in its column
    reward = build_reward(load_config(["recipe=tiny", f"reward.funcs=[{final}]"]))
    convs, completions = [turn("user", "the"), turn("user", "a story")], ["bcdaaaa", "qq"]
    rollout = SimpleNamespace(prompts=[tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                                       for c in convs], completions=completions,
                              columns={CONVERSATION_COLUMN: convs},
                              response=torch.zeros(2, 1, dtype=torch.long), mask=torch.ones(2, 1))
    used = score(reward, rollout, "cpu").tolist()
    model, rm_tok = AutoModelForSequenceClassification.from_pretrained(final), AutoTokenizer.from_pretrained(final)
    with torch.inference_mode():
        direct = [model(**rm_tok.apply_chat_template(c + turn("assistant", x), return_dict=True,
                                                     return_tensors="pt")).logits[0, 0].item()
                  for c, x in zip(convs, completions)]
        plain = model(**rm_tok(rollout.prompts[0] + completions[0], return_tensors="pt")).logits[0, 0].item()
    assert used == pytest.approx(direct, abs=1e-5)  # padded in one batch, as scored one by one
    assert abs(plain - direct[0]) > 1e-3  # the plain-text rendering the reward used before scores otherwise
    # its model card says so, and the card's snippet scores a conversation as PPO's reward does
    from rlhf_app.cli.push import load_run_config
    from rlhf_app.hub.upload import prepare_upload

    folder = prepare_upload(tmp_path / "rm", load_run_config(tmp_path / "rm", ["hub.dry_run=true"]))
    text = (folder / "README.md").read_text()
    assert "pairs as conversations (chat template)" in text
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    scope = {}
    with torch.inference_mode():
        exec(code.replace("user/name", str(folder)), scope)
    said = [turn("user", "Say something kind.")], ["You did well today."]
    assert reward(["x"], said[1], **{CONVERSATION_COLUMN: said[0]})[0] == pytest.approx(scope["score"], abs=1e-5)


class _SignalAt:
    """A TrainerCallback that sends this process SIGTERM during step `step` (a `kill` mid-run)."""

    def __new__(cls, step):
        from transformers import TrainerCallback

        class Send(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == step - 1:
                    os.kill(os.getpid(), signal.SIGTERM)

        return Send()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["random", "group_by_length"])
def test_a_stopped_stage_resumes_exactly_from_the_trainers_checkpoint(tmp_path, capsys, strategy):
    from safetensors.torch import load_file

    data = _jsonl(tmp_path / "sft.jsonl", sft_rows())
    whole = _sft(tmp_path / "whole", data, f"sft.train_sampling_strategy={strategy}")
    out = tmp_path / "stopped"
    with pytest.raises(Stopped) as stop:
        _sft(out, data, f"sft.train_sampling_strategy={strategy}", callbacks=[_SignalAt(3)])
    assert stop.value.signum == signal.SIGTERM and (out / "checkpoint-3").is_dir() and not (out / "final").exists()
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("stopped at step 3")]
    assert len(said) == 1 and "resume_from=auto" in said[0]
    assert len(_losses(out)) == 3
    resumed = _sft(out, data, f"sft.train_sampling_strategy={strategy}", "resume_from=auto")
    assert _losses(out) == pytest.approx(_losses(tmp_path / "whole"), rel=1e-5)
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


BAD = {
    "no rejected": ("rm", [{"chosen": "aaa", "other": "b"}], "no 'rejected' column"),
    "margin strings": ("rm", [{"chosen": "aaa", "rejected": "b", "margin": "big"}] * 4, "not a number"),
    "rm conversations": ("rm", [{"chosen": [{"role": "user", "content": "a"}],
                                 "rejected": [{"role": "user", "content": "b"}]}] * 4, "no chat template"),
    "sft conversations": ("sft", [{"messages": [{"role": "user", "content": "a"}]}] * 4, "no chat template"),
    "sft no text": ("sft", [{"question": "a", "answer": "b"}] * 4, "has no text column"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_stage_data_is_one_line_before_any_model_loads(tmp_path, one_line_error, case):
    stage, rows, expected = BAD[case]
    out = tmp_path / "run"
    message = one_line_error([stage, "recipe=tiny", f"output_dir={out}",
                              f"{stage}.dataset={_jsonl(tmp_path / 'd.jsonl', rows)}"])
    assert expected in message
    assert not out.exists()  # refused before the run folder (and so any model) was touched


@pytest.mark.slow
def test_a_rerun_into_a_finished_stage_folder_is_refused(tmp_path, one_line_error):
    data = _jsonl(tmp_path / "sft.jsonl", sft_rows())
    _sft(tmp_path / "run", data, "--max_steps", "2")
    argv = ["sft", "recipe=tiny", f"output_dir={tmp_path / 'run'}", f"sft.dataset={data}", "--max_steps", "2"]
    assert "holds another run" in one_line_error(argv)
    assert "has finished" in one_line_error([*argv, "resume_from=auto"])


def test_stage_config_takes_trl_flags_into_its_section_and_leaves_ppo_unchanged():
    cfg = load_config(["recipe=tiny", "sft.dataset=x/y", "--learning_rate", "1e-3", "--completion_only_loss",
                       "--save_steps", "5", "--train_sampling_strategy", "group_by_length"], stage="sft")
    assert (cfg.sft.learning_rate, cfg.sft.completion_only_loss, cfg.sft.save_steps) == (1e-3, True, 5)
    assert cfg.sft.train_sampling_strategy == "group_by_length"
    with pytest.raises(ConfigError, match=r"^sft.train_sampling_strategy='by_length' is not one of random, "):
        load_config(["recipe=tiny", "sft.dataset=x/y", "sft.train_sampling_strategy=by_length"], stage="sft")
    assert cfg.ppo.learning_rate == load_config(["recipe=tiny"]).ppo.learning_rate and cfg.save_steps == 0
    assert cfg.output_dir == "runs/tiny/sft" and cfg.rm is None
    ppo = load_config(["recipe=tiny", "rm.center_rewards_coefficient=0.01"])  # a recipe may hold every stage
    assert ppo.rm.center_rewards_coefficient == 0.01 and ppo.sft is None
