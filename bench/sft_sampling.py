"""The supervised stage's sampler: `sft.train_sampling_strategy` random against group_by_length (transformers'
LengthGroupedSampler: rows of like length in a batch, less padding) on a pipeline recipe's SFT stage.

Each variant is one `scripts/sft.py` run in its own process on the same cores, the order flipping every pair, on
the recipe's SFT section (its `stages` and `per_stage` left out) and its first --rows rows, so that both see the
same rows. Per run: train_runtime, s/step, held-out loss, the load average before and after.

    python bench/sft_sampling.py                                   # gsm8k-pipeline-offline, 256 rows (~13 min here)
    python bench/sft_sampling.py --recipe gsm8k-tools-offline      # 128 rows (~10 min here)

A full run (a recipe's rows in ROWS, one pair or more) merges its recipe into the committed bench/sft_sampling.json,
keeping the other recipes there; --quick (the tiny recipe's SFT on a toy set, ~1 min) and other --rows write
bench/work/sft_sampling-{quick,partial}.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from outputs import kind, result_path, write_result  # noqa: E402

SFT = ROOT / "scripts" / "sft.py"
STRATEGIES = ("random", "group_by_length")
ROWS = {"gsm8k-pipeline-offline": 256, "gsm8k-tools-offline": 128}  # 32 and 16 steps of 8: ~5-7 min a run here


def stage_recipe(recipe: str, out: Path) -> Path:
    """The recipe (a name under recipes/ or a YAML path, read as every run reads it) without `stages` and
    `per_stage`: a plain SFT run of its sections, written to out/."""
    from omegaconf import OmegaConf

    from rlhf_app.config import ConfigError
    from rlhf_app.config.recipes import load_yaml, recipe_path

    try:
        source = recipe_path(recipe)
        tree = OmegaConf.to_container(load_yaml(source))
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if not tree.get("sft"):
        raise SystemExit(f"error: recipe {recipe} has no sft section: name a pipeline recipe with a supervised stage")
    tree = {k: v for k, v in tree.items() if k not in ("stages", "per_stage")}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{source.stem}-sft.yaml"
    OmegaConf.save(OmegaConf.create(tree), path)
    return path


def run_variant(recipe_file: Path, strategy: str, rows: int, threads: int, out: Path, extra: list[str]) -> dict:
    args = [f"recipe={recipe_file}", f"output_dir={out}", "overwrite_output_dir=true", f"sft.num_train={rows}",
            f"sft.train_sampling_strategy={strategy}", f"num_threads={threads}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    start, load = time.perf_counter(), os.getloadavg()[0]
    proc = subprocess.run([sys.executable, str(SFT), *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sft {strategy} failed:\n{proc.stderr[-3000:]}")
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    done = next(r for r in logged if "train_runtime" in r)
    held = next(r for r in logged if "eval_loss" in r)
    return {"strategy": strategy, "steps": done["step"], "train_runtime_s": done["train_runtime"],
            "s_per_step": done["train_runtime"] / done["step"], "eval_loss": held["eval_loss"],
            "train_loss": done["train_loss"], "wall_s": time.perf_counter() - start, "load_before": load,
            "load_after": os.getloadavg()[0], "args": [a.replace(f"{ROOT}/", "") for a in args]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="gsm8k-pipeline-offline")
    parser.add_argument("--rows", type=int, help="SFT rows, the recipe's first (default: ROWS's)")
    parser.add_argument("--pairs", type=int, default=1, help="runs of each, the order flipping")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="the tiny recipe's SFT on a toy set (a smoke run)")
    parser.add_argument("--out", help="the JSON to write (default: see the module docstring)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "sft_sampling", help="run folders")
    args = parser.parse_args(argv)
    if args.pairs < 1 or (args.rows is not None and args.rows < 8):
        parser.error("--pairs must be >= 1 and --rows >= 8 (one batch)")
    rows = args.rows or (64 if args.quick else ROWS.get(args.recipe, 256))
    run_kind = kind(args.quick, rows != ROWS.get(args.recipe))
    path = result_path("sft_sampling", run_kind, args.out)
    work = args.work
    extra = []
    if args.quick:  # the tiny model on rows whose lengths vary a lot, 4 steps of 8
        data = work / "toy.jsonl"
        work.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps({"prompt": "say a: ", "completion": "a" * (1 + 7 * i % 80) + "."}) + "\n"
                                for i in range(rows)))
        recipe_file, extra = ROOT / "recipes" / "tiny.yaml", [f"sft.dataset={data}", "sft.max_steps=4"]
    else:
        recipe_file = stage_recipe(args.recipe, work)
    recipe = "tiny" if args.quick else args.recipe
    runs = []
    for pair in range(args.pairs):
        for strategy in (STRATEGIES if pair % 2 == 0 else STRATEGIES[::-1]):
            run = run_variant(recipe_file, strategy, rows, args.threads, work / f"{recipe}-{strategy}-{pair}", extra)
            runs.append(run)
            print(f"{strategy} pair {pair}: {run['train_runtime_s']:.1f} s for {run['steps']} steps "
                  f"({run['s_per_step']:.2f} s/step), held-out loss {run['eval_loss']:.3f}, "
                  f"load {run['load_before']:.1f} -> {run['load_after']:.1f}", flush=True)
    runtime = {s: sum(r["train_runtime_s"] for r in runs if r["strategy"] == s) for s in STRATEGIES}
    ratio = runtime["group_by_length"] / runtime["random"]
    print(f"group_by_length / random: {ratio:.3f}x the training time")
    entry = {"rows": rows, "threads": args.threads, "time_ratio": ratio, "runs": runs}
    old = json.loads(path.read_text()) if path.exists() else {}
    result = {"kind": run_kind or "full", "recipes": {**old.get("recipes", {}), recipe: entry}}
    print(f"results: {write_result(result, path)} ({recipe} replaced; other recipes kept)")


if __name__ == "__main__":
    main()
