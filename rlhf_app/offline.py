"""The network switches, defined once: no telemetry ever; with `offline: true`, no Hub or W&B call at all.

Set them before the heavy imports: huggingface_hub reads them once, at import. A leaf that imports
only `os`, so the tests, the benchmark and TRL's side of it (another environment) can share it.
"""

from __future__ import annotations

import os
from typing import MutableMapping

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "offline"}


def set_network_env(offline: bool, environ: MutableMapping[str, str] = os.environ) -> None:
    """Telemetry off; with `offline`, every switch of OFFLINE_ENV on. A value already set wins."""
    if offline:
        for key, value in OFFLINE_ENV.items():
            environ.setdefault(key, value)
    environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
