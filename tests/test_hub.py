"""Hub push: the prepared folder, the model card, token scrubbing, dry run and the upload calls (no network)."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import save_file

from rlhf_app.hub import upload as hub
from rlhf_app.hub.card import model_card
from rlhf_app.assets.registry import build_tiny
from rlhf_app.cli.main import main
from rlhf_app.config import load_config, to_yaml

HF_FAKE = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # the shape of a user token, not a real one
WANDB_FAKE = "0123456789abcdef0123456789abcdef01234567"
SHA = "a" * 40
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
RUN_FILES = {"README.md", "config.yaml", "metrics.jsonl", "eval.json", "plots/diagnostics.png", "plots/values.png",
             "value_head.safetensors"}


def _sample(completion, score):
    return {"prompt": "the movie was", "completion": completion, "score": score}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A finished run's folder: a tiny real policy in final/ plus the files the trainer writes."""
    run = tmp_path_factory.mktemp("template")
    build_tiny(run / "final")
    save_file({"weight": torch.zeros(1, 64), "bias": torch.zeros(1)}, str(run / "final" / "value_head.safetensors"))
    (run / "final" / "trainer_state.json").write_text('{"step": 3}')
    torch.save({"rng": 1}, run / "final" / "rng_state_0.pt")
    rows = [{"step": i, "episode": 32 * i, "objective/scores": 0.1 * i, "objective/kl": 0.02 * i} for i in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval.json").write_text(json.dumps({
        "before": {"mean_score": 0.05, "extra": {"positive_share": 0.25}, "samples": [_sample("a bore", -1.5)]},
        "after": {"mean_score": 0.4, "extra": {"positive_share": 0.75}, "samples": [_sample("a gem", 2.5)]}}))
    (run / "samples.jsonl").write_text(json.dumps({"step": 1, **_sample("x", 0.0)}) + "\n")
    (run / "plots").mkdir()
    for name in ("diagnostics.png", "values.png"):
        (run / "plots" / name).write_bytes(b"\x89PNG\r\n\x1a\n" + name.encode())
    return run


@pytest.fixture
def run_dir(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "run"))


def make_cfg(run_dir: Path, *overrides: str):
    cfg = load_config(["recipe=tiny", f"output_dir={run_dir}", *overrides])
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    return cfg


