"""Run by tests/test_distributed.py under `accelerate launch`: trains a few tiny updates, then
writes what each process ended with (distributed type, world size, a weight fingerprint)."""

import hashlib
import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from rlhf_app.run import run
from rlhf_app.config import load_config

if __name__ == "__main__":
    torch.set_num_threads(1)
    cfg = load_config(sys.argv[1:])
    result = run(cfg)
    state = PartialState()
    digest = hashlib.sha256()
    for name, tensor in sorted(result["model"].state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    out = Path(cfg.output_dir) / f"rank{state.process_index}.json"
    out.write_text(json.dumps({"distributed_type": str(state.distributed_type), "num_processes": state.num_processes,
                               "weights": digest.hexdigest(), "step": result["step"]}))
