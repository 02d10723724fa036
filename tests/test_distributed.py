"""Two CPU processes (gloo DDP) train together and end with identical weights."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_two_processes_end_with_identical_weights(tmp_path):
    # `--cpu --num_processes 2` would start ONE process; ACCELERATE_USE_CPU with --multi_gpu gives MULTI_CPU.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           str(ROOT / "tests" / "dist_worker.py"), "recipe=tiny", f"output_dir={tmp_path}",
           "ppo.total_episodes=96", "ppo.per_device_train_batch_size=8", "eval_before_after=false"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["distributed_type"] == "DistributedType.MULTI_CPU" for r in ranks), ranks
    assert all(r["num_processes"] == 2 for r in ranks)
    # 96 episodes / (8 x 1 x 2 mini-batches per process x 2 processes) = 3 updates.
    assert [r["step"] for r in ranks] == [3, 3]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
