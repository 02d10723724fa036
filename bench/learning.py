"""`make bench-learning`: the real-LLM offline recipes trained end to end over seeds, figures in bench/learning.json.

    .venv/bin/python bench/learning.py [--only imdb-offline|gsm8k-offline|gsm8k-pipeline-offline|gsm8k-tools-offline|imdb-rlhf-offline]
        [--seeds 0 1 2] [--pairs-scale 0.5] [--variant fp32] [--quick] [--out PATH] [--keep-cache] [--jobs 1|2] [key=value ...]

Every recipe runs once per seed (`--seeds`, default 0 1 2: entries NAME@seedS), and NAME@mean holds the mean ±
sample standard deviation over the seeds present in the file, with each seed's value (bench/learning_figures.py
seed_mean). `--seeds 1` runs one seed and merges it into the file, so a long bench runs piece by piece.
Held-out sets (bench/learning_plan.py HELD_OUT): 256 IMDB prompts (imdb-offline's 64 raised by the bench,
imdb-rlhf-offline's own 256); GSM8K the 55 real items in the run's own evaluations and 300 generated problems
no stage trained on, scored before and after (bench/generated_eval.py; the pipelines' phases: bench/phases.py).

gsm8k-pipeline-offline and gsm8k-tools-offline are pipelines (scripts/pipeline.py: SFT, then PPO); after each,
bench/phases.py scores the base model, the SFT model and the PPO model on the same 300 generated problems and
the 55 real items (greedy, the vLLM engine), timed apart from the pipeline. gsm8k-tools-offline calls a
calculator; its no-tool twin on the same budget is gsm8k-pipeline-offline (TOOLS_TWIN), each phase's accuracy
with tools set against the twin's of the same seed in standard errors (`against_no_tools`).
`--variant fp32` trains gsm8k-offline in float32 (bench/learning_plan.py VARIANTS: a CPU without bfloat16
arithmetic emulates it, 13-27x slower), entries NAME@fp32@seedS beside the recipe's own.
imdb-rlhf-offline (pairs -> reward model -> PPO against it, the classifier as reward.gold): figures from its
folder (bench/learning_rlhf.py); `--pairs-scale 0.5` pairs half the prompts (entries NAME@pairs0.5@seedS).
A full run merges into the committed bench/learning.json (reports in bench/learning/); `--quick` (tiny sizes:
a check of the bench) and extra key=value settings (partial) write bench/work/learning-quick.json /
-partial.json, reports in bench/work/learning-<kind>/ (bench/outputs.py); `--out PATH.json`: reports in PATH/.

The assets the recipes use are first built into a clean cache (bench/work/learning/cache, reused with
--keep-cache), each build timed apart. Then each run is its own process (scripts/train.py or
scripts/pipeline.py, the user's command): one after the other with every core (`--jobs 1`, the default: each
wall time is its own), or two at a time with the cores shared out (`--jobs 2`); OMP_NUM_THREADS, when set, is
the threads of each run. The figures are read back from the run folder (bench/learning_figures.py): the held-out
before/after evaluation (eval.json), the distinct-word share, the KL, seconds per update by phase, the held-out
curve against training wall time (the eval_steps evaluations in metrics.jsonl, evaluation time excluded), the
wall time, the peak memory of the training process, and the commit. The reports are copied next to the JSON.
Extra key=value arguments go to every training run. The race against TRL's GRPOTrainer is bench/race.py
(`make bench-learning` runs it after this).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work" / "learning"
OUT_JSON = BENCH / "learning.json"
RECIPES = ("imdb-offline", "gsm8k-offline", "gsm8k-pipeline-offline", "gsm8k-tools-offline", "imdb-rlhf-offline")
PIPELINES = ("gsm8k-pipeline-offline", "gsm8k-tools-offline", "imdb-rlhf-offline")  # scripts/pipeline.py; PPO in ppo/
TOOLS_TWIN = {"gsm8k-tools-offline": "gsm8k-pipeline-offline"}  # with tools -> the same budget without
ASSETS = {"imdb-offline": ("smollm2-135m-instruct", "imdb-sentiment"),  # what each recipe loads
          "gsm8k-offline": ("smollm2-135m-instruct",), "gsm8k-pipeline-offline": ("smollm2-135m-instruct", "gsm8k-sft"),
          "gsm8k-tools-offline": ("smollm2-135m-instruct", "gsm8k-tools-sft"),
          "imdb-rlhf-offline": ("smollm2-135m-instruct", "imdb-sentiment")}
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
import learning_rlhf  # noqa: E402
from learning_figures import against_no_tools, gsm8k_figures, headline, run_figures, sft_figures  # noqa: E402,F401
from learning_plan import SEEDS, VARIANTS, Variant, twin_name, variants, with_means  # noqa: E402
import outputs  # noqa: E402


def _start(cmd: list[str], env: dict, log: Path):
    with log.open("w") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT), time.time()


def _wait(proc, start: float, log: Path) -> dict:
    """Wait for `proc`: its wall time, exit status, peak RSS (this child only, via wait4), the load average."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(time.time() - start, 1), "rc": proc.returncode,
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "log": str(log.relative_to(ROOT)),
            "load_avg_end": [round(x, 2) for x in os.getloadavg()]}


