"""`make bench` (GRPO part): rlhf_app's GRPO against TRL 1.16's GRPOTrainer, same model, prompts,
reward function and group size, both from `.venv`.

    .venv/bin/python bench/grpo.py [--quick] [--model tiny|smollm2] [--pairs N] [--steps N] [--out PATH]

Each model's setting is a full run of its own, with its own committed file: bench/grpo_results.json (tiny)
and bench/grpo_results_smollm2.json (SmolLM2-135M-Instruct, the target "GRPO step <= 0.7x TRL's on
SmolLM2 at equal held-out reward"); `make bench` runs both.

Each run is its own process with one torch thread, in alternating pairs (ours then TRL, then TRL
then ours, ...), so slow spells of a shared machine fall on both sides. Per run: seconds per
optimizer step (the first, warm-up step left out), peak RSS, and the held-out reward after the
last step (common.eval_reward: the same prompts, seed and sampling for both). Settings shared by
both: G responses per prompt, one optimizer step per generation batch (TRL's num_iterations=1,
ours num_ppo_epochs=1, one mini-batch), clip 0.2, k3 KL loss with beta, no KL in the reward,
group-std advantages, token-mean loss (TRL's default "dapo"), AdamW at a constant lr, grad clip 1.0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

import common  # noqa: E402
import outputs  # noqa: E402

MODELS = {"tiny": dict(path="asset:tiny", prompts=8, generations=4, response_length=16, lr=3e-3, steps=20),
          "smollm2": dict(path="asset:smollm2-135m-instruct", prompts=2, generations=4, response_length=24,
                          lr=1e-5, steps=4)}
# rlhf_app's rollout engine per model, its best honest setting here: colocated vLLM where it loads the model
# (TRL's colocated vLLM fails on CPU, so TRL samples with transformers' generate); --engine overrides.
ENGINES = {"tiny": "hf", "smollm2": "vllm"}
SHARED = dict(beta=0.04, cliprange=0.2, temperature=1.0, max_grad_norm=1.0)
EVAL_PROMPTS = 64
RESULTS = {"tiny": "grpo_results", "smollm2": "grpo_results_smollm2"}  # each model's committed file in bench/


def letter_share(prompts, completions, **columns) -> list[float]:
    """The reward both engines optimise: the share of the letter "a" in the completion (the tiny recipe's toy)."""
    return [c.count("a") / max(len(c), 1) for c in completions]


def _prompts(path: str, tokenizer, n: int, seed: int) -> list[dict]:
    from rlhf_app.data.prompts import toy_prompts

    return [{"prompt": p, "input_ids": tokenizer(p, add_special_tokens=False)["input_ids"]}
            for p in toy_prompts(n, seed=seed)]


def run_ours(spec: dict) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from datasets import Dataset

    from rlhf_app.models import policy as models
    from rlhf_app.config import load_config
    from rlhf_app.engines import build_engine
    from rlhf_app.rl import loop as trainer

    g, b = spec["generations"], spec["prompts"] * spec["generations"]
    cfg = load_config(["recipe=tiny", f"model.name_or_path={spec['policy']}", f"output_dir={spec['out_dir']}",
                       f"seed={spec['seed']}", "num_threads=1", "sample_every=0", "eval_before_after=false",
                       "algorithm.advantage_estimator=grpo", f"algorithm.num_generations={g}",
                       f"algorithm.beta={SHARED['beta']}", "ppo.kl_coef=0", f"ppo.cliprange={SHARED['cliprange']}",
                       f"ppo.per_device_train_batch_size={b}", "ppo.gradient_accumulation_steps=1",
                       "ppo.num_mini_batches=1", "ppo.num_ppo_epochs=1",
                       f"ppo.response_length={spec['response_length']}",
                       f"ppo.total_episodes={b * spec['steps']}", f"ppo.learning_rate={spec['lr']}",
                       "ppo.lr_scheduler_type=constant", f"ppo.max_grad_norm={SHARED['max_grad_norm']}",
                       f"ppo.temperature={SHARED['temperature']}", "ppo.local_rollout_forward_batch_size=64",
                       f"rollout.engine={spec['engine']}"])
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    accelerator = Accelerator()
    set_seed(cfg.seed)
    tokenizer = common.bench_tokenizer(spec["policy_path"])
    model, ref = models.build_models(cfg)
    train = Dataset.from_list(_prompts(spec["policy_path"], tokenizer, 512, 0))
    state = trainer.train(cfg, accelerator, model, ref, tokenizer, train, letter_share, out,
                          build_engine(cfg, accelerator, model, tokenizer))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"step_s": [r["time/update_s"] for r in rows], "score": [r["objective/scores"] for r in rows],
            "policy": accelerator.unwrap_model(state["model"]).policy, "tokenizer": tokenizer}


