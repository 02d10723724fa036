"""Push a finished run to the Hugging Face Hub: policy, critic, recipe, metrics, plots and a model card; or
a finished SFT / reward-model stage: its final/, recipe, metrics, rm_eval.json, plots and its own card
(hub/stage_card.py).

`prepare_upload(run_dir, cfg)` builds `run_dir/hub_upload/`, exactly the folder that would be
uploaded, in a temporary folder renamed into place. `push(run_dir, cfg)` uploads it, or with
`hub.dry_run=true` only lists it. Tokens never leave the machine: the recipe and the card are
scrubbed, and a token-like string left in any text file of the folder stops the push.
`python scripts/push.py run_dir=runs/NAME hub.repo_id=user/name` (rlhf_app/cli/push.py) pushes a run later.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
from pathlib import Path

from rlhf_app.config import TrainConfig, to_yaml
from rlhf_app.errors import UserError
from rlhf_app.hub.card import base_license, model_card  # noqa: F401  (base_license: part of hub's API)
from rlhf_app.hub.stage_card import read_json, run_stage, stage_card
from rlhf_app.run_dir.atomic import building
from rlhf_app.run_dir.checkpoint import checkpoints

UPLOAD_DIR = "hub_upload"
LAST_CHECKPOINT = "last-checkpoint"  # transformers' folder name for hub_strategy="checkpoint"
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
# HF user tokens are hf_ + 34 letters/digits; W&B API keys are 40 hex digits.
TOKEN_PATTERNS = (re.compile(r"hf_[A-Za-z0-9]{30,}"), re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{40}(?![0-9A-Za-z])"))
MODEL_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".jinja", ".tiktoken")
NOT_UPLOADED = {"trainer_state.json", "asset.json"}  # resume bookkeeping, local build info
TEXT_SUFFIXES = (".json", ".jsonl", ".yaml", ".yml", ".md", ".txt", ".jinja")
UPLOADED_RUN_FILES = ("metrics.jsonl", "eval.json", "rm_eval.json")  # beside the model: what the card and a reader use


class HubError(UserError, RuntimeError):
    """A push that cannot go ahead; the message is one line that names the fix."""


def find_secrets(text: str, allow: tuple[str, ...] = ()) -> list[str]:
    """Token-like substrings of `text`: HF and W&B key shapes, and the values of the token env vars."""
    found = [m.group(0) for pattern in TOKEN_PATTERNS for m in pattern.finditer(text)]
    found += [v for v in (os.environ.get(k, "") for k in TOKEN_ENV) if len(v) >= 8 and v in text]
    return sorted({s for s in found if s not in allow}, key=len, reverse=True)


def scrub(text: str, allow: tuple[str, ...] = ()) -> str:
    """`text` with every token-like substring replaced by `<redacted>`."""
    for secret in find_secrets(text, allow):
        text = text.replace(secret, "<redacted>")
    return text


def _source_dir(run_dir: Path, cfg: TrainConfig) -> Path:
    name = cfg.hub.checkpoint or "final"
    src = run_dir / name
    if not src.is_dir():
        hint = "train to the end first, or push a checkpoint with hub.checkpoint=checkpoint-N" \
            if name == "final" else "choose one of " + ", ".join(sorted(p.name for p in run_dir.glob("checkpoint-*")))
        raise HubError(f"{src} does not exist: {hint}")
    if not any(src.glob("*.safetensors")):
        raise HubError(f"{src} holds no .safetensors weights: pass the folder a training run saved")
    return src


def _last_checkpoint(run_dir: Path, src: Path) -> Path | None:
    """The checkpoint uploaded as `last-checkpoint/`: the one pushed, else the run's newest."""
    found = checkpoints(run_dir)
    return src if src in found else (found[-1] if found else None)


def model_files(src: Path) -> list[Path]:
    """Files of a saved policy folder worth uploading (weights, configs, tokenizer, critic), relative to it.

    Optimizer, RNG and trainer state (`*.pt`, `trainer_state.json`) stay behind: they only serve resume.
    """
    return sorted(p.relative_to(src) for p in src.rglob("*")
                  if p.is_file() and p.suffix in MODEL_SUFFIXES and p.name not in NOT_UPLOADED)


def _place(src: Path, dst: Path, link: bool = False) -> None:
    """Hard-link weights (gigabytes, never rewritten); copy the rest, which a resumed run may append to."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst) if link or src.suffix == ".safetensors" else shutil.copy2(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def check_folder(folder: Path, allow: tuple[str, ...] = ()) -> None:
    """Refuse (HubError) if any text file of `folder` holds a token-like string."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            secrets = find_secrets(path.read_text(errors="replace"), allow)
            if secrets:
                raise HubError(f"refusing to upload: {path.relative_to(folder)} holds a token-like string "
                               f"({secrets[0][:5]}…); remove it from the run folder and push again")


