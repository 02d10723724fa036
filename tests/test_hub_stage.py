"""Hub push of a finished SFT or reward-model stage (`rlhf-app push run_dir=runs/x/sft`): the upload folder holds
its final/ and its own model card; the same scrubbing, dry run, offline line and upload calls as PPO's push."""

import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

from rlhf_app.cli.main import main
from rlhf_app.hub import upload as hub
from rlhf_app.config import load_config

HF_FAKE = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # the shape of a user token, not a real one
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
pytestmark = pytest.mark.slow  # each module trains a tiny SFT and a tiny reward model once


def listing(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(stage, out, data, *overrides):
    return load_config(["recipe=tiny", f"output_dir={out}", f"{stage}.dataset={data}", *overrides], stage=stage)


def sft_rows(n=48):
    rng = random.Random(0)
    return [{"prompt": "say a: ", "completion": "a" * rng.randint(4, 12) + "."} for _ in range(n)]


def pair_rows(n=96):
    """Separable pairs: chosen ends in 'aaaa', rejected holds no 'a'."""
    rng = random.Random(0)
    return [{"prompt": "the ", "chosen": "".join(rng.choice("bcdefghijklmnop") for _ in range(k)) + "aaaa",
             "rejected": "".join(rng.choice("bcdefghijklmnop") for _ in range(k + 4))}
            for k in (rng.randint(3, 8) for _ in range(n))]


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory) -> dict[str, Path]:
    """A finished tiny SFT run and a finished tiny reward-model run (LoRA, merged), trained once."""
    from rlhf_app.stages import rm, sft

    root = tmp_path_factory.mktemp("stages")
    sft.run(_cfg("sft", root / "sft", _jsonl(root / "sft.jsonl", sft_rows()), "--max_steps", "4",
                 "--learning_rate", "3e-3", "hub.push=true", "hub.dry_run=true"))  # pushed as it ends
    rm.run(_cfg("rm", root / "rm", _jsonl(root / "pairs.jsonl", pair_rows()), "--max_steps", "6",
                "--learning_rate", "3e-3", "peft.enabled=true", "peft.r=4"))
    return {"sft": root / "sft", "rm": root / "rm"}


@pytest.fixture
def copy(stage_runs, tmp_path):
    return lambda stage: Path(shutil.copytree(stage_runs[stage], tmp_path / stage))


def _push(run_dir: Path, *overrides: str) -> Path:
    main(["push", f"run_dir={run_dir}", *overrides])
    return run_dir / "hub_upload"


def test_a_stage_with_hub_push_pushes_at_its_end_or_refuses_before_any_model_loads(stage_runs, tmp_path):
    assert (stage_runs["sft"] / "hub_upload" / "README.md").is_file()  # hub.push=true hub.dry_run=true
    assert not (stage_runs["rm"] / "hub_upload").exists()
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"^error: hub\.repo_id is not set: pass hub\.repo_id=user/name"):
        main(["sft", "recipe=tiny", f"output_dir={out}", "sft.dataset=never/read", "hub.push=true"])
    assert not out.exists()


def test_sft_stage_folder_and_card(copy, capsys):
    run = copy("sft")
    folder = _push(run, "hub.dry_run=true", "hub.repo_id=alice/tiny-sft", "hub.license=apache-2.0")
    out = capsys.readouterr().out
    assert f"dry run: would upload {folder}" in out and "model.safetensors" in out
    # final/'s model and tokenizer, the recipe, metrics, plots and the card; no checkpoint, no trainer state
    assert listing(folder) == MODEL_FILES | {"README.md", "config.yaml", "metrics.jsonl", "plots/stage.png"}
    assert (folder / "model.safetensors").read_bytes() == (run / "final" / "model.safetensors").read_bytes()
    text = (folder / "README.md").read_text()
    meta = ModelCard(text).data
    assert meta.pipeline_tag == "text-generation" and meta.library_name == "transformers"
    assert meta.tags == ["trl", "sft", "rlhf_app"] and meta.license == "apache-2.0"
    assert "on TRL's `SFTTrainer`" in text and "(stage `sft`)" in text and "`asset:tiny`" in text
    dataset = load_config([f"recipe={run / 'config.yaml'}"]).sft.dataset
    assert f"`{dataset}`, split `train`; held out: a seeded 0.1 of `train`, at most 64 rows." in text
    assert "| `sft.learning_rate` | 0.003 |" in text and "| `sft.max_steps` | 4 |" in text
    assert "| `peft.enabled` | False |" in text and "peft.r" not in text  # the LoRA keys only for a LoRA run
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert f"| final training loss | {losses[-1]:.4g} |" in text and "| optimizer steps | 4 |" in text
    assert "![loss and TRL's metrics over steps](plots/stage.png)" in text
    assert "PPO" in text and "model.name_or_path=alice/tiny-sft" in text
    # the card's snippet loads the prepared folder in place of the Hub repo and generates
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    scope = {}
    exec(code.replace("alice/tiny-sft", str(folder)).replace("max_new_tokens=32", "max_new_tokens=3"), scope)
    assert scope["model"].config.architectures == ["GPT2LMHeadModel"]


