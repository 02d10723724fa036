"""Every resume is checked the same way (`resume_from=auto` and a named checkpoint, into the run's own
folder or a new one): settings that change what is trained, a checkpoint of another setup and a damaged
checkpoint are one line each, before any model loads where the files can say it first."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from rlhf_app.cli.main import main
from rlhf_app.run_dir.integrity import mismatch_error

EPISODES = 32  # per update of the tiny recipe


def _fails(capsys, *args: str) -> str:
    """`rlhf-app train recipe=tiny ARGS` (ARGS may name another recipe instead) in this process: the one
    line it ends with (without `error: `)."""
    capsys.readouterr()
    recipe = [] if any(a.startswith("recipe=") for a in args) else ["recipe=tiny"]
    with pytest.raises(SystemExit) as exit_:
        main(["train", *recipe, *args])
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in capsys.readouterr().err
    return message[len("error: "):]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_updates(straight: list[dict], resumed: list[dict], steps) -> None:
    assert [r["step"] for r in resumed] == list(steps)
    for a, b in zip(straight, resumed):
        for key in ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)


# ---- issue 24, case 5: a named checkpoint into a new output_dir is compared with its run's config

@pytest.mark.parametrize("changes, named", [
    (["ppo.per_device_train_batch_size=8"], ["ppo.per_device_train_batch_size: 16 -> 8"]),
    (["ppo.kl_coef=0.9", "seed=5"], ["ppo.kl_coef: 0.01 -> 0.9", "seed: 0 -> 5"]),
])
def test_a_named_checkpoint_into_a_new_output_dir_refuses_what_auto_refuses(finished_tiny_run, tmp_path, capsys,
                                                                           changes, named):
    checkpoint, new = finished_tiny_run / "checkpoint-10", tmp_path / "new"
    message = _fails(capsys, f"output_dir={new}", f"resume_from={checkpoint}", *changes)
    assert message.startswith(f"resume_from={checkpoint} with settings that change what is trained (")
    assert all(line in message for line in named), message
    assert not (new / "config.yaml").exists()  # refused before anything was written


def test_a_named_checkpoint_into_a_new_output_dir_continues_exactly(finished_tiny_run, tmp_path, capsys,
                                                                    train_tiny):
    checkpoint, new = finished_tiny_run / "checkpoint-10", tmp_path / "new"
    train_tiny(new, f"resume_from={checkpoint}", f"ppo.total_episodes={EPISODES * 20}", "eval_before_after=false")
    out = capsys.readouterr().out
    assert f"note: continuing the run in {finished_tiny_run.resolve()} from its update 10" in out
    assert "note: resuming with eval_before_after: True -> False" in out
    _assert_same_updates(_rows(finished_tiny_run)[10:], _rows(new), range(11, 21))
    recorded = yaml.safe_load((new / "config.yaml").read_text())  # the settings it ran with
    assert recorded["resume_from"] == str(checkpoint) and recorded["eval_before_after"] is False
    # The same command again: the new folder's run continues that checkpoint's run (not "another run").
    assert "has finished at update 20" in _fails(capsys, f"output_dir={new}", f"resume_from={checkpoint}",
                                                 f"ppo.total_episodes={EPISODES * 20}")


def test_a_checkpoint_of_one_run_into_a_folder_with_another_run_is_refused(finished_tiny_run, tiny_run_copy,
                                                                           capsys):
    checkpoint = finished_tiny_run / "checkpoint-10"
    message = _fails(capsys, f"output_dir={tiny_run_copy}", f"resume_from={checkpoint}", "ppo.total_episodes=1280")
    assert message == (f"resume_from={checkpoint} is a checkpoint of the run in {finished_tiny_run.resolve()}, "
                       f"but output_dir={tiny_run_copy} holds another run: resume it into a new output_dir, or use "
                       f"resume_from=auto to continue the run in {tiny_run_copy}")


# ---- a checkpoint of another setup: the config comparison names the difference, before any model loads

@pytest.mark.parametrize("changes, first", [
    (["algorithm.advantage_estimator=grpo", "algorithm.num_generations=2"], "algorithm.advantage_estimator: 'gae'"),
    (["peft.enabled=true"], "peft.enabled: False -> True"),
    (["recipe=demo"], "model.name_or_path: 'asset:tiny' -> 'asset:demo-policy'"),
])
@pytest.mark.parametrize("where", ["auto", "named"])
def test_a_checkpoint_of_another_setup_is_one_line_naming_the_difference(finished_tiny_run, tiny_run_copy, tmp_path,
                                                                         capsys, changes, first, where):
    if where == "auto":
        args = [f"output_dir={tiny_run_copy}", "resume_from=auto"]
    else:
        args = [f"output_dir={tmp_path / 'new'}", f"resume_from={finished_tiny_run / 'checkpoint-20'}"]
    message = _fails(capsys, *args, *changes, "ppo.total_episodes=1280")
    head = message.split("(", 1)[1]
    assert head.startswith(first), message  # the setup first, however many other settings differ
    if "recipe=demo" in changes:
        assert message.count("; ") <= 6 and " more): restore them" in message


# ---- the second line of defence: weights of another setup behind a hand-edited config.yaml

@pytest.mark.parametrize("edit, change, difference", [
    ({"peft": {"enabled": True}}, ["peft.enabled=true"],
     "LoRA adapters off in the checkpoint, on in this run: peft.enabled differs"),
    ({"algorithm": {"advantage_estimator": "grpo", "num_generations": 2}},
     ["algorithm.advantage_estimator=grpo", "algorithm.num_generations=2"],
     "a value head in the checkpoint, no critic in this run"),
])
def test_weights_of_another_setup_are_one_line_when_the_config_was_edited(tiny_run_copy, capsys, edit, change,
                                                                           difference):
    checkpoint = tiny_run_copy / "checkpoint-20"
    saved = yaml.safe_load((checkpoint / "config.yaml").read_text())
    for section, values in edit.items():
        saved[section].update(values)
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(saved))
    message = _fails(capsys, f"output_dir={tiny_run_copy}", "resume_from=auto", *change, "ppo.total_episodes=1280",
                     "eval_before_after=false")
    assert message.startswith(f"{checkpoint} holds the weights of another setup ({difference}")
    assert message.endswith("or start a new run in another output_dir")


def test_weights_of_another_shape_name_the_first_weight_that_differs():
    message = str(mismatch_error(Path("run/checkpoint-4"), {"policy.wte.weight": (100, 8), "policy.b": (8,)},
                                 {"policy.wte.weight": (120, 8), "policy.b": (8,)}))
    assert message.startswith("run/checkpoint-4 holds the weights of another setup (policy.wte.weight is [100, 8] "
                              "in the checkpoint, [120, 8] in this run: another model or model shape)")


# ---- a damaged newest checkpoint under resume_from=auto: one line naming the file, offering the previous one

def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("name, damage", [
    ("model.safetensors", _truncate), ("value_head.safetensors", _truncate), ("trainer_state.pt", _truncate),
    ("optimizer_0.pt", _truncate), ("rng_state_0.pt", _truncate), ("trainer_state.json", _truncate),
    ("config.yaml", lambda f: f.write_text("ppo: [unclosed\n")), ("config.yaml", lambda f: f.write_text("- a list\n")),
    ("tokenizer_config.json", _truncate), ("model.safetensors", Path.unlink), ("optimizer_0.pt", Path.unlink),
])
def test_a_damaged_newest_checkpoint_is_one_line_that_offers_the_previous_one(tiny_run_copy, capsys, name, damage):
    shutil.rmtree(tiny_run_copy / "final")  # as if stopped after checkpoint-20
    damage(tiny_run_copy / "checkpoint-20" / name)
    message = _fails(capsys, f"output_dir={tiny_run_copy}", "resume_from=auto")
    assert message.startswith(f"the checkpoint file {tiny_run_copy / 'checkpoint-20' / name} is damaged (")
    assert message.endswith(f": resume from the previous checkpoint with resume_from={tiny_run_copy / 'checkpoint-10'}"
                            ", or restore the file")
    # The same for the checkpoint named explicitly.
    assert _fails(capsys, f"output_dir={tiny_run_copy}", f"resume_from={tiny_run_copy / 'checkpoint-20'}") == message


def test_with_no_whole_checkpoint_left_the_message_says_so(tiny_run_copy, capsys):
    shutil.rmtree(tiny_run_copy / "final")
    for step in (10, 20):
        _truncate(tiny_run_copy / f"checkpoint-{step}" / "model.safetensors")
    message = _fails(capsys, f"output_dir={tiny_run_copy}", "resume_from=auto")
    assert message.endswith("no earlier checkpoint is whole: start again in another output_dir, or restore the file")


def test_a_file_damaged_after_the_checks_is_one_line_when_it_loads(tiny_run_copy):
    # The second line of defence: the checks before the model read headers only; loading reads the rest.
    from types import SimpleNamespace

    from rlhf_app.run_dir.checkpoint import load_checkpoint
    from rlhf_app.run_dir.integrity import CheckpointError

    checkpoint = tiny_run_copy / "checkpoint-20"
    _truncate(checkpoint / "rng_state_0.pt")
    with pytest.raises(CheckpointError, match=rf"^the checkpoint file {checkpoint / 'rng_state_0.pt'} cannot be "
                                              r"read \(.*\): resume from an earlier checkpoint, or restore the file$"):
        load_checkpoint(checkpoint, SimpleNamespace(process_index=0), optimizer=None)


def test_following_the_offer_resumes_and_replaces_the_damaged_checkpoint(finished_tiny_run, tiny_run_copy, capsys,
                                                                         train_tiny):
    shutil.rmtree(tiny_run_copy / "final")
    _truncate(tiny_run_copy / "checkpoint-20" / "trainer_state.pt")
    offered = _fails(capsys, f"output_dir={tiny_run_copy}", "resume_from=auto").split("resume_from=")[1].split(",")[0]
    train_tiny(tiny_run_copy, f"resume_from={offered}", f"ppo.total_episodes={EPISODES * 20}", "save_steps=10")
    _assert_same_updates(_rows(finished_tiny_run), _rows(tiny_run_copy), range(1, 21))
    torch.load(tiny_run_copy / "checkpoint-20" / "trainer_state.pt", weights_only=False)  # whole again


# ---- rollout.engine=vllm with an architecture vLLM cannot load: one line, before the policy's weights load

@pytest.mark.slow  # imports vLLM (as test_vllm.py, left out of make test-fast)
def test_an_architecture_vllm_cannot_load_is_one_line_before_the_weights_load(tmp_path, capsys):
    vllm = pytest.importorskip("vllm")
    from transformers import GPTNeoConfig

    from rlhf_app.models.policy import load_tokenizer

    if "GPTNeoForCausalLM" in vllm.ModelRegistry.get_supported_archs():
        pytest.skip(f"vLLM {vllm.__version__} loads GPT-Neo")
    policy = tmp_path / "gpt-neo"  # a config and a tokenizer, no weights: a check after loading would fail otherwise
    tokenizer = load_tokenizer("asset:tiny")
    tokenizer.save_pretrained(policy)
    GPTNeoConfig(vocab_size=len(tokenizer), hidden_size=16, num_layers=2, num_heads=2, max_position_embeddings=128,
                 attention_types=[[["global", "local"], 1]], architectures=["GPTNeoForCausalLM"]
                 ).save_pretrained(policy)
    message = _fails(capsys, f"output_dir={tmp_path / 'run'}", f"model.name_or_path={policy}", "rollout.engine=vllm")
    assert message == f"vLLM {vllm.__version__} cannot load GPTNeoForCausalLM models: use rollout.engine=hf"
