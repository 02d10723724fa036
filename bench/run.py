"""`make bench`: rlhf_app's PPO against TRL 1.12's PPOTrainer, same models, data and settings.

    .venv/bin/python bench/run.py [--quick] [--only tiny|smollm2] [--match TEXT] [--pairs N] [--updates N]

Every setting runs as alternating A/B pairs (ours then peer, then peer then ours, ...), each run
in its own process with one torch thread, so memory peaks and thread pools never mix and slow
spells of a shared machine fall on both sides. Writes bench/results.json (a quick or partial run:
bench/work/results-quick.json / -partial.json, see outputs.py) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "work"
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import outputs  # noqa: E402
import summary  # noqa: E402

MODELS = {"tiny": "asset:tiny", "smollm2": "asset:smollm2-135m-instruct"}
# Hyper-parameters shared by both engines: the tiny recipe's for tiny, TRL's PPO defaults for
# SmolLM2; 4 PPO epochs everywhere (both engines' default). Update counts fit `make bench` in
# 20 minutes on 2 cores, the peer's environment included.
TINY = dict(model="tiny", mini_batches=2, epochs=4, lr=3e-3, kl_coef=0.01, vf_coef=0.5, temperature=1.0)
SMOL = dict(model="smollm2", mini_batches=1, epochs=4, lr=1e-5, kl_coef=0.05, vf_coef=0.1, temperature=1.0)
# Besides rlhf_app fp32 and the peer, each pair runs these rlhf_app variants: `bf16` (ppo.bf16=true,
# autocast) and `tokens` (ppo.max_tokens_per_micro_batch=max_tokens, fp32); their rows sit beside fp32.
# `vllm`: rlhf_app fp32 with rollout.engine=vllm (the colocated vLLM engine, weights synced every update).
VARIANTS = {"bf16": dict(precision="bf16"), "tokens": dict(precision="fp32"), "vllm": dict(precision="fp32", engine="vllm")}
SETTINGS = [
    dict(TINY, batch=16, response_length=16, updates=20, pairs=2, variants=("vllm",)),
    dict(TINY, batch=64, response_length=32, updates=5, pairs=2, variants=("bf16", "tokens", "vllm"), max_tokens=512),
    dict(SMOL, batch=4, response_length=16, updates=3, pairs=2, variants=("bf16", "vllm")),
    dict(SMOL, batch=8, response_length=24, updates=2, pairs=2, variants=("bf16", "tokens", "vllm"), max_tokens=160),
    # GSM8K-like: 32 episodes x 128 response tokens, 1 PPO epoch (one optimizer step per update).
    dict(SMOL, batch=32, response_length=128, epochs=1, updates=2, pairs=1, variants=("bf16", "tokens", "vllm"),
         max_tokens=1152),
]
RUN_TIMEOUT_S = 900
EVAL_PROMPTS = {"tiny": 64, "smollm2": 32}  # held-out prompts for the reward after training


def prompts_file(model: str, path: str, split: str) -> Path:
    """rlhf_app's toy prompts (512 to train on, a few dozen held out as its data module splits them),
    tokenized once with the bench tokenizer: both engines read the same token ids."""
    from rlhf_app.data.prompts import toy_prompts

    out = WORK / model / f"{split}-prompts.json"
    if not out.is_file():
        tokenizer = common.bench_tokenizer(path)
        texts = toy_prompts(512, seed=0) if split == "train" else toy_prompts(EVAL_PROMPTS[model], seed=10_000)
        rows = [{"prompt": p, "input_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in texts]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows))
    return out


def eval_before(setting: dict, path: str, eval_prompts: Path) -> dict:
    """The held-out reward of the initial policy (the same for both engines), for scale."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    torch.set_num_threads(1)
    logging.set_verbosity_error()  # the fresh score head's load report is expected here
    tokenizer = common.bench_tokenizer(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    scorer = common.RewardModelScore(common.seq_classifier(path, common.REWARD_SEED, tokenizer.pad_token_id), tokenizer)
    return common.eval_reward(policy, tokenizer, scorer, json.loads(eval_prompts.read_text()), setting)


def run_one(engine: str, setting: dict, pair: int, policy_path: str, prompts: Path, eval_prompts: Path) -> dict:
    """One engine ("ours", "peer", or an rlhf_app variant of VARIANTS), one setting, one process.
    -> its raw result (see ours.py / peer.py)."""
    name = f"{summary.label(setting).replace(' ', '_').replace('×', 'x')}-{engine}-{pair}"
    spec = {k: setting[k] for k in ("batch", "response_length", "mini_batches", "epochs", "updates", "lr",
                                    "kl_coef", "vf_coef", "temperature")}
    if engine in VARIANTS:
        spec.update(VARIANTS[engine], max_tokens=setting["max_tokens"] if engine == "tokens" else None)
        engine = "ours"
    spec.update(policy_path=policy_path, prompts_path=str(prompts), eval_prompts_path=str(eval_prompts), seed=pair,
                out_dir=str(WORK / "runs" / name))
    spec_path, result_path, log_path = (WORK / "runs" / f"{name}.{ext}" for ext in ("spec.json", "result.json", "log"))
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec, indent=1))
    python = sys.executable if engine == "ours" else str(PEER_PYTHON)
    env = {**os.environ, **common.OFFLINE_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.run([python, str(BENCH / f"{engine}.py"), str(spec_path), str(result_path)],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=RUN_TIMEOUT_S)
    if proc.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["(no output)"]
        sys.exit(f"error: the {engine} run {name} failed ({tail[0][:200]}); full log: {log_path}")
    return json.loads(result_path.read_text())


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return {"nproc": os.cpu_count(), "cpu": cpu, "isa": isa, "ram_gib": round(mem_kib / 2**20, 1),
            "python": platform.python_version(), "load_avg_start": os.getloadavg()}


def versions(python: str) -> dict:
    code = "import torch, transformers, trl, accelerate, json; print(json.dumps({m.__name__: m.__version__ " \
           "for m in (torch, transformers, trl, accelerate)}))"
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 pair, 3 updates, each model's first setting")
    parser.add_argument("--only", choices=sorted(MODELS), help="run the settings of one model")
    parser.add_argument("--match", action="append", default=[], metavar="TEXT",
                        help="run only the settings whose label contains TEXT, e.g. --match b8×r24 (repeatable)")
    parser.add_argument("--pairs", type=int, help="A/B pairs per setting (default: per setting)")
    parser.add_argument("--updates", type=int, help="PPO updates per run, the first one untimed (default: per setting)")
    parser.add_argument("--policy", action="append", default=[], metavar="MODEL=PATH",
                        help="use another folder for a model, e.g. smollm2=/path/to/SmolLM2-135M-Instruct")
    parser.add_argument("--out", help="result file (default: bench/results.json for a full run, "
                                      "bench/work/results-quick.json or -partial.json otherwise)")
    args = parser.parse_args(argv)
    # Partial: fewer settings, pairs or updates than the full run (more of them is a fuller run), or other models.
    run_kind = outputs.kind(args.quick, bool(args.only or args.match or args.policy)
                            or any(args.pairs is not None and args.pairs < s["pairs"] for s in SETTINGS)
                            or any(args.updates is not None and args.updates < s["updates"] for s in SETTINGS))
    out_path = outputs.result_path("results", run_kind, args.out)
    host = machine()
    for item in args.policy:
        model, sep, path = item.partition("=")
        if not sep or model not in MODELS:
            sys.exit(f"error: --policy {item!r}: write MODEL=PATH with MODEL one of {', '.join(MODELS)}")
        MODELS[model] = path
    if not PEER_PYTHON.is_file():
        sys.exit(f"error: {PEER_PYTHON} is missing: run `make bench`, which creates the peer's environment")
    settings = [s for s in SETTINGS if (not args.only or s["model"] == args.only)
                and (not args.match or any(m.replace("x", "×") in summary.label(s) for m in args.match))]
    if not settings:
        sys.exit("error: no setting matches --only/--match; labels: " + ", ".join(summary.label(s) for s in SETTINGS))
    if args.quick:
        firsts = {s["model"]: s for s in reversed(settings)}  # each model's first (smallest) setting
        settings = [dict(s, updates=3, pairs=1) for s in settings if firsts[s["model"]] is s]
    settings = [dict(s, pairs=s["pairs"] if args.pairs is None else args.pairs,
                     updates=s["updates"] if args.updates is None else args.updates) for s in settings]
    if min(s["pairs"] for s in settings) < 1 or min(s["updates"] for s in settings) < 2:
        sys.exit("error: --pairs must be >= 1 and --updates >= 2 (the first update is the untimed warm-up)")
    from rlhf_app.assets import registry as assets

    paths = {}
    for model in sorted({s["model"] for s in settings}):
        print(f"preparing {model} ({MODELS[model]})", flush=True)
        path = assets.resolve(MODELS[model])
        paths[model] = (path, prompts_file(model, path, "train"), prompts_file(model, path, "eval"))
    total = sum((2 + len(s.get("variants", ()))) * s["pairs"] for s in settings)
    done, started, summaries = 0, time.time(), []
    for setting in settings:
        before = eval_before(setting, paths[setting["model"]][0], paths[setting["model"]][2])
        pairs = []
        for pair in range(setting["pairs"]):
            order = (("ours", "peer") if pair % 2 == 0 else ("peer", "ours")) + tuple(setting.get("variants", ()))
            figures = {}
            for engine in order:
                done += 1
                print(f"[{done}/{total}] {summary.label(setting)} {engine} (pair {pair + 1}/{setting['pairs']}, "
                      f"{setting['updates']} updates) ...", end=" ", flush=True)
                t0 = time.time()
                raw = run_one(engine, setting, pair, *paths[setting["model"]])
                figures[engine] = summary.run_figures(raw, setting["batch"])
                figures[engine]["reward_checksum"] = raw["reward_checksum"]
                print(f"{figures[engine]['update_s']:.2f} s/update, {figures[engine]['peak_rss_mib']:.0f} MiB "
                      f"({time.time() - t0:.0f} s)", flush=True)
            checksums = {engine: fig.pop("reward_checksum") for engine, fig in figures.items()}
            if max(checksums.values()) - min(checksums.values()) > 1e-6:
                sys.exit("error: the engines built different reward models; check bench/common.py seq_classifier")
            pairs.append(figures)
        summaries.append(summary.setting_summary(setting, pairs, before))
    result = {"command": " ".join(["make bench", *argv]), "kind": run_kind or "full", "machine": {**host, "load_avg_end": os.getloadavg()},
              "versions": {"ours": versions(sys.executable), "peer": versions(str(PEER_PYTHON))},
              "wall_s": round(time.time() - started), "targets": summary.TARGETS, "settings": summaries}
    outputs.write_result(result, out_path)
    print("\n" + summary.markdown_tables(summaries))
    print(f"\nwrote {out_path} ({result['wall_s']} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