# ---- model card
def prepare_upload(run_dir: str | Path, cfg: TrainConfig, target: str = UPLOAD_DIR) -> Path:
    """Build `run_dir/<target>/` (default `hub_upload/`): exactly the folder `push` uploads. Returns its path.

    Holds the policy + tokenizer and critic (from `final/` or `hub.checkpoint`), the resolved
    recipe (`config.yaml`, scrubbed), `metrics.jsonl`, `eval.json` (a stage: `rm_eval.json`), `plots/*.png` and
    `README.md`;
    with `hub.strategy=checkpoint` also `last-checkpoint/`, the newest checkpoint whole (resume state too).
    Written into a temporary folder and renamed, so a half-written folder never remains.
    """
    run_dir = Path(run_dir)
    src = _source_dir(run_dir, cfg)
    allow = (cfg.model.revision,) if cfg.model.revision else ()  # a pinned commit id is 40 hex, not a key
    target = run_dir / target
    with building(target) as tmp:
        files = model_files(src)
        for rel in files:
            _place(src / rel, tmp / rel)
        newest = _last_checkpoint(run_dir, src) if cfg.hub.strategy == "checkpoint" else None
        for path in sorted(newest.rglob("*")) if newest else ():
            if path.is_file():  # a checkpoint is never rewritten (atomic, renamed into place): link it all
                _place(path, tmp / LAST_CHECKPOINT / path.relative_to(newest), link=True)
        (tmp / "config.yaml").write_text(scrub(to_yaml(cfg), allow))
        for name in UPLOADED_RUN_FILES:
            if (run_dir / name).is_file():
                _place(run_dir / name, tmp / name)
        for png in sorted((run_dir / "plots").glob("*.png")):
            _place(png, tmp / "plots" / png.name)
        metrics = [json.loads(line) for line in (tmp / "metrics.jsonl").read_text().splitlines()
                   if line.strip()] if (tmp / "metrics.jsonl").is_file() else []
        uploaded = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file())
        stage = run_stage(run_dir, cfg, metrics)
        if stage:  # an SFT / reward-model stage: its final/ is a plain transformers folder
            card = stage_card(cfg, stage, uploaded, metrics, read_json(tmp / "rm_eval.json"),
                              read_json(tmp / "config.json") or {}, source=src.name)
        else:
            card = model_card(cfg, uploaded, read_json(tmp / "eval.json"), metrics, source=src.name)
        (tmp / "README.md").write_text(scrub(card, allow))
        check_folder(tmp, allow)
    return target


def _offline_message(cfg: TrainConfig, run_dir: Path | None = None) -> str:
    """The line for a Hub out of reach; it names the folder being pushed (a run may have moved since training)."""
    return ("the Hugging Face Hub cannot be reached (offline, or HF_HUB_OFFLINE=1): set hub.dry_run=true to "
            "prepare the upload folder now, and push later with python scripts/push.py "
            f"run_dir={run_dir or cfg.output_dir} "
            f"hub.repo_id={cfg.hub.repo_id or 'user/name'}")


def check_push(cfg: TrainConfig, run_dir: Path | None = None) -> str | None:
    """Fail fast (HubError) if a real push cannot work: no repo id, offline, no token. Returns the token.

    With `hub.dry_run=true` nothing is needed and None is returned. Cheap and local (no network
    call), so a training run calls it before its first update rather than after its last.
    """
    if cfg.hub.dry_run:
        return None
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = cfg.hub.repo_id
    if not repo_id:
        raise HubError("hub.repo_id is not set: pass hub.repo_id=user/name (or hub.dry_run=true to only prepare)")
    try:
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise HFValidationError("no namespace")
    except HFValidationError:
        raise HubError(f"hub.repo_id={repo_id!r} is not a Hub repo id: write hub.repo_id=user/name") from None
    from huggingface_hub import constants

    # The env var as it is now, and as huggingface_hub read it at import (it obeys the latter).
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or constants.HF_HUB_OFFLINE:
        raise HubError(_offline_message(cfg, run_dir))
    token = get_token() or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token:
        raise HubError("no Hugging Face token: run `hf auth login` (formerly `huggingface-cli login`) "
                       "or set HF_TOKEN")
    return token


def _network_errors() -> tuple[type[BaseException], ...]:
    """OSError and the transport errors of whichever HTTP client huggingface_hub uses (it changed over releases)."""
    found = [OSError]
    for name in ("httpx2", "httpx", "requests"):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(name)
            found.append(getattr(module, "TransportError", None) or module.ConnectionError)
    return tuple(found)


def print_listing(folder: Path, cfg: TrainConfig) -> None:
    """What a dry run would upload: the folder, then each file and its size."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    print(f"dry run: would upload {folder} ({len(files)} files) to {cfg.hub.repo_id or 'hub.repo_id'}")
    for path in files:
        print(f"  {path.relative_to(folder)}  {path.stat().st_size:,} bytes")


def upload(folder: Path, cfg: TrainConfig, token: str, commit_message: str | None = None) -> str:
    """Upload a prepared folder to `hub.repo_id` (created if needed), which becomes exactly it. Returns the URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    repo_id = cfg.hub.repo_id
    try:
        api.create_repo(repo_id, private=cfg.hub.private, repo_type="model", exist_ok=True)
        # delete_patterns="*": the repo becomes exactly this folder (a stale value_model/ from an earlier
        # push would mislead load_policy); the Hub keeps .gitattributes regardless.
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model",
                                   commit_message=commit_message or cfg.hub.commit_message, delete_patterns="*")
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", "?")
        fix = "check the token's write access (`hf auth login`)" if status in (401, 403) else "see the Hub's reply"
        raise HubError(f"the Hub refused the push to {repo_id} (HTTP {status}): {fix}") from err
    except _network_errors() as err:
        raise HubError(_offline_message(cfg, folder.parent)) from err
    return getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"


def push(run_dir: str | Path, cfg: TrainConfig) -> str:
    """Prepare `run_dir/hub_upload/` and upload it to `hub.repo_id` (model repo). Returns a URL or the folder.

    `hub.dry_run=true`: only prepare, print the folder and its files, and return the folder path.
    """
    token = check_push(cfg, run_dir)
    folder = prepare_upload(run_dir, cfg)
    if cfg.hub.dry_run:
        print_listing(folder, cfg)
        return str(folder)
    url = upload(folder, cfg, token)
    print(f"pushed {folder} to https://huggingface.co/{cfg.hub.repo_id} ({url})")
    return url
