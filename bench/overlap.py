"""Updates per second with rollouts in turn (sync) against rollouts overlapped with training
(`rollout.async=true`), both through the vLLM engine, with the learning curves side by side.

Each variant is one `scripts/train.py` run in its own process (fresh engine, own threads), the order
flipping every pair. Update 1 is left out of the rate: it holds vLLM's warm-up, and under async it is
sampled in turn. A variant is MODE:THREADS, THREADS the run's `num_threads` (and OMP_NUM_THREADS):
under async the trainer and the engine's thread each run that many, so on 2 cores compare
`sync:2` with `async:1` (the defaults: all cores, and half per thread).

    python bench/overlap.py --recipes demo --updates 3                       # a smoke run (~2 min here)
    python bench/overlap.py --recipes demo,gsm8k-offline --updates 20 --pairs 2 --out bench/overlap.json

Results (JSON, default runs/bench-overlap/results.json: a quick run never touches the committed
file; a file that exists keeps the recipes this run did not run) hold each run's s/update, updates/s, phase times, scores per update and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train.py"
# Per recipe: what makes the run a pure training run through vLLM (no held-out evaluation in the timing).
RECIPE_ARGS = {"demo": ["rollout.engine=vllm"], "gsm8k-offline": ["eval_steps=0"]}
PHASES = ("time/generate_s", "time/sampling_s", "time/reward_s", "time/forward_s", "time/train_s",
          "time/weight_sync_s")


def _episodes_per_update(recipe: str) -> int:
    sys.path.insert(0, str(ROOT))
    from rlhf_app.config import load_config

    return load_config([f"recipe={recipe}"]).ppo.local_batch_size


def run_variant(recipe: str, mode: str, threads: int, updates: int, out: Path) -> dict:
    args = [f"recipe={recipe}", f"output_dir={out}", "overwrite_output_dir=true", "eval_before_after=false",
            f"ppo.total_episodes={updates * _episodes_per_update(recipe)}", f"num_threads={threads}",
            "sample_every=0", *RECIPE_ARGS.get(recipe, []), *(["rollout.async=true"] if mode == "async" else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start, load = time.perf_counter(), os.getloadavg()[0]
    proc = subprocess.run([sys.executable, str(TRAIN), *args], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{recipe} {mode}:{threads} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = rows[1:] or rows
    seconds = sum(r["time/update_s"] for r in steady)
    return {"recipe": recipe, "mode": mode, "threads": threads, "updates": len(rows),
            "s_per_update": seconds / len(steady), "updates_per_s": len(steady) / seconds, "wall_s": wall,
            "phases_s": {p: statistics.mean(r.get(p, 0.0) for r in steady) for p in PHASES},
            "scores": [r["objective/scores"] for r in rows],
            "staleness": [r.get("rollout/staleness", 0.0) for r in rows],
            "importance_weight_std": [r.get("rollout/importance_weight_std") for r in rows],
            "load_before": load, "load_after": os.getloadavg()[0], "args": args}


def main(argv=None) -> None:
    cores = os.cpu_count() or 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="demo,gsm8k-offline")
    parser.add_argument("--updates", type=int, default=10, help="updates per run (the first is not timed)")
    parser.add_argument("--pairs", type=int, default=1, help="runs of each variant, the order flipping per pair")
    parser.add_argument("--variants", default=f"sync:{cores},async:{max(1, cores // 2)}", help="MODE:THREADS,...")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-overlap" / "results.json")
    args = parser.parse_args(argv)
    variants = [(v.split(":")[0], int(v.split(":")[1])) for v in args.variants.split(",")]
    if args.updates < 2 or any(m not in ("sync", "async") for m, _ in variants):
        parser.error("--updates must be >= 2 and each variant sync:N or async:N")
    runs = []
    for recipe in args.recipes.split(","):
        for pair in range(args.pairs):
            for mode, threads in (variants if pair % 2 == 0 else variants[::-1]):
                run = run_variant(recipe, mode, threads, args.updates,
                                  args.out.parent / "runs" / f"{recipe}-{mode}{threads}-{pair}")
                runs.append(run)
                print(f"{recipe} {mode}:{threads} pair {pair}: {run['s_per_update']:.2f} s/update "
                      f"({run['updates_per_s']:.3f} updates/s), load {run['load_before']:.1f}", flush=True)
    summary = {}
    for recipe in args.recipes.split(","):
        rate = {f"{m}:{t}": statistics.mean(r["updates_per_s"] for r in runs if r["recipe"] == recipe
                                           and (r["mode"], r["threads"]) == (m, t)) for m, t in variants}
        summary[recipe] = {"updates_per_s": rate}
        names = list(rate)
        summary[recipe]["against_first"] = {n: rate[n] / rate[names[0]] for n in names[1:]}
        for n in names[1:]:
            print(f"{recipe}: {n} / {names[0]} = {rate[n] / rate[names[0]]:.2f}x updates/s")
        curves = {n: next(r["scores"] for r in runs if r["recipe"] == recipe and f"{r['mode']}:{r['threads']}" == n)
                  for n in names}
        print("update  " + "  ".join(f"{n:>10}" for n in names))
        for i in range(args.updates):
            print(f"{i + 1:>6}  " + "  ".join(f"{curves[n][i]:>10.3f}" for n in names))
    merged = _merge(args.out, summary, runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cores": cores, **merged}, indent=1))
    tmp.replace(args.out)
    print(f"results: {args.out} (recipes {', '.join(summary)} replaced; others kept)")


def _merge(out: Path, summary: dict, runs: list[dict]) -> dict:
    """The file's other recipes kept, this run's recipes replaced: long benches run recipe by recipe."""
    old = json.loads(out.read_text()) if out.exists() else {"summary": {}, "runs": []}
    kept = [r for r in old.get("runs", []) if r["recipe"] not in summary]
    return {"summary": {**{k: v for k, v in old.get("summary", {}).items() if k not in summary}, **summary},
            "runs": kept + runs}


if __name__ == "__main__":
    main()