def test_reward_model_stage_card_gives_pairwise_accuracy_and_margin(copy):
    run = copy("rm")
    folder = _push(run, "hub.dry_run=true", "hub.repo_id=alice/tiny-rm")
    assert listing(folder) == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                               "README.md", "config.yaml", "metrics.jsonl", "rm_eval.json", "plots/stage.png",
                               "plots/margins.png"}
    assert not (folder / "adapter_config.json").exists()  # LoRA merged in final/
    result = json.loads((run / "rm_eval.json").read_text())
    text = (folder / "README.md").read_text()
    meta = ModelCard(text).data
    assert meta.pipeline_tag == "text-classification" and meta.tags == ["trl", "reward-trainer", "reward-model",
                                                                        "rlhf_app", "lora"]
    assert "on TRL's `RewardTrainer` with LoRA (r=4, alpha=32), adapters merged" in text
    assert f"| held-out pairs | {result['pairs']} |" in text
    assert f"| held-out pairwise accuracy | {result['accuracy']:.4g} |" in text
    assert f"| held-out mean margin, score(chosen) − score(rejected) | {result['mean_margin']:.4g} |" in text
    assert "pairs as text" in text and "| `peft.r` | 4 |" in text and "| `rm.center_rewards_coefficient` | None |" in text
    assert "](plots/margins.png)" in text and "reward.funcs=[alice/tiny-rm]" in text
    # the card's snippet scores as PPO's reward.funcs does (text + EOS)
    from rlhf_app.rewards import build_reward

    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    scope = {}
    with torch.inference_mode():
        exec(code.replace("alice/tiny-rm", str(folder)), scope)
    reward = build_reward(load_config(["recipe=tiny", f"reward.funcs=[{folder}]"]))
    assert reward([""], ["the movie was great"])[0] == pytest.approx(scope["score"], abs=1e-5)


@pytest.fixture
def hub_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, self.token)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(
        ("upload_folder", kw["repo_id"], sorted(listing(Path(kw["folder_path"]))))))
    return calls


def test_stage_push_uploads_offline_is_one_line_and_tokens_are_scrubbed(copy, hub_calls, monkeypatch):
    run = copy("rm")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", HF_FAKE)
    _push(run, "hub.repo_id=alice/tiny-rm")
    (create, upload) = hub_calls
    assert create == ("create_repo", "alice/tiny-rm", HF_FAKE)
    assert upload[:2] == ("upload_folder", "alice/tiny-rm") and "rm_eval.json" in upload[2]
    # offline: the same one line as PPO's, naming the dry run and the later push of this folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match=rf"^error: the Hugging Face Hub cannot be reached .*hub\.dry_run=true .*"
                                         rf"run_dir={re.escape(str(run))} hub\.repo_id=alice/tiny-rm$"):
        _push(run, "hub.repo_id=alice/tiny-rm")
    assert len(hub_calls) == 2
    # a token in the recorded run refuses the upload, naming the file, and leaves no folder behind
    shutil.rmtree(run / "hub_upload")
    result = json.loads((run / "rm_eval.json").read_text())
    (run / "rm_eval.json").write_text(json.dumps({**result, "note": HF_FAKE}))
    with pytest.raises(hub.HubError, match=r"refusing to upload: rm_eval\.json holds a token-like string"):
        hub.prepare_upload(run, hub_cfg(run))
    assert not (run / "hub_upload").exists()


def hub_cfg(run: Path):
    from rlhf_app.cli.push import load_run_config

    return load_run_config(run, ["hub.dry_run=true"])


def test_stage_push_refuses_training_keys_and_an_unfinished_stage(copy):
    run = copy("sft")
    with pytest.raises(SystemExit, match=r"^error: sft\.learning_rate cannot change after training"):
        _push(run, "sft.learning_rate=1")
    shutil.rmtree(run / "final")
    with pytest.raises(SystemExit, match=r"final does not exist: train to the end first, or push a checkpoint "
                                         r"with hub\.checkpoint=checkpoint-N"):
        _push(run, "hub.dry_run=true")
    folder = _push(run, "hub.dry_run=true", "hub.checkpoint=checkpoint-4")  # the Trainer's own checkpoint
    assert MODEL_FILES - {"generation_config.json"} <= listing(folder)
    assert not {"optimizer.pt", "scheduler.pt", "trainer_state.json", "training_args.bin"} & listing(folder)
    assert "Weights from `checkpoint-4/` of the run" in (folder / "README.md").read_text()
