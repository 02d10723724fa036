"""Tests run offline, single-threaded, with assets built in quick mode into a private cache."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RLHF_APP_ASSET_QUICK", "1")
os.environ.setdefault("RLHF_APP_CACHE", tempfile.mkdtemp(prefix="rlhf_app-test-cache-"))

import torch  # noqa: E402

torch.set_num_threads(1)
