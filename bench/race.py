"""`make bench-race`: held-out score against training wall time, rlhf_app against TRL 1.16's GRPOTrainer.

    .venv/bin/python bench/race.py [--only imdb|gsm8k] [--sides ours,ours-grpo,trl] [--seeds 3 | --seed S ...]
        [--threads N] [--peer-factor 2] [--points N] [--held-out N] [--quick] [--out PATH] [--summary] [key=value ...]

On imdb-offline and gsm8k-offline (SmolLM2-135M-Instruct, LoRA), three sides (bench/race_config.py): `ours`
(the recipe as shipped), `ours-grpo` (rlhf_app's GRPO with TRL's settings, KL in the loss) and `trl` (TRL's
GRPOTrainer with ours-grpo's settings, LoRA by peft_config, rlhf_app's reward callable as reward_funcs,
transformers' generate: its vLLM colocate route does not run on this CPU build). Same seed, training prompts
and held-out prompts for all; each run is its own process, one after the other, on the same --threads cores
(pinned as bench/engines.py pins them). A run saves LoRA snapshots every few updates and is then scored
snapshot by snapshot by rlhf_app's evaluation (bench/race_child.py), so every curve is "held-out score against
training wall time", evaluation excluded. `ours` runs the recipe's episodes; the GRPO sides up to
--peer-factor times as many, stopped after 2x ours' training time of that seed when it is known. Each finished
run is merged at once (written whole) into bench/race.json under recipe / side / seed, so a long race runs
piece by piece; the summary (mean ± sd over seeds, time to the target, ratios: bench/race_summary.py) is
recomputed at each merge, and by --summary when the arithmetic changed. A run stopped (a restart, Ctrl-C)
after its training finished continues with the same command: only its snapshots not yet scored are
evaluated (bench/race_child.py); one stopped while training starts over. --quick: the tiny model, two updates,
one seed, into bench/work/race-quick.json; key=value overrides or other --points / --peer-factor:
bench/work/race-partial.json (bench/outputs.py).
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
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import outputs  # noqa: E402
import race_config  # noqa: E402
import race_summary  # noqa: E402

WORK = BENCH / "work" / "race"
PEER_FACTOR = 2.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(race_config.RECIPES),
                        help="one recipe (repeatable); default both")
    parser.add_argument("--sides", default=",".join(race_config.SIDES), help="comma-separated: ours,ours-grpo,trl")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--seed", type=int, action="append", help="this seed only (repeatable; overrides --seeds)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores of each run (default all)")
    parser.add_argument("--peer-factor", type=float, default=PEER_FACTOR,
                        help="the GRPO sides' episodes as a multiple of the recipe's (default 2)")
    parser.add_argument("--points", type=int, help="evaluated snapshots over the recipe's updates (default per recipe)")
    parser.add_argument("--held-out", type=int, help="checks: N held-out prompts (GSM8K: N generated, N real) "
                                                     "instead of 256 (GSM8K: 300 and the 55 real)")
    parser.add_argument("--quick", action="store_true", help="smoke run: the tiny model, 2 updates, seed 0")
    parser.add_argument("--out", help="result file (default bench/race.json; quick/partial: bench/work/race-*.json)")
    parser.add_argument("--summary", action="store_true",
                        help="print the summary of the result file and stop (redone from its runs, and written back, "
                             "when bench/race_summary.py changed)")
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad:
        raise SystemExit(f"error: unrecognized arguments: {' '.join(bad)} (settings go as key=value)")
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in race_config.SIDES]
    if unknown or not sides:
        raise SystemExit(f"error: --sides {args.sides}: choose among {','.join(race_config.SIDES)}, comma-separated")
    if args.seeds < 1 or args.threads < 1 or args.peer_factor < 1 or min(args.points or 1, args.held_out or 1) < 1:
        raise SystemExit("error: --seeds, --threads, --points and --held-out must be >= 1, --peer-factor >= 1")
    args.sides = [s for s in race_config.SIDES if s in sides]  # ours first: the GRPO sides' time cap needs it
    args.recipes = [race_config.RECIPES[k] for k in (args.only or race_config.RECIPES)]
    args.seed_list = sorted(set(args.seed)) if args.seed else ([0] if args.quick else list(range(args.seeds)))
    args.extra = extra
    args.kind = outputs.kind(args.quick, bool(extra) or args.points is not None or args.held_out is not None
                             or args.peer_factor != PEER_FACTOR)
    return args


def spec_of(args, recipe: str, side: str, seed: int, time_cap_s: float | None, fingerprint: str = "",
            commit: str = "", dirty: bool = False) -> dict:
    return {"recipe": recipe, "side": side, "seed": seed, "fingerprint": fingerprint, "commit": commit,
            "dirty": dirty, "threads": args.threads, "quick": args.quick,
            "extra": args.extra, "peer_factor": args.peer_factor, "points": args.points, "time_cap_s": time_cap_s,
            "held_out": args.held_out, "host": outputs.host(),
            "out_dir": str(WORK / (args.kind or "full") / f"{recipe}-{side}-{seed}")}


def fingerprint(args, recipe: str, side: str) -> str:
    """The side's settings at seed 0, the evaluation's, the snapshot spacing and the threads, hashed."""
    cfg = race_config.side_config(recipe, side, 0, args.threads, args.quick, args.extra, args.peer_factor,
                                  args.held_out)
    ev = race_config.eval_config(recipe, 0, args.threads, args.quick, args.extra, args.held_out)
    held = race_config.held_out(recipe, args.quick, args.held_out)
    return race_config.fingerprint(cfg, race_config.fingerprint(ev), args.points, args.threads, held, side)


def time_cap(doc: dict, recipe: str, seed: int, side: str, ours_print: str) -> float | None:
    """2x ours' training time at this seed (the GRPO sides), when ours has run under today's settings."""
    if side == "ours":
        return None
    ours = doc.get("recipes", {}).get(recipe, {}).get("runs", {}).get("ours", {}).get(str(seed))
    if ours is None or ours.get("fingerprint") != ours_print:
        print(f"[race] note: no ours run of {recipe} seed {seed} yet: {side} runs its episodes without a time cap")
        return None
    return race_summary.TIME_FACTOR * ours["train_s"]


def run_child(spec: dict, log: Path) -> dict:
    threads = str(spec["threads"])
    from rlhf_app.offline import OFFLINE_ENV

    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "OMP_WAIT_POLICY": "passive", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = Path(spec["out_dir"])
    spec_path, result_path = out / "spec.json", out / "result.json"
    trained_spec = continues(out, spec)
    if trained_spec:
        print(f"[race]   its training finished before a restart ({out}/trained.json): scoring the snapshots not yet "
              "scored", flush=True)
    else:
        shutil.rmtree(out, ignore_errors=True)  # the bench's own folder
        out.mkdir(parents=True)
        spec_path.write_text(json.dumps(spec))
    start = time.time()
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, str(BENCH / "race_child.py"), str(spec_path), str(result_path)],
                              cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        again = ""
        if (out / "trained.json").is_file():  # the snapshots stay: the same command scores the rest
            again = "; its training finished: the same command scores the snapshots left"
        else:
            shutil.rmtree(out / "snapshots", ignore_errors=True)
        raise SystemExit(f"error: {spec['recipe']} {spec['side']} seed {spec['seed']} failed (rc {proc.returncode}): "
                         f"{tail[0]}; see {log}{again}")
    result = {**json.loads(result_path.read_text()), "wall_s": round(time.time() - start, 1)}
    if trained_spec:  # wall_s is this process's share; the run's code is the training's
        result.update(train_commit=trained_spec["commit"], train_dirty=trained_spec["dirty"],
                      train_host=trained_spec.get("host"))  # None: trained before hosts were recorded
    shutil.rmtree(out)  # snapshots and the last checkpoint: the figures are in the result, the log stays
    return result


def continues(out: Path, spec: dict) -> dict | None:
    """The spec `out` was trained under when it holds this very run (the same spec, settings fingerprint included;
    the commit may differ) trained to the end by a process stopped while scoring its snapshots
    (bench/race_child.py): then only the evaluation goes on. Else None."""
    def same(a: dict, b: dict) -> bool:
        return {k: v for k, v in a.items() if k not in ("commit", "dirty", "host")} == \
            {k: v for k, v in b.items() if k not in ("commit", "dirty", "host")}
    try:
        old = json.loads((out / "spec.json").read_text())
    except (OSError, ValueError):
        return None
    return old if (out / "trained.json").is_file() and same(old, spec) else None


def set_aside(rec: dict, current: dict[str, str]) -> None:
    """Every run of a side in `current` whose fingerprint is not that side's today moves to the recipe's
    "superseded": a changed recipe changes every side's settings, and the summary compares today's runs only."""
    for side, by_seed in rec["runs"].items():
        for stale in [s for s, r in by_seed.items() if side in current and r.get("fingerprint") != current[side]]:
            rec.setdefault("superseded", []).append(by_seed.pop(stale))


def merge(path: Path, recipe: str, side: str, seed: int, run: dict, current: dict[str, str] | None = None) -> dict:
    """`run` into the result file at recipe / side / seed (read again just before the write, written whole);
    runs under another fingerprint than today's (`current`: side -> fingerprint; by default `run`'s for its
    side) move to the recipe's "superseded"; the summary is redone."""
    doc = json.loads(path.read_text()) if path.is_file() else {}
    rec = doc.setdefault("recipes", {}).setdefault(recipe, {"runs": {}})
    rec["runs"].setdefault(side, {})
    set_aside(rec, {**(current or {}), side: run["fingerprint"]})
    rec["runs"][side][str(seed)] = run
    rec["summary"] = summary_of(recipe, rec["runs"])
    doc["target"] = ("ours reaches the target (imdb: +0.30 positive share; gsm8k: the best strict accuracy both "
                     "reach) in <= 0.5x the wall time of TRL's GRPOTrainer, or TRL never reaches it within 2x")
    outputs.write_result(doc, path)
    return doc


