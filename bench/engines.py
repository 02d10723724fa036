"""`make bench`, second part: the rollout engines hf vs vllm, in alternating pairs of processes.

    .venv/bin/python bench/engines.py [--quick] [--only rollout|update] [--pairs N] [--threads N]
        [--engines hf,hf-static,hf-compile,vllm] [--timed N] [--dtypes float32,bfloat16] [--rollouts NAME,...]
        [--updates RECIPE,...] [--out FILE]

Rollout: tokens/s of one warm rollout (fixed length, no stop token) on SmolLM2-135M at b32 x r128
(gsm8k-offline's prompts, the size of a GSM8K rollout here) and on the demo recipe (b64 x r24),
fp32 and bf16; `hf` is transformers' generate with its default dynamic KV cache, `hf-static` the
same with a static cache (`cache_implementation="static"`), `hf-compile` a static cache with
transformers' own `torch.compile` of the forward (CompileConfig, inductor; the warm-up rollout
compiles; where it fails, its row says why). Update: seconds per whole PPO update of the
gsm8k-offline and demo recipes (the first update, which warms up, is left out) with the phase split.
Peak RSS per process. Each measurement runs in its own process with its threads pinned (torch
threads, OMP/MKL threads, OMP_WAIT_POLICY=passive, CPU affinity where the OS has it), so other work
on a shared machine slows it in proportion instead of stalling spinning threads; the engine order
flips every pair. Writes bench/engines.json (a quick or partial run: bench/work/engines-quick.json /
-partial.json, see outputs.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import outputs  # noqa: E402

ROLLOUTS = [dict(name="smollm2 b32xr128", recipe="gsm8k-offline", batch=32, response_length=128),
            dict(name="demo b64xr24", recipe="demo", batch=64, response_length=24)]
UPDATES = [dict(name="gsm8k-offline (smollm2 b8xr128, 1 epoch)", recipe="gsm8k-offline", batch=8, updates=3),
           dict(name="demo (b64xr24, 4 epochs)", recipe="demo", batch=64, updates=3)]
ENGINES = {"rollout": ("hf", "hf-static", "hf-compile", "vllm"), "update": ("hf", "vllm")}
QUICK = dict(pairs=1, timed=1, dtypes="float32", rollouts="demo b64xr24", only="rollout")


def _config(spec: dict, *extra: str):
    from rlhf_app.config import load_config

    engine = "vllm" if spec["engine"] == "vllm" else "hf"
    return load_config([f"recipe={spec['recipe']}", f"rollout.engine={engine}", f"num_threads={spec['threads']}",
                        f"model.dtype={spec.get('dtype', 'float32')}", "eval_before_after=false", "data.num_eval=8",
                        "data.num_train=512", *extra])


def child_rollout(spec: dict) -> dict:
    import torch
    from accelerate import Accelerator

    from rlhf_app.data import prompts as data
    from rlhf_app.models import policy as models
    from rlhf_app.engines import build_engine
    from rlhf_app.engines import hf

    cfg = _config(spec, f"ppo.response_length={spec['response_length']}", "ppo.stop_token=null",
                  "ppo.temperature=1.0", f"ppo.per_device_train_batch_size={spec['batch']}",
                  "ppo.num_mini_batches=1", "ppo.gradient_accumulation_steps=1")
    if spec["engine"] in ("hf-static", "hf-compile"):
        plain = hf.generation_config
        hf.generation_config = lambda *a, **k: _static(plain(*a, **k), spec["engine"] == "hf-compile")
    tokenizer = models.load_tokenizer(cfg.model.name_or_path)
    model, _ = models.build_models(cfg)
    train, _ = data.load_prompts(cfg, tokenizer)
    accelerator = Accelerator(cpu=True)
    start = time.perf_counter()
    engine = build_engine(cfg, accelerator, model, tokenizer)
    start_s = time.perf_counter() - start
    sync_s = engine.sync_weights(model)
    times, b = [], spec["batch"]
    for k in range(spec["timed"] + 1 if spec["timed"] else 1):  # the first warms up (--timed 0: one cold rollout)
        rows = [train[i] for i in range(k * b, (k + 1) * b)]
        t = time.perf_counter()
        out = engine.generate(rows)
        times.append(time.perf_counter() - t)
        tokens = int(out.mask.sum())
    best = min(times[1:] or times)
    return {"tokens_per_s": tokens / best, "rollout_s": best, "tokens": tokens, "engine_start_s": start_s,
            "weight_sync_s": sync_s, "threads": torch.get_num_threads()}


def _static(gen_config, compile_forward: bool):
    """A static KV cache; with `compile_forward`, transformers' auto-compile of the decoding forward,
    which it does on GPUs only unless told to (`_compile_all_devices`)."""
    from transformers import CompileConfig

    gen_config.cache_implementation = "static"
    if compile_forward:
        gen_config.compile_config = CompileConfig(mode="default")  # reduce-overhead (CUDA graphs) is GPU-only
        gen_config.compile_config._compile_all_devices = True
    return gen_config


def pin_threads(threads: int) -> dict:
    """This process on `threads` torch threads and, where the OS allows, `threads` CPUs. -> what it got."""
    import torch

    torch.set_num_threads(threads)
    cpus = None
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[:threads]
        os.sched_setaffinity(0, cpus)
    return {"threads": torch.get_num_threads(), "cpus": cpus}


def child_update(spec: dict) -> dict:
    import torch

    from rlhf_app.run import run

    out = Path(tempfile.mkdtemp(prefix="bench-engines-"))
    cfg = _config(spec, f"output_dir={out}", f"ppo.total_episodes={spec['batch'] * spec['updates']}")
    run(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]

    def mean(key):
        return sum(r.get(key, 0.0) for r in rows) / len(rows)

    phases = {k: mean(f"time/{k}") for k in ("update_s", "weight_sync_s", "generate_s", "reward_s", "forward_s",
                                              "train_s")}
    result = {**phases, "sync_share": phases["weight_sync_s"] / phases["update_s"], "updates_timed": len(rows)}
    if "rollout/logprob_diff_mean" in rows[-1]:
        result["logprob_diff_mean"] = max(r["rollout/logprob_diff_mean"] for r in rows)
        result["logprob_diff_max"] = max(r["rollout/logprob_diff_max"] for r in rows)
    return result


def _child(spec_path: str, result_path: str) -> None:
    from rlhf_app.offline import OFFLINE_ENV

    os.environ.update(OFFLINE_ENV, TOKENIZERS_PARALLELISM="false")
    spec = json.loads(Path(spec_path).read_text())
    pinned = pin_threads(spec["threads"])
    result = (child_rollout if spec["kind"] == "rollout" else child_update)(spec)
    result = {**pinned, **result, "load_avg": os.getloadavg()}  # the child's own thread count (after vLLM) wins
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(result_path).write_text(json.dumps(result))


def _measure(spec: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        threads = str(spec["threads"])
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OMP_WAIT_POLICY": "passive",
               "PYTHONPATH": str(ROOT)}
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", str(spec_path), str(result_path)], env=env,
                                  capture_output=True, text=True, timeout=1800)
        except subprocess.TimeoutExpired:
            return {"error": "timed out after 1800 s"}
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
        return json.loads(result_path.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: " + " ".join(f"--{k} {v!r}" for k, v in QUICK.items()))
    parser.add_argument("--only", choices=("rollout", "update"))
    parser.add_argument("--rollouts", default=",".join(s["name"] for s in ROLLOUTS))
    parser.add_argument("--updates", default=",".join(s["recipe"] for s in UPDATES), help="recipes, e.g. demo")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--engines", default=",".join(ENGINES["rollout"]), help="rollout engines to compare")
    parser.add_argument("--timed", type=int, default=2,
                        help="timed rollouts per process after one warm-up; 0: a single cold rollout")
    parser.add_argument("--out", help="result file (default: bench/engines.json for a full run, "
                                      "bench/work/engines-quick.json or -partial.json otherwise)")
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        return _child(*args.child)
    if args.quick:
        vars(args).update(QUICK)
    # Partial: fewer jobs, engines, pairs or timed rollouts than the full run, or another thread count.
    partial = any(getattr(args, k) != parser.get_default(k) for k in ("only", "rollouts", "updates", "threads",
                                                                      "dtypes", "engines")) \
        or args.pairs < parser.get_default("pairs") or args.timed < parser.get_default("timed")
    run_kind = outputs.kind(args.quick, partial)
    out_path = outputs.result_path("engines", run_kind, args.out)
    unknown = set(args.engines.split(",")) - set(ENGINES["rollout"])
    if unknown:
        sys.exit(f"error: --engines: unknown {', '.join(sorted(unknown))}; choose from {', '.join(ENGINES['rollout'])}")
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_start": os.getloadavg()},
               "threads": args.threads, "command": " ".join(sys.argv), "kind": run_kind or "full",
               "rollout": [], "update": []}
    jobs = []
    if args.only in (None, "rollout"):
        jobs += [dict(s, kind="rollout", dtype=d) for s in ROLLOUTS for d in args.dtypes.split(",")
                 if s["name"] in args.rollouts.split(",")]
    if args.only in (None, "update"):
        jobs += [dict(s, kind="update", dtype="float32") for s in UPDATES if s["recipe"] in args.updates.split(",")]
    # Rows as they finish go to a progress file; the result file is written once, whole, at the end.
    progress = BENCH / "work" / f"engines-{run_kind or 'full'}.progress.json"
    for job in jobs:
        engines = ENGINES[job["kind"]] if job["kind"] == "update" else tuple(args.engines.split(","))
        row = {**job, "runs": {e: [] for e in engines}}
        for pair in range(args.pairs):
            for engine in (engines if pair % 2 == 0 else engines[::-1]):
                result = _measure({**job, "engine": engine, "threads": args.threads, "timed": args.timed})
                row["runs"][engine].append(result)
                print(f"{job['kind']} {job['name']} {job['dtype']} {engine}: {json.dumps(result)}", flush=True)
        results[job["kind"]].append(row)
        outputs.write_result(results, progress)
    results["machine"]["load_avg_end"] = os.getloadavg()
    outputs.write_result(results, out_path)
    progress.unlink(missing_ok=True)
    print(table(results))
    print(f"wrote {out_path}")


def _cell(runs: list[dict]) -> str:
    """Best tokens/s of an engine's runs; not run: "-"; failed: "failed (the error's first words)"."""
    if not runs:
        return "-"
    if not any("tokens_per_s" in r for r in runs):
        return "failed (" + next((r["error"] for r in runs if "error" in r), "?")[:60] + ")"
    return f"{_best(runs, 'tokens_per_s'):.0f}"