def listing(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_prepared_folder_holds_exactly_the_upload(run_dir):
    folder = hub.prepare_upload(run_dir, make_cfg(run_dir))
    assert folder == run_dir / "hub_upload"
    # trainer_state.json and rng_state_0.pt serve resume only; samples.jsonl is not part of the upload
    assert listing(folder) == MODEL_FILES | RUN_FILES
    assert (folder / "model.safetensors").read_bytes() == (run_dir / "final" / "model.safetensors").read_bytes()
    assert load_config([f"recipe={folder / 'config.yaml'}"]).ppo.kl_coef == 0.01
    # no temporary folder is left beside it, and a second prepare replaces the first
    hub.prepare_upload(run_dir, make_cfg(run_dir, "hub.repo_id=alice/again"))
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []
    assert "alice/again" in (folder / "README.md").read_text()


def test_separate_critic_folder_and_checkpoint_are_uploaded(run_dir):
    ckpt = run_dir / "checkpoint-3"
    shutil.copytree(run_dir / "final", ckpt)
    (ckpt / "value_head.safetensors").unlink()
    shutil.copytree(run_dir / "final", ckpt / "value_model", ignore=shutil.ignore_patterns("value_head*", "*.pt"))
    torch.save({}, ckpt / "trainer_state.pt")
    folder = hub.prepare_upload(run_dir, make_cfg(run_dir, "hub.checkpoint=checkpoint-3"))
    files = listing(folder)
    assert {f"value_model/{n}" for n in MODEL_FILES} <= files
    assert "value_head.safetensors" not in files and "trainer_state.pt" not in files
    card = (folder / "README.md").read_text()
    assert "`value_model/`" in card and "`checkpoint-3/`" in card
    with pytest.raises(hub.HubError, match="choose one of checkpoint-3"):
        hub.prepare_upload(run_dir, make_cfg(run_dir, "hub.checkpoint=checkpoint-9"))


def test_card_names_model_reward_data_numbers_and_loading(run_dir):
    cfg = make_cfg(run_dir, "model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct", "reward.name=sentiment",
                   "reward.model=lvwerra/distilbert-imdb", "data.name=imdb", "hub.repo_id=alice/tiny-ppo",
                   "hub.license=apache-2.0", "ppo.reward_clip=1.5", "ppo.ent_cap=5.0")
    text = (hub.prepare_upload(run_dir, cfg) / "README.md").read_text()
    meta = ModelCard(text).data
    assert meta.base_model == "Qwen/Qwen2.5-0.5B-Instruct" and meta.datasets == ["stanfordnlp/imdb"]
    assert meta.license == "apache-2.0" and meta.library_name == "transformers"
    assert {"rlhf", "ppo", "rlhf_app"} <= set(meta.tags)
    assert "sentiment classifier `lvwerra/distilbert-imdb`: logit of label POSITIVE" in text
    assert "| mean score | 0.05 | 0.4 | +0.35 |" in text and "| positive_share | 0.25 | 0.75 | +0.5 |" in text
    assert "| `ppo.kl_coef` | 0.01 |" in text and "| `ppo.num_mini_batches` | 2 |" in text
    assert "| `ppo.reward_clip` | 1.5 |" in text and "| `ppo.ent_cap` | 5 |" in text  # what shaped reward and loss
    assert "3 PPO updates, 96 episodes" in text
    assert "![training diagnostics" in text and "](plots/diagnostics.png)" in text
    assert 'from_pretrained("alice/tiny-ppo")' in text and 'load_policy(snapshot_download("alice/tiny-ppo"))' in text


def test_card_names_every_reward_function_with_its_weight():
    cfg = load_config(["recipe=custom"])
    text = model_card(cfg, [Path("model.safetensors")], None, [])
    assert ("## Reward source\n\nThe weighted sum of these reward functions (`reward.funcs`, `reward.weights`):\n\n"
            "- 1 × reward function `examples/custom/rewards.py:mentions_keyword`\n"
            "- 0.5 × reward function `trl.rewards:get_soft_overlong_punishment(max_completion_len=24, "
            "soft_punish_cache=12)`\n\n## Dataset") in text
    assert "toy reward" not in text  # reward.name keeps its default, unused beside reward.funcs
    assert ModelCard(text).data.tags == ["rlhf", "ppo", "rlhf_app", "reward:mentions_keyword",
                                         "reward:get_soft_overlong_punishment"]
    mixed = load_config(["recipe=tiny", "reward.funcs=[toy,asset:imdb-sentiment]", "reward.weights=[2,0.25]"])
    text = model_card(mixed, [Path("model.safetensors")], None, [])
    assert ("- 2 × toy reward: frequency of 'a' in the completion\n"
            "- 0.25 × sequence-classification reward model `asset:imdb-sentiment`\n") in text


def test_card_claims_a_critic_only_when_the_estimator_trains_one():
    grpo = load_config(["recipe=gsm8k-grpo-offline"])
    assert not grpo.algorithm.uses_critic
    text = model_card(grpo, [Path("model.safetensors")], None, [])
    assert "critic" not in text.replace("no critic", "")  # every mention says there is none
    assert "minus a KL penalty to the base model, with `grpo` advantages, which need no critic." in text
    assert ("The run trained no critic (`grpo` needs none). To get the policy as `rlhf_app` holds it, use "
            "`rlhf_app`:") in text
    assert "# values: None, as this run has no critic" in text
    assert "GSM8K answer check (strict extraction): 1.0 if correct" in text
    gae = model_card(load_config(["recipe=tiny"]), [Path("model.safetensors"), Path("value_head.safetensors")],
                     None, [])
    assert "minus a KL penalty to the base model, with a learned critic." in gae
    assert "The critic is `value_head.safetensors` (a linear head on the policy's last hidden state)." in gae


def test_card_snippets_load_the_uploaded_folder(run_dir):
    """The card's two code blocks run against the prepared folder in place of the Hub repo."""
    folder = hub.prepare_upload(run_dir, make_cfg(run_dir, "hub.repo_id=alice/tiny-ppo"))
    text = (folder / "README.md").read_text()
    assert "base_model" not in ModelCard(text).data.to_dict()  # asset:tiny is no Hub id
    plain, with_critic = re.findall(r"```python\n(.*?)```", text, re.S)
    scope = {}
    exec(plain.replace("alice/tiny-ppo", str(folder)).replace("max_new_tokens=32", "max_new_tokens=4"), scope)
    ids = torch.tensor([[5, 6, 7]])
    scope = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    exec(with_critic.replace('snapshot_download("alice/tiny-ppo")', repr(str(folder))), scope)
    assert scope["values"].shape == (1, 3) and torch.all(scope["values"] == 0)  # the zero head saved above


def test_tokens_are_scrubbed_from_config_and_card(run_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_FAKE)
    monkeypatch.setenv("WANDB_API_KEY", WANDB_FAKE)
    cfg = make_cfg(run_dir, f"reward.function=rewards.py:{HF_FAKE}", f"reward.model={WANDB_FAKE}",
                   f"model.revision={SHA}")
    folder = hub.prepare_upload(run_dir, cfg)
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert HF_FAKE.encode() not in data and WANDB_FAKE.encode() not in data, path
    config = (folder / "config.yaml").read_text()
    assert "rewards.py:<redacted>" in config and "model: <redacted>" in config
    assert f"revision: {SHA}" in config  # a pinned commit id is no secret


def test_refuses_a_token_left_in_run_files(run_dir, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "local-secret-key-0001")  # any value of a token variable counts
    evaluation = json.loads((run_dir / "eval.json").read_text())
    evaluation["after"]["samples"][0]["completion"] = "my key is local-secret-key-0001"
    (run_dir / "eval.json").write_text(json.dumps(evaluation))
    with pytest.raises(hub.HubError, match=r"refusing to upload: eval\.json holds a token-like string") as err:
        hub.prepare_upload(run_dir, make_cfg(run_dir))
    assert "local-secret-key-0001" not in str(err.value)
    assert not (run_dir / "hub_upload").exists()
    assert [p for p in run_dir.iterdir() if p.name.startswith(".")] == []


@pytest.fixture
def hub_calls(monkeypatch):
    """Record HfApi.create_repo/upload_folder instead of calling the Hub."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs, self.token))

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs, sorted(listing(Path(kwargs["folder_path"])))))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_dry_run_prepares_and_lists_without_calling_the_hub(run_dir, hub_calls, capsys):
    result = hub.push(run_dir, make_cfg(run_dir, "hub.dry_run=true"))  # no repo id, offline: fine for a dry run
    out = capsys.readouterr().out
    assert result == str(run_dir / "hub_upload") and hub_calls == []
    assert f"dry run: would upload {run_dir / 'hub_upload'} (12 files)" in out
    assert "  value_head.safetensors  388 bytes" in out and "  plots/diagnostics.png" in out


def test_push_creates_the_repo_and_uploads_the_folder(run_dir, hub_calls, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", HF_FAKE)
    cfg = make_cfg(run_dir, "hub.repo_id=alice/tiny-ppo", "hub.private=true", "hub.commit_message=first push")
    assert hub.push(run_dir, cfg) == "https://huggingface.co/alice/tiny-ppo"
    (create, repo_id, kwargs, token), (upload, up_repo, up_kwargs, files) = hub_calls
    assert (create, repo_id, token) == ("create_repo", "alice/tiny-ppo", HF_FAKE)
    assert kwargs == {"private": True, "repo_type": "model", "exist_ok": True}
    assert (upload, up_repo) == ("upload_folder", "alice/tiny-ppo")
    assert up_kwargs["folder_path"] == run_dir / "hub_upload" and up_kwargs["repo_type"] == "model"
    assert up_kwargs["commit_message"] == "first push" and up_kwargs["delete_patterns"] == "*"
    assert set(files) == MODEL_FILES | RUN_FILES
    # no connection: the one-line offline hint, not a traceback from the HTTP client
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    with pytest.raises(hub.HubError, match="cannot be reached.*hub.dry_run=true"):
        hub.push(run_dir, cfg)


@pytest.mark.parametrize("overrides, env, message", [
    ([], {"HF_TOKEN": HF_FAKE}, r"hub\.repo_id is not set: pass hub\.repo_id=user/name"),
    (["hub.repo_id=noslash"], {"HF_TOKEN": HF_FAKE}, r"not a Hub repo id: write hub\.repo_id=user/name"),
    (["hub.repo_id=alice/x"], {"HF_TOKEN": HF_FAKE, "HF_HUB_OFFLINE": "1"},
     r"cannot be reached .*hub\.dry_run=true .*python scripts/push\.py run_dir=.*/run hub\.repo_id=alice/x"),
    (["hub.repo_id=alice/x"], {}, r"no Hugging Face token: run `hf auth login` .*HF_TOKEN"),
])
def test_push_errors_are_one_line(run_dir, hub_calls, monkeypatch, overrides, env, message):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: os.environ.get("HF_TOKEN"))
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(hub.HubError, match=message) as err:
        hub.push(run_dir, make_cfg(run_dir, *overrides))
    assert "\n" not in str(err.value) and hub_calls == []
    assert not (run_dir / "hub_upload").exists()  # checked before anything is built


def test_push_command_reads_the_recorded_config(run_dir, capsys):
    make_cfg(run_dir, "ppo.kl_coef=0.2")
    main(["push", f"run_dir={run_dir}", "hub.dry_run=true", "hub.repo_id=alice/later"])
    out = capsys.readouterr().out
    assert "README.md" in out and "model.safetensors" in out
    card = (run_dir / "hub_upload" / "README.md").read_text()
    assert "| `ppo.kl_coef` | 0.2 |" in card and 'from_pretrained("alice/later")' in card
    with pytest.raises(SystemExit, match=r"^error: ppo\.kl_coef cannot change after training: only hub\.\* keys"):
        main(["push", f"run_dir={run_dir}", "ppo.kl_coef=1"])
    with pytest.raises(SystemExit, match=r"^error: pass the run folder once"):
        main(["push", "hub.dry_run=true"])
    with pytest.raises(SystemExit, match=r"config\.yaml does not exist"):
        main(["push", f"run_dir={run_dir / 'final'}", "hub.dry_run=true"])


def test_card_says_what_is_missing(run_dir):
    shutil.rmtree(run_dir / "plots")
    (run_dir / "eval.json").unlink()
    folder = hub.prepare_upload(run_dir, make_cfg(run_dir, "eval_before_after=false"))
    text = (folder / "README.md").read_text()
    assert "No diagnostics plot was recorded." in text and "plots/diagnostics.png" not in text
    assert "No before/after evaluation was recorded" in text
    assert listing(folder) == MODEL_FILES | {"README.md", "config.yaml", "metrics.jsonl", "value_head.safetensors"}


def test_licence_comes_from_the_base_model_card_or_asset(run_dir, tmp_path, monkeypatch):
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\n---\n# a base model\n")
    cfg = make_cfg(run_dir, f"model.name_or_path={base}")
    assert hub.base_license(cfg) == "mit"
    assert ModelCard((hub.prepare_upload(run_dir, cfg) / "README.md").read_text()).data.license == "mit"
    assert hub.base_license(make_cfg(run_dir, f"model.name_or_path={base}", "hub.license=other")) == "other"
    monkeypatch.setenv("RLHF_APP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "tiny").mkdir(parents=True)
    (tmp_path / "cache" / "tiny" / "asset.json").write_text('{"name": "tiny", "license": "apache-2.0"}')
    assert hub.base_license(make_cfg(run_dir)) == "apache-2.0"
    (tmp_path / "cache" / "tiny" / "asset.json").write_text('{"name": "tiny"}')
    assert hub.base_license(make_cfg(run_dir)) is None