def build_assets(env: dict, recipes: list[str]) -> dict:
    """Build each asset the recipes load (a no-op when cached): {name: {"wall_s", "rc"}}."""
    out = {}
    for name in dict.fromkeys(a for r in recipes for a in ASSETS[r]):
        log = WORK / f"asset-{name}.log"
        print(f"[bench-learning] building asset:{name}", flush=True)
        out[name] = _wait(*_start([sys.executable, "-m", "rlhf_app.assets.registry", "build", name], env, log), log)
        if out[name]["rc"] != 0:
            raise SystemExit(f"[bench-learning] building asset:{name} failed: see {out[name]['log']}")
    return out


def start_recipe(v: Variant, env: dict):
    shutil.rmtree(v.work, ignore_errors=True)  # the bench's own folder: runs refuse to overwrite one
    v.work.parent.mkdir(parents=True, exist_ok=True)
    script = "scripts/pipeline.py" if v.recipe in PIPELINES else "scripts/train.py"
    cmd = [sys.executable, script, f"recipe={v.recipe}", f"output_dir={v.work}", *v.overrides]
    print(f"[bench-learning] OMP_NUM_THREADS={env['OMP_NUM_THREADS']} {' '.join(cmd[1:])}", flush=True)
    log = v.work.parent / f"{v.name}.log"
    proc, start = _start(cmd, env, log)
    return {"command": " ".join(cmd[1:]), "threads": int(env["OMP_NUM_THREADS"]), "seed": v.seed}, proc, start, log


def finish_recipe(v: Variant, result: dict, proc, start: float, log: Path, env: dict) -> dict:
    recipe, run_dir = v.recipe, v.work
    result.update(_wait(proc, start, log))
    if result["rc"] != 0:
        print(f"[bench-learning] {v.name} failed (rc {result['rc']}): see {result['log']}", flush=True)
        return result
    if recipe == "imdb-rlhf-offline":
        result.update(learning_rlhf.figures(run_dir), ppo=run_figures(run_dir / "ppo"))
        return {**result, **_copy_reports(run_dir, v.reports, v.name, {"": "report.html", "-rm": "rm/report.html",
                                                                        "-ppo": "ppo/report.html"})}
    if recipe in PIPELINES:
        return finish_pipeline(v, result, env)
    result.update(run_figures(run_dir))
    if recipe.startswith("gsm8k"):
        start = time.time()
        gen = subprocess.run([sys.executable, str(BENCH / "generated_eval.py"), str(run_dir)], cwd=ROOT, env=env,
                             capture_output=True, text=True)
        result["generated"] = json.loads(gen.stdout.strip().splitlines()[-1]) if gen.returncode == 0 else \
            {"error": (gen.stderr.strip().splitlines() or ["failed"])[-1]}
        result["generated_eval_s"] = round(time.time() - start, 1)
    result.update(_copy_reports(run_dir, v.reports, v.name, {"": "report.html"}))
    return result


def _copy_reports(run_dir: Path, reports: Path, name: str, files: dict) -> dict:
    """Each {suffix: file} of the run folder that exists, copied to reports/NAME<suffix>-report.html."""
    reports.mkdir(parents=True, exist_ok=True)
    copied = {}
    for suffix, rel in files.items():
        if (run_dir / rel).is_file():
            shutil.copy(run_dir / rel, reports / f"{name}{suffix}-report.html")
            copied[f"report{suffix}"] = str((reports / f"{name}{suffix}-report.html").relative_to(ROOT))
    return copied