def _best(runs: list[dict], key: str, low: bool = False):
    values = [r[key] for r in runs if key in r]
    return (min(values) if low else max(values)) if values else float("nan")


def table(results: dict) -> str:
    hfs = ("hf", "hf-static", "hf-compile")
    lines = ["| rollout | dtype | hf tok/s | hf-static tok/s | hf-compile tok/s | vllm tok/s | vllm / best hf | "
             "peak RSS MiB hf / vllm |", "|---|---|---|---|---|---|---|---|"]
    for row in results["rollout"]:
        r = {e: row["runs"].get(e, []) for e in ENGINES["rollout"]}
        best_hf = max((_best(r[e], "tokens_per_s") for e in hfs if any("tokens_per_s" in x for x in r[e])),
                      default=float("nan"))
        cells = " | ".join(_cell(r[e]) for e in (*hfs, "vllm"))
        lines.append(f"| {row['name']} | {row['dtype']} | {cells} | {_best(r['vllm'], 'tokens_per_s') / best_hf:.2f} | "
                     f"{_best(r['hf'], 'peak_rss_mib', True):.0f} / {_best(r['vllm'], 'peak_rss_mib', True):.0f} |")
    lines += ["", "| update | hf s/update (gen / train) | vllm s/update (sync / gen / train) | hf / vllm | "
              "sync share | logprob diff mean / max | peak RSS MiB hf / vllm |", "|---|---|---|---|---|---|---|"]
    for row in results["update"]:
        hf, vl = row["runs"]["hf"], row["runs"]["vllm"]
        h = min((r for r in hf if "update_s" in r), key=lambda r: r["update_s"], default=None)
        v = min((r for r in vl if "update_s" in r), key=lambda r: r["update_s"], default=None)
        if h is None or v is None:
            lines.append(f"| {row['name']} | {hf} | {vl} | | | | |")
            continue
        lines.append(f"| {row['name']} | {h['update_s']:.1f} ({h['generate_s']:.1f} / {h['train_s']:.1f}) | "
                     f"{v['update_s']:.1f} ({v['weight_sync_s']:.2f} / {v['generate_s']:.1f} / {v['train_s']:.1f}) | "
                     f"{h['update_s'] / v['update_s']:.2f} | {v['sync_share']:.1%} | "
                     f"{v.get('logprob_diff_mean', float('nan')):.1e} / {v.get('logprob_diff_max', float('nan')):.1e} | "
                     f"{_best(hf, 'peak_rss_mib', True):.0f} / {_best(vl, 'peak_rss_mib', True):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
