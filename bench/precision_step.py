"""fp32 against bf16 autocast on one PPO micro-step of SmolLM2-135M, alternating in one process.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/precision_step.py B P R REPS

Forward + backward of `logprobs_values` (B episodes, P prompt + R response tokens) in fp32 and under
bf16 autocast, REPS times each in alternating order, then the 2048² torch.mm peak in both precisions.
Answers whether this CPU's bf16 instructions speed a real step, apart from the rest of an update.
"""
import statistics as st
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
torch.set_num_threads(1)
from rlhf_app.models import policy as models  # noqa: E402
from rlhf_app.config import load_config  # noqa: E402
from rlhf_app.rl.rollout import logprobs_values  # noqa: E402


def step(model, batch, amp: bool) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        logprobs, values, _ = logprobs_values(model, *batch, 1.0, with_entropy=True, entropy_grad=False)
    (logprobs.mean() + values.mean()).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def mm_peak(dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def main(b: int, p: int, r: int, reps: int) -> None:
    model = models.build_models(load_config(["recipe=tiny", "model.name_or_path=asset:smollm2-135m-instruct"]))[0]
    model.train()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randint(10, 49000, (b, p), generator=g), torch.ones(b, p, dtype=torch.long),
             torch.randint(10, 49000, (b, r), generator=g), torch.ones(b, r))
    step(model, batch, False), step(model, batch, True)  # warm-up
    times = {False: [], True: []}
    for i in range(reps):
        for amp in ((False, True) if i % 2 == 0 else (True, False)):
            times[amp].append(step(model, batch, amp))
    f32, b16 = times[False], times[True]
    print(f"B={b} P={p} R={r}: fp32 best {min(f32):.2f} s (median {st.median(f32):.2f}), bf16 best {min(b16):.2f} s "
          f"(median {st.median(b16):.2f}); bf16 speed-up {min(f32) / min(b16):.2f}x best, "
          f"{st.median(f32) / st.median(b16):.2f}x median")
    print(f"torch.mm peak GFLOP/s: fp32 {mm_peak(torch.float32) / 1e9:.1f}, bf16 {mm_peak(torch.bfloat16) / 1e9:.1f}")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:5]))