def run_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    g, b = spec["generations"], spec["prompts"] * spec["generations"]
    tokenizer = common.bench_tokenizer(spec["policy_path"])
    policy = AutoModelForCausalLM.from_pretrained(spec["policy_path"], dtype=torch.float32)
    args = GRPOConfig(output_dir=spec["out_dir"], seed=spec["seed"], use_cpu=True, bf16=False, report_to="none",
                      save_strategy="no", logging_steps=1, max_steps=spec["steps"], learning_rate=spec["lr"],
                      lr_scheduler_type="constant", max_grad_norm=SHARED["max_grad_norm"],
                      per_device_train_batch_size=b, gradient_accumulation_steps=1, num_generations=g,
                      num_iterations=1, max_completion_length=spec["response_length"],
                      temperature=SHARED["temperature"], top_k=0, top_p=1.0, beta=SHARED["beta"],
                      epsilon=SHARED["cliprange"], scale_rewards="group", loss_type="dapo", disable_dropout=True,
                      dataloader_num_workers=0)
    times, marks = [], {}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            marks["t"] = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - marks["t"])

    train = Dataset.from_list([{"prompt": r["prompt"]} for r in _prompts(spec["policy_path"], tokenizer, 512, 0)])
    trl = GRPOTrainer(model=policy, reward_funcs=[letter_share], args=args, train_dataset=train,
                      processing_class=tokenizer, callbacks=[StepTimer()])
    trl.train()
    scores = [h["reward"] for h in trl.state.log_history if "reward" in h]
    return {"step_s": times, "score": scores, "policy": trl.model, "tokenizer": tokenizer}


