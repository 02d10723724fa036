"""Tests run offline, single-threaded, with assets built in quick mode into a private cache."""

import os
import tempfile

from rlhf_app.offline import set_network_env

set_network_env(offline=True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RLHF_APP_ASSET_QUICK", "1")
os.environ.setdefault("RLHF_APP_CACHE", tempfile.mkdtemp(prefix="rlhf_app-test-cache-"))

import torch  # noqa: E402

torch.set_num_threads(1)
