"""The GPU check's arithmetic, plain Python (testable without a GPU): the chips' bf16 peaks, model
FLOPs and MFU of a PPO update, one run's figures from its metrics.jsonl, and two runs compared.

MFU here is model FLOPs utilisation as PaLM (Chowdhery et al. 2022, appendix B) defines it: the
FLOPs the model's matmuls need, 2·N per token for a forward and 6·N for forward + backward (N = the
policy's parameters; attention's own FLOPs left out), divided by the chip's dense bf16 peak.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

# Dense (not 2:4-sparse) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's data sheets. The first key
# found in torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_TFLOPS = [
    ("GH200", 989.4), ("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4),
    ("H800", 989.4), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("RTX 6000 Ada", 364.2), ("A6000", 154.8), ("RTX 4090", 165.2),
]  # a chip not listed: --peak-tflops
NO_BF16 = ("T4", "V100", "P100")  # pre-Ampere: no bf16 tensor cores; MFU against a bf16 peak is meaningless
# One PPO update's passes over its tokens, as rlhf_app runs them: sampling (prefill + decoding: one
# forward per token), the no-grad forwards (the rollout policy's log-probs and values, the reference's
# log-probs), and num_ppo_epochs forward + backward passes.
NO_GRAD_FORWARDS = 2
# metrics.jsonl keys compared between an interrupted-and-resumed run and an uninterrupted one: all
# but wall-clock figures.
TIMING_PREFIXES = ("time/", "perf/")


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of the chip named `device_name` (torch.cuda.get_device_name / nvidia-smi),
    None when it is not in the table or has no bf16 tensor cores."""
    if any(key in device_name for key in NO_BF16):
        return None
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device_name), None)


def update_flops(n_params: float, tokens: float, epochs: int, no_grad_forwards: int = NO_GRAD_FORWARDS) -> float:
    """Model FLOPs of one PPO update over `tokens` tokens (prompt + response, all processes):
    2N per token to sample, 2N per no-grad forward, 6N per epoch."""
    return n_params * tokens * (2 + 2 * no_grad_forwards + 6 * epochs)


def mfu(flops_per_update: float, s_per_update: float, peak: float | None, processes: int = 1) -> float | None:
    """Model FLOPs utilisation: FLOP/s achieved over the peak of `processes` chips (TFLOP/s)."""
    if peak is None or s_per_update <= 0:
        return None
    return flops_per_update / s_per_update / (peak * 1e12 * processes)


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def logged_updates(run_dir: Path) -> int:
    """Complete lines of a live run's metrics.jsonl (one per update; a line being written is not counted)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def run_figures(run_dir: Path, n_params: float, epochs: int, peak: float | None, processes: int = 1) -> dict:
    """s/update, tokens/s (medians over the updates after the first, which compiles and warms up) and
    the MFU of one finished run folder."""
    rows = read_metrics(run_dir)
    if not rows:
        return {"updates": 0}
    timed = rows[1:] or rows
    s_update = statistics.median(r["time/update_s"] for r in timed)
    tokens = statistics.median(r["perf/tokens_per_s"] * r["time/update_s"] for r in timed)
    return {"updates": len(rows), "s_per_update": s_update, "tokens_per_s": tokens / s_update,
            "tokens_per_update": tokens, "generate_s": statistics.median(r["time/generate_s"] for r in timed),
            "train_s": statistics.median(r["time/train_s"] for r in timed),
            "mfu": mfu(update_flops(n_params, tokens, epochs), s_update, peak, processes),
            "score_first": rows[0].get("objective/scores"), "score_last": rows[-1].get("objective/scores")}


def metrics_difference(a: list[dict], b: list[dict]) -> dict:
    """The largest |a - b| over every logged number but the timings, update by update; an update or a
    key only one side logged makes them differ (`same_rows` false)."""
    worst, where = 0.0, None
    same_rows = len(a) == len(b)
    for update, (row_a, row_b) in enumerate(zip(a, b), start=1):
        keys = {k for k in row_a.keys() | row_b.keys() if not k.startswith(TIMING_PREFIXES)}
        for key in sorted(keys):
            va, vb = row_a.get(key), row_b.get(key)
            if not isinstance(va, (int, float)) or not isinstance(vb, (int, float)):
                same_rows &= va == vb
                continue
            if abs(va - vb) > worst:
                worst, where = abs(va - vb), f"{key} at update {update}"
    return {"max_abs_diff": worst, "where": where, "same_rows": same_rows, "exact": same_rows and worst == 0.0}


def write_json(result: dict, path: Path) -> Path:
    """`result` as indented JSON at `path`, whole or not at all (a temporary name, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(path)
    return path
