"""`make bench-learning`: the real-LLM offline recipes trained end to end, figures in bench/learning.json.

    .venv/bin/python bench/learning.py [--only imdb-offline|gsm8k-offline|gsm8k-pipeline-offline|gsm8k-tools-offline|imdb-rlhf-offline]
        [--seeds 0 1 ...] [--pairs-scale 0.5] [--quick] [--out PATH] [--keep-cache] [--jobs 1|2] [key=value ...]

gsm8k-pipeline-offline and gsm8k-tools-offline are pipelines (scripts/pipeline.py: SFT, then PPO); after each, bench/phases.py
scores the base model, the SFT model and the PPO model on the same 300 generated problems and the 55
real items (greedy, the vLLM engine), timed apart from the pipeline. gsm8k-tools-offline calls a calculator (its
phases add tool calls per episode and call success); its no-tool twin on the same budget is gsm8k-pipeline-offline
(TOOLS_TWIN), each phase's accuracy with tools set against the twin's in standard errors (`against_no_tools`).
imdb-rlhf-offline (pairs -> reward
model -> PPO against it, the classifier as reward.gold): figures from its folder (bench/learning_rlhf.py);
`--pairs-scale 0.5` pairs half the prompts, `--seeds 0 1 2` one run per seed (bench/learning_plan.py: entries
NAME@pairs0.5, NAME@seedS, NAME@mean). A full run merges into the committed bench/learning.json (reports in
bench/learning/); `--quick` (tiny sizes: a check of the bench) and extra key=value settings (partial) write
bench/work/learning-quick.json / -partial.json, reports in bench/work/learning-<kind>/ (bench/outputs.py).

The assets the recipes use are first built into a clean cache (bench/work/learning/cache, reused with
--keep-cache), each build timed apart. Then each recipe runs in its own process (scripts/train.py or
scripts/pipeline.py, the user's command): one after the other with every core (`--jobs 1`, the default: each
wall time is its own), or together with the cores shared out (`--jobs 2`); OMP_NUM_THREADS, when set, is the
threads of each run. The figures are read back from the run folder: the held-out before/after evaluation
(eval.json), the distinct-word share, the KL, seconds per update by phase (metrics.jsonl), the wall time, the
peak memory of the training process, and the commit; GSM8K is also scored on generated problems the run never
trained on. The reports are copied next to the JSON. Extra key=value arguments go to every training run.
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
OUT_JSON, OUT_REPORTS = BENCH / "learning.json", BENCH / "learning"
RECIPES = ("imdb-offline", "gsm8k-offline", "gsm8k-pipeline-offline", "gsm8k-tools-offline", "imdb-rlhf-offline")
PIPELINES = ("gsm8k-pipeline-offline", "gsm8k-tools-offline", "imdb-rlhf-offline")  # scripts/pipeline.py; PPO in ppo/
TOOLS_TWIN = {"gsm8k-tools-offline": "gsm8k-pipeline-offline"}  # with tools -> the same budget without
ASSETS = {"imdb-offline": ("smollm2-135m-instruct", "imdb-sentiment"),  # what each recipe loads
          "gsm8k-offline": ("smollm2-135m-instruct",), "gsm8k-pipeline-offline": ("smollm2-135m-instruct", "gsm8k-sft"),
          "gsm8k-tools-offline": ("smollm2-135m-instruct", "gsm8k-tools-sft"),
          "imdb-rlhf-offline": ("smollm2-135m-instruct", "imdb-sentiment")}
PHASES = ("update_s", "generate_s", "reward_s", "forward_s", "train_s", "weight_sync_s")
GENERATED_EVAL = 32  # generated GSM problems (training templates, unseen seed) scored before and after
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
import learning_rlhf  # noqa: E402
from learning_plan import Variant, variants, with_means  # noqa: E402
import outputs  # noqa: E402


def gsm8k_figures(entry: dict) -> dict:
    """Accuracy (strict, flexible) and well-formed share of one eval.json entry, as training reported them."""
    extra = entry.get("extra", {})
    keys = ("accuracy", "accuracy_strict", "accuracy_flexible", "format_share", "format_end_share")
    return {k: extra[k] for k in keys if k in extra}


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def run_figures(run_dir: Path) -> dict:
    """Before/after, KL and time figures of a finished run folder."""
    from rlhf_app.report.page import load_jsonl
    from rlhf_app.text_stats import distinct_word_share

    evals = json.loads((run_dir / "eval.json").read_text())
    rows = load_jsonl(run_dir / "metrics.jsonl")
    out = {"updates": len(rows), "episodes": rows[-1].get("episode") if rows else None,
           "s_per_update": {p: _mean([r.get(f"time/{p}") for r in rows]) for p in PHASES},
           "kl_final": rows[-1].get("objective/kl") if rows else None,
           "kl_last5_mean": _mean([r.get("objective/kl") for r in rows[-5:]]),
           "score_first": rows[0].get("objective/scores") if rows else None,
           "score_last5_mean": _mean([r.get("objective/scores") for r in rows[-5:]])}
    for when in ("before", "after"):
        entry = evals[when]
        completions = [s["completion"] for s in entry["samples"]]
        out[when] = {"mean_score": entry["mean_score"], **entry["extra"],
                     "distinct_word_share": distinct_word_share(completions), "n": len(completions),
                     "samples": entry["samples"][:4]}
    return out


def generated_eval(run_dir: Path, n: int = GENERATED_EVAL) -> dict:
    """GSM8K figures before (the recipe's base policy) and after (run_dir/final) on `n` generated
    problems from the training templates with a seed training never drew, minus any training question.
    Sampled as training's evaluation samples: with the run's vLLM engine when it used one."""
    import torch
    from accelerate import Accelerator
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from rlhf_app import rewards
    from rlhf_app.assets import registry as assets
    from rlhf_app import evaluation
    from rlhf_app.data import prompts as data
    from rlhf_app.assets import gsm8k as gsm8k_offline
    from rlhf_app.models import policy as models
    from rlhf_app.config import load_config
    from rlhf_app.engines import build_engine

    cfg = load_config([f"recipe={run_dir / 'config.yaml'}"])
    torch.set_num_threads(cfg.num_threads or torch.get_num_threads())
    accelerator = Accelerator()
    device = accelerator.device
    trained = {p["question"] for p in gsm8k_offline.train_problems(cfg.data.num_train or gsm8k_offline.GSM8K_TRAIN_SIZE,
                                                                  cfg.seed)}
    problems = [p for p in gsm8k_offline.train_problems(n + 64, cfg.seed + 7919) if p["question"] not in trained][:n]
    model, tokenizer = models.load_policy(run_dir / "final", dtype=cfg.model.dtype)
    dataset = Dataset.from_list(data.gsm8k_rows(problems, tokenizer, cfg, "generated eval"))
    reward_fn = rewards.build_reward(cfg, device)
    base = models.PolicyAndValue(AutoModelForCausalLM.from_pretrained(
        assets.resolve(cfg.model.name_or_path), dtype=torch.float32), value_head=False)
    engine = build_engine(cfg, accelerator, base, tokenizer) if cfg.rollout.engine == "vllm" else None
    out = {}
    for when, policy in (("before", base), ("after", model)):
        entry = evaluation.evaluate_policy(cfg, policy.to(device).eval(), tokenizer, dataset, reward_fn, device,
                                           engine=engine)
        out[when] = {"mean_score": entry["mean_score"], **gsm8k_figures(entry), "n": len(dataset),
                     "samples": entry["samples"][:2]}
    return out


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip()


def _start(cmd: list[str], env: dict, log: Path):
    with log.open("w") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT), time.time()


def _wait(proc, start: float, log: Path) -> dict:
    """Wait for `proc`: its wall time, exit status and peak RSS (this child only, via wait4)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(time.time() - start, 1), "rc": proc.returncode,
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "log": str(log.relative_to(ROOT))}


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
        _copy_reports(run_dir, v.reports, v.name, {"": "report.html", "-rm": "rm/report.html",
                                                    "-ppo": "ppo/report.html"})
        return result
    if recipe in PIPELINES:
        return finish_pipeline(recipe, result, run_dir, env, v.reports)
    result.update(run_figures(run_dir))
    if recipe.startswith("gsm8k"):
        start = time.time()
        gen = subprocess.run([sys.executable, __file__, "--generated-eval", str(run_dir)], cwd=ROOT, env=env,
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


def sft_figures(sft_dir: Path) -> dict:
    """The supervised stage: steps, losses (first logged, last, held-out) and its training time."""
    from rlhf_app.report.page import load_jsonl

    rows = load_jsonl(sft_dir / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    summary = next((r for r in rows if "train_runtime" in r), {})
    held = [r["eval_loss"] for r in rows if "eval_loss" in r]
    return {"steps": rows[-1]["step"] if rows else 0, "loss_first": losses[0] if losses else None,
            "loss_last5_mean": _mean(losses[-5:]), "eval_loss": held[-1] if held else None,
            "train_runtime_s": summary.get("train_runtime")}


def finish_pipeline(recipe: str, result: dict, run_dir: Path, env: dict, reports: Path) -> dict:
    """A pipeline's figures: the SFT stage's, the PPO stage's (its own before/after = after SFT / after
    PPO on the real items), then every phase on the same problems (bench/phases.py), the eval's time apart."""
    result["sft"] = sft_figures(run_dir / "sft")
    result.update(run_figures(run_dir / "ppo"))
    start = time.time()
    done = subprocess.run([sys.executable, str(BENCH / "phases.py"), str(run_dir)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    result["phases"] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else \
        {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result["phases_eval_s"] = round(time.time() - start, 1)
    _copy_reports(run_dir, reports, recipe, {f"-{stage}": f"{stage}/report.html" for stage in ("sft", "ppo")})
    return result


def headline(recipe: str, r: dict) -> str:
    if r.get("rc"):
        return f"{recipe}: failed, see {r['log']}"
    if "gold" in r:  # a pairs -> rm -> ppo pipeline
        return f"{recipe}: {learning_rlhf.headline(r)}"
    b, a = r["before"], r["after"]
    if "phases" in r and "phases" in r["phases"]:
        ph = r["phases"]["phases"]
        tools = [f"{name} tool calls/episode {ph['ppo'][name]['tool_calls_per_episode']:.2f}, success "
                 f"{ph['ppo'][name]['tool_call_success'] or 0:.3f}"
                 for name in ("generated", "real") if "tool_calls_per_episode" in ph["ppo"][name]]
        return f"{recipe}: {r['wall_s'] / 60:.1f} min + {r['phases_eval_s'] / 60:.1f} min of phase evals; " + "; ".join(
            [f"{name} strict " + " -> ".join(f"{ph[p][name]['accuracy_strict']:.3f}" for p in ("base", "sft", "ppo"))
             for name in ("generated", "real")] + tools)
    parts = [f"{r['wall_s'] / 60:.1f} min, {r['updates']} updates, {r['s_per_update']['update_s']:.1f} s/update, "
             f"peak {r['peak_rss_mib']:.0f} MiB, KL {r['kl_final']:.2f}"]
    for key in ("positive_share", "format_share", "format_end_share", "accuracy_strict", "accuracy_flexible",
                "distinct_word_share"):
        if b.get(key) is not None:
            parts.append(f"{key} {b[key]:.3f} -> {a[key]:.3f}")
    return f"{recipe}: " + "; ".join(parts)


def against_no_tools(tools: dict, twin: dict) -> dict:
    """Each phase's strict accuracy with tools minus the no-tool twin's, per problem set, in standard errors of
    the difference (bench/phases.py's arithmetic): {"sft/generated": {"diff", "se", "in_se"}, ...}."""
    import math

    out = {}
    a, b = tools.get("phases", {}).get("phases"), twin.get("phases", {}).get("phases")
    for phase in ("base", "sft", "ppo"):
        for name in ("generated", "real"):
            try:
                x, y = a[phase][name], b[phase][name]
            except (KeyError, TypeError):
                continue
            se = math.hypot(x["accuracy_strict_se"], y["accuracy_strict_se"])
            diff = x["accuracy_strict"] - y["accuracy_strict"]
            out[f"{phase}/{name}"] = {"diff": diff, "se": se, "in_se": diff / se if se else None}
    return out


def write_results(results: dict, run: dict, path: Path = OUT_JSON) -> None:
    """Merge this run's recipes into `path` (bench/learning.json for a full run), read again just before the
    write, so a partial run (--only) keeps the other recipe's figures; each recipe keeps the run facts it was
    measured under (commit, cache, date). Every NAME@seedS entry also updates NAME@mean (learning_plan.with_means)."""
    doc = json.loads(path.read_text()) if path.is_file() else {}
    recipes = doc.get("recipes", {})
    recipes.update({name: {**r, "run": run} for name, r in results.items()})
    for tools, twin in TOOLS_TWIN.items():
        if tools in recipes and twin in recipes:
            recipes[tools]["against_no_tools"] = {"twin": twin, **against_no_tools(recipes[tools], recipes[twin])}
    outputs.write_result({**run, "recipes": with_means(recipes)}, path)


def destination(quick: bool, overrides: list[str], out: str | None = None) -> tuple[str | None, Path, Path]:
    """(kind, JSON, reports folder): a full run (None) the committed bench/learning.json and bench/learning/; a
    quick or partial one (key=value settings) bench/work/learning-<kind>.json and bench/work/learning-<kind>/."""
    run_kind = outputs.kind(quick, bool(overrides))
    reports = OUT_REPORTS if run_kind is None else BENCH / "work" / f"learning-{run_kind}"
    return run_kind, outputs.result_path("learning", run_kind, out), reports


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=RECIPES, action="append")
    parser.add_argument("--seeds", type=int, nargs="+", help="one run per seed (entries NAME@seedS, NAME@mean)")
    parser.add_argument("--pairs-scale", type=float, default=1.0, help="pair this share of the prompts (0.5: half)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (bench/work/learning-quick.json)")
    parser.add_argument("--out", help="the JSON to write (a quick or partial run never replaces bench/learning.json)")
    parser.add_argument("--keep-cache", action="store_true", help="reuse bench/work/learning/cache")
    parser.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="recipes trained at once")
    parser.add_argument("--generated-eval", type=Path, help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    if args.generated_eval:
        print(json.dumps(generated_eval(args.generated_eval)))
        return
    unknown = [a for a in overrides if a.startswith("-") or "=" not in a]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (settings are key=value)")
    if not 0 < args.pairs_scale <= 1:
        parser.error(f"--pairs-scale {args.pairs_scale}: give a share of the prompts in (0, 1]")
    run_kind, out_json, reports = destination(args.quick, overrides, args.out)
    cache = WORK / "cache"
    if not args.keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    recipes = args.only or list(RECIPES)
    runs = variants(recipes, args.seeds, args.pairs_scale, args.quick, overrides, WORK / (run_kind or ""), reports)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // min(args.jobs, len(runs))))
    from rlhf_app.offline import OFFLINE_ENV

    env = {**os.environ, **OFFLINE_ENV, "RLHF_APP_CACHE": str(cache), "OMP_NUM_THREADS": threads,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    results = {}
    # Before the first write: the bench's own outputs are tracked files, so a check after it would
    # call a run on a clean tree dirty.
    commit, dirty = _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain", "--untracked-files=no"))
    assets_built = build_assets(env, recipes)
    for batch in ([runs] if args.jobs > 1 else [[v] for v in runs]):
        running = {v: start_recipe(v, env) for v in batch}
        for v, started in running.items():
            results[v.name] = finish_recipe(v, *started, env)
            print(f"[bench-learning] {headline(v.name, results[v.name])}", flush=True)
        write_results(results, {"commit": commit, "dirty": dirty, "kind": run_kind or "full",
                                "clean_cache": not args.keep_cache, "cpus": os.cpu_count(), "jobs": args.jobs,
                                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "assets": assets_built},
                      out_json)
    print(f"[bench-learning] wrote {out_json}")


if __name__ == "__main__":
    main(sys.argv[1:])