def summary_of(recipe: str, runs: dict) -> dict:
    """The recipe's summary of `runs` against its target (bench/race_config.py TARGETS)."""
    return race_summary.summarise(runs, *race_config.TARGETS[recipe])


def resummarise(doc: dict) -> bool:
    """Each recipe's summary redone from its runs with today's arithmetic; True when one changed."""
    changed = False
    for recipe, rec in doc.get("recipes", {}).items():
        fresh = json.loads(json.dumps(summary_of(recipe, rec["runs"])))  # as the file holds it
        changed |= fresh != rec.get("summary")
        rec["summary"] = fresh
    return changed


def build_assets(args) -> None:
    """The models the runs load, built (when not cached) before any clock starts."""
    names = set()
    for recipe in args.recipes:
        cfg = race_config.side_config(recipe, "ours", 0, quick=args.quick, extra=args.extra)
        names |= {v.removeprefix("asset:") for v in (cfg.model.name_or_path, cfg.reward.model or "")
                  if v.startswith("asset:")}
    for name in sorted(names):
        done = subprocess.run([sys.executable, "-m", "rlhf_app.assets.registry", "build", name], cwd=ROOT,
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"error: building asset:{name} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    path = outputs.result_path("race", args.kind, args.out)
    if args.summary:
        doc = json.loads(path.read_text()) if path.is_file() else {}
        if resummarise(doc):
            outputs.write_result(doc, path)
            print(f"[race] {path}: summaries redone from the runs (bench/race_summary.py changed)", flush=True)
        for recipe, rec in doc.get("recipes", {}).items():
            print("\n".join(race_summary.lines(recipe, rec["summary"])))
        return
    commit, dirty = outputs.code_state()
    build_assets(args)
    WORK.mkdir(parents=True, exist_ok=True)
    for recipe in args.recipes:
        prints = {side: fingerprint(args, recipe, side) for side in race_config.SIDES}
        for seed in args.seed_list:
            for side in args.sides:
                doc = json.loads(path.read_text()) if path.is_file() else {}
                spec = spec_of(args, recipe, side, seed, time_cap(doc, recipe, seed, side, prints["ours"]),
                               prints[side], commit, dirty)
                print(f"[race] {recipe} {side} seed {seed} (threads {args.threads}"
                      + (f", time cap {spec['time_cap_s']:.0f} s)" if spec["time_cap_s"] else ")"), flush=True)
                run = run_child(spec, WORK / f"{args.kind or 'full'}-{recipe}-{side}-{seed}.log")
                cfg = race_config.side_config(recipe, side, seed, args.threads, args.quick, args.extra,
                                              args.peer_factor, args.held_out)
                settings = race_config.settings(cfg)
                if side == "trl":
                    settings.update(engine="transformers generate (TRL use_vllm=false)",
                                    grpo_config={k: v for k, v in race_config.trl_kwargs(cfg, "").items()
                                                 if k != "output_dir"})
                if "train_commit" in run:  # trained before a restart: the code that trained it, and this one's
                    run["scored_at_commit"] = commit
                run.update(recipe=recipe, side=side, seed=seed, fingerprint=prints[side], settings=settings,
                           time_cap_s=spec["time_cap_s"], commit=run.pop("train_commit", commit),
                           dirty=run.pop("train_dirty", dirty), cpus=os.cpu_count(),
                           host=run.pop("train_host", spec["host"]),
                           load_avg_end=os.getloadavg(), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           command=" ".join(["bench/race.py", *argv]))
                doc = merge(path, recipe, side, seed, run, prints)
                last = run["points"][-1]
                metric = race_config.TARGETS[recipe][0]
                print(f"[race]   trained {run['train_s']:.0f} s ({last['episodes']} episodes), evaluated "
                      f"{len(run['points'])} snapshots in {run['eval_s']:.0f} s; {metric} "
                      f"{run['points'][0]['all'][metric]:.3f} -> {last['all'][metric]:.3f}", flush=True)
        print("\n".join(race_summary.lines(recipe, doc["recipes"][recipe]["summary"])), flush=True)
    print(f"[race] wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