def child(side: str, spec_path: str, result_path: str) -> None:
    """One run in this process: train, then score the held-out prompts."""
    import torch

    sys.argv = [sys.argv[0], spec_path, result_path]
    spec = common.setup_process()
    torch.set_num_threads(1)
    from rlhf_app.assets import registry as assets

    spec["policy_path"] = assets.resolve(spec["policy"])
    out = (run_ours if side == "ours" else run_trl)(spec)
    eval_rows = _prompts(spec["policy_path"], out["tokenizer"], EVAL_PROMPTS, 10_000)
    after = common.eval_reward(out["policy"].eval(), out["tokenizer"], letter_share, eval_rows,
                               {"response_length": spec["response_length"], "temperature": SHARED["temperature"]})
    common.finish({"side": side, "step_s": out["step_s"], "score": out["score"], "eval_after": after})


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: per model)")
    parser.add_argument("--engine", choices=("hf", "vllm"), help="rlhf_app's rollout engine (default: per model, "
                                                                 "vllm for smollm2, hf for tiny)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 pair, 3 steps")
    parser.add_argument("--out", help="result file (default: bench/grpo_results.json, or _smollm2.json, for a "
                                      "full run, bench/work/grpo_results*-quick.json or -partial.json otherwise)")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.steps = 1, args.steps or 3
    # Partial: fewer pairs or steps than the model's defaults (more is a fuller run).
    args.kind = outputs.kind(args.quick, args.pairs < 2
                             or (args.steps is not None and args.steps < MODELS[args.model]["steps"]))
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    run_kind = args.kind
    out_path = outputs.result_path(RESULTS[args.model], run_kind, args.out)
    setting = dict(MODELS[args.model], steps=args.steps or MODELS[args.model]["steps"],
                   engine=args.engine or ENGINES[args.model])
    if args.pairs < 1 or setting["steps"] < 2:
        sys.exit("error: --pairs must be >= 1 and --steps >= 2 (the first step is the untimed warm-up)")
    from rlhf_app.assets import registry as assets

    assets.resolve(setting["path"])  # build the asset once, outside the timed runs
    work = BENCH / "work" / "grpo"
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **common.OFFLINE_ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    runs, started = [], time.time()
    for pair in range(args.pairs):
        for side in (("ours", "trl") if pair % 2 == 0 else ("trl", "ours")):
            name = f"{args.model}-{side}-{pair}"
            spec = dict(setting, policy=setting["path"], seed=pair, out_dir=str(work / name))
            spec_path, result_path = work / f"{name}.spec.json", work / f"{name}.result.json"
            spec_path.write_text(json.dumps(spec))
            print(f"pair {pair + 1}/{args.pairs} {side} ...", end=" ", flush=True)
            with open(work / f"{name}.log", "w") as log:
                proc = subprocess.run([sys.executable, __file__, "--child", side, str(spec_path), str(result_path)],
                                      stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=1800)
            if proc.returncode:
                sys.exit(f"error: the {side} run failed; see {work / f'{name}.log'}")
            r = json.loads(result_path.read_text())
            r.update(pair=pair, step_s_mean=sum(r["step_s"][1:]) / len(r["step_s"][1:]))
            runs.append(r)
            print(f"{r['step_s_mean']:.3f} s/step, {r['peak_rss_mib']:.0f} MiB, held-out reward "
                  f"{r['eval_after']['mean']:.3f}", flush=True)
    result = {"command": " ".join(["bench/grpo.py", *argv]), "kind": run_kind or "full", "setting": {**setting, **SHARED},
              "machine": {"nproc": os.cpu_count(), "load_avg_end": os.getloadavg()},
              "wall_s": round(time.time() - started), "runs": runs, "summary": summarise(runs),
              "model": args.model, "target": "time ours/TRL per step <= 0.7 at equal held-out reward"}
    outputs.write_result(result, out_path)
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out_path}")


def summarise(runs: list[dict]) -> dict:
    """Per-pair ratios ours/TRL (time, memory) and held-out reward differences, and their means."""
    pairs = sorted({r["pair"] for r in runs})
    side = {(r["pair"], r["side"]): r for r in runs}
    time_ratio = [side[p, "ours"]["step_s_mean"] / side[p, "trl"]["step_s_mean"] for p in pairs]
    mem_ratio = [side[p, "ours"]["peak_rss_mib"] / side[p, "trl"]["peak_rss_mib"] for p in pairs]
    reward_diff = [side[p, "ours"]["eval_after"]["mean"] - side[p, "trl"]["eval_after"]["mean"] for p in pairs]

    def mean(xs):
        return sum(xs) / len(xs)

    return {"time_ours_over_trl": mean(time_ratio), "time_per_pair": time_ratio,
            "memory_ours_over_trl": mean(mem_ratio), "memory_per_pair": mem_ratio,
            "heldout_reward_ours_minus_trl": mean(reward_diff), "reward_diff_per_pair": reward_diff,
            "ours_s_per_step": mean([side[p, "ours"]["step_s_mean"] for p in pairs]),
            "trl_s_per_step": mean([side[p, "trl"]["step_s_mean"] for p in pairs]),
            "ours_heldout_reward": mean([side[p, "ours"]["eval_after"]["mean"] for p in pairs]),
            "trl_heldout_reward": mean([side[p, "trl"]["eval_after"]["mean"] for p in pairs])}


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    else:
        main(sys.argv[1:])