def finish_pipeline(v: Variant, result: dict, env: dict) -> dict:
    """A pipeline's figures: the SFT stage's, the PPO stage's (its own before/after = after SFT / after PPO on
    the real items, its curve from the PPO stage's start), then every phase on the same problems
    (bench/phases.py), the eval's time apart."""
    run_dir = v.work
    result["sft"] = sft_figures(run_dir / "sft")
    result.update(run_figures(run_dir / "ppo"))
    start = time.time()
    done = subprocess.run([sys.executable, str(BENCH / "phases.py"), str(run_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    result["phases"] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else \
        {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result["phases_eval_s"] = round(time.time() - start, 1)
    result.update(_copy_reports(run_dir, v.reports, v.name,
                                {f"-{stage}": f"{stage}/report.html" for stage in ("sft", "ppo")}))
    return result


def write_results(results: dict, run: dict, path: Path = OUT_JSON) -> None:
    """Merge this run's recipes into `path` (bench/learning.json for a full run), read again just before the
    write, so a partial run (--only) keeps the other recipe's figures; each recipe keeps the run facts it was
    measured under (commit, cache, date). A tools entry is set against its twin's entry of the same seed; every
    NAME@seedS entry also updates NAME@mean (learning_plan.with_means)."""
    doc = json.loads(path.read_text()) if path.is_file() else {}
    recipes = doc.get("recipes", {})
    recipes.update({name: {**r, "run": run} for name, r in results.items()})
    for name in list(recipes):
        twin = twin_name(name, TOOLS_TWIN)
        if twin in recipes and not recipes[name].get("rc") and not recipes[twin].get("rc"):
            recipes[name]["against_no_tools"] = {"twin": twin, **against_no_tools(recipes[name], recipes[twin])}
    outputs.write_result({**run, "recipes": with_means(recipes)}, path)


def destination(quick: bool, overrides: list[str], out: str | None = None) -> tuple[str | None, Path, Path]:
    """(kind, JSON, reports folder): a full run (None) the committed bench/learning.json and bench/learning/; a
    quick or partial one (key=value settings) bench/work/learning-<kind>.json and bench/work/learning-<kind>/;
    `--out PATH.json` PATH.json and the folder PATH/ beside it (PATH-reports/ when PATH has no suffix)."""
    run_kind = outputs.kind(quick, bool(overrides))
    path = outputs.result_path("learning", run_kind, out)
    reports = path.with_suffix("") if path.suffix else path.with_name(f"{path.name}-reports")
    return run_kind, path, reports


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The options and the key=value settings for every training run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=RECIPES, action="append")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help="one run per seed (default 0 1 2; entries NAME@seedS, NAME@mean over the file's seeds)")
    parser.add_argument("--pairs-scale", type=float, default=1.0, help="pair this share of the prompts (0.5: half)")
    parser.add_argument("--variant", choices=VARIANTS, help="a named change to every run (entries NAME@VARIANT@seedS)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (bench/work/learning-quick.json)")
    parser.add_argument("--out", help="the JSON to write (a quick or partial run never replaces bench/learning.json)")
    parser.add_argument("--keep-cache", action="store_true", help="reuse bench/work/learning/cache")
    parser.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="runs trained at once")
    args, overrides = parser.parse_known_args(argv)
    unknown = [a for a in overrides if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (settings are key=value)")
    if not 0 < args.pairs_scale <= 1:
        parser.error(f"--pairs-scale {args.pairs_scale}: give a share of the prompts in (0, 1]")
    return args, overrides


def main(argv: list[str]) -> None:
    args, overrides = parse_args(argv)
    run_kind, out_json, reports = destination(args.quick, overrides, args.out)
    recipes = args.only or list(RECIPES)
    runs = variants(recipes, args.seeds, args.pairs_scale, args.quick, overrides, WORK / (run_kind or ""), reports,
                    args.variant)  # first: a wrong choice stops here, before the cache is cleared
    cache = WORK / "cache"
    if not args.keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // min(args.jobs, len(runs))))
    from rlhf_app.offline import OFFLINE_ENV

    env = {**os.environ, **OFFLINE_ENV, "RLHF_APP_CACHE": str(cache), "OMP_NUM_THREADS": threads,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    results = {}
    # Code only: results and docs (the bench's own earlier output among them) leave a run clean.
    commit, dirty = outputs.code_state()
    assets_built = build_assets(env, recipes)
    for batch in (runs[i:i + args.jobs] for i in range(0, len(runs), args.jobs)):
        running = {v: start_recipe(v, env) for v in batch}
        for v, started in running.items():
            results[v.name] = finish_recipe(v, *started, env)
            print(f"[bench-learning] {headline(v.name, results[v.name])}", flush=True)
        write_results(results, {"commit": commit, "dirty": dirty, "kind": run_kind or "full",
                                "clean_cache": not args.keep_cache, "cpus": os.cpu_count(), "host": outputs.host(),
                                "jobs": args.jobs,
                                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "assets": assets_built},
                      out_json)
    print(f"[bench-learning] wrote {out_json}")


if __name__ == "__main__":
    main(sys.argv[1:])
