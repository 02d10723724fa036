"""Whether a checkpoint can be resumed from: every file whole (checked before any model loads, from
file headers only), and weights of this run's setup (checked when they load). Each failure is one
line that names the file or the difference, and the way on.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import yaml

from rlhf_app.errors import UserError


class CheckpointError(UserError):
    """A checkpoint that cannot be resumed from: a damaged file, or weights of another setup."""


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0][:200] if text else type(err).__name__).rstrip(".")


def _unreadable(file: Path) -> str | None:
    """Why `file` cannot be read whole, or None. By kind: JSON and YAML parse; safetensors check their
    header against the file's length; torch.save files are zip archives whose index sits at the end."""
    from safetensors import SafetensorError, safe_open

    try:
        if file.suffix == ".json":
            json.loads(file.read_text())
        elif file.suffix in (".yaml", ".yml"):
            if not isinstance(yaml.safe_load(file.read_text()), dict):
                return "not a mapping of settings"
        elif file.suffix == ".safetensors":
            with safe_open(str(file), "numpy"):
                pass
        elif file.suffix in (".pt", ".bin"):
            with zipfile.ZipFile(file):
                pass
    except (OSError, ValueError, yaml.YAMLError, zipfile.BadZipFile, SafetensorError) as err:
        return first_line(err)
    return None


def _policy_files(path: Path) -> list[str]:
    """The files save_pretrained writes the policy's weights into: LoRA adapters, shards, or one file."""
    if (path / "adapter_config.json").is_file():
        return ["adapter_model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file() and _unreadable(index) is None:
        return ["config.json", *sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))]
    return ["config.json", "model.safetensors"]


def damage(path: Path, state_json: str, required: tuple[str, ...]) -> tuple[Path, str] | None:
    """(file, why) for the first missing or damaged file of checkpoint `path`; None when it is whole.

    `state_json` says how many processes saved it: each left its own optimizer and RNG state."""
    path = Path(path)
    for name in (state_json, *required):
        if not (path / name).is_file():
            return path / name, "missing"
    reason = _unreadable(path / state_json)
    if reason is not None:
        return path / state_json, reason
    saved = json.loads((path / state_json).read_text())
    saved = saved if isinstance(saved, dict) else {}
    processes = saved.get("num_processes", 1)
    if not isinstance(saved.get("step"), int) or not isinstance(processes, int) or processes < 1:
        return path / state_json, "no step and num_processes in it"
    for name in [f"{kind}_{r}.pt" for r in range(int(processes)) for kind in ("optimizer", "rng_state")]:
        if not (path / name).is_file():
            return path / name, "missing"
    for name in _policy_files(path):
        if not (path / name).is_file():
            return path / name, "missing"
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        reason = _unreadable(file)
        if reason is not None:
            return file, reason
    return None


def _describe(saved: dict, expected: dict) -> str:
    """What setup differs between two {name: shape} weight listings, in a few words."""
    def lora(keys):
        return any(".lora_" in k for k in keys)

    def critic(keys):
        parts = {k.split(".")[0] for k in keys} & {"value_head", "critic"}
        return "a value head" if parts == {"value_head"} else "a critic model" if parts else "no critic"

    if lora(saved) != lora(expected):
        on = {True: "on", False: "off"}
        return (f"LoRA adapters {on[lora(saved)]} in the checkpoint, {on[lora(expected)]} in this run: "
                "peft.enabled differs")
    if critic(saved) != critic(expected):
        return (f"{critic(saved)} in the checkpoint, {critic(expected)} in this run: "
                "algorithm.advantage_estimator or model.value_model differs")
    for key in expected:
        if key in saved and tuple(saved[key]) != tuple(expected[key]):
            return (f"{key} is {list(saved[key])} in the checkpoint, {list(expected[key])} in this run: "
                    "another model or model shape")
    missing, unexpected = [k for k in expected if k not in saved], [k for k in saved if k not in expected]
    parts = ([f"{len(missing)} weights missing (e.g. {missing[0]})"] if missing else []) + \
            ([f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else [])
    return f"{' and '.join(parts) or 'weights that do not load'}: another model"


def mismatch_error(path: Path, saved: dict, expected: dict) -> CheckpointError:
    """The one line for weights of another setup ({name: shape} each)."""
    return CheckpointError(f"{path} holds the weights of another setup ({_describe(saved, expected)}): resume "
                           f"with the settings it was saved with ({Path(path) / 'config.yaml'}), or start a new "
                           "run in another output_dir")
