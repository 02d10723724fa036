"""GSM8K accuracy of a pipeline's phases (the base model, after SFT, after PPO) on the same problems.

    .venv/bin/python bench/phases.py RUN_DIR [--generated 300] [--engine vllm|hf] [--phases base sft ppo]
        [--batch-size 32] [--samples 2]

RUN_DIR is a finished `rlhf-app pipeline` folder (RUN_DIR/sft/final, RUN_DIR/ppo/final). Two problem sets:
`generated`, problems from the training templates with a seed no stage draws (the PPO stage's
`seed + 7919`), minus any question the SFT set (asset:gsm8k-sft) or PPO trained on; and `real`, the 55
GSM8K test items whose templates never trained. Every phase answers greedily (do_sample=false) with
the PPO stage's prompt and response length, scored by its reward (the GSM8K checker): strict and
flexible accuracy, format_end_share, each with its standard error sqrt(p(1-p)/n). One JSON line out.
--phases scores only those (the gains between the ones scored); --batch-size: the episodes sampled at once
(greedy: the same answers at any size; with tools each round of the loop waits for the whole batch).

With tools (the PPO stage's rollout.tools, e.g. gsm8k-tools-offline) every phase answers through the engines'
tool loop with the recipe's chat template (model.chat_template, the base model's too), and each set adds
tool calls per episode, the share of episodes that called, and call success (calls that did not fail), read
from the `tool_calls` / `tool_failures` columns the engines put in each rollout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
KEYS = ("accuracy_strict", "accuracy_flexible", "format_end_share")
GENERATED = 300  # generated problems scored (the GSM8K held-out size: >= 300, and the 55 real items)
PHASES = ("base", "sft", "ppo")


def standard_error(p: float, n: int) -> float:
    """Of a share p measured on n independent items."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def problem_sets(cfg, n_generated: int) -> dict[str, list[dict]]:
    """{"generated": n problems no stage trained on, "real": the held-out GSM8K test items}."""
    from rlhf_app.assets import gsm8k

    seen = {p["question"] for p in gsm8k.train_problems(gsm8k.SFT_SIZE, gsm8k.SFT_SEED)}
    seen |= {p["question"] for p in gsm8k.train_problems(cfg.data.num_train or gsm8k.GSM8K_TRAIN_SIZE, cfg.seed)}
    drawn = gsm8k.train_problems(2 * n_generated + 64, cfg.seed + 7919)
    generated = [p for p in drawn if p["question"] not in seen][:n_generated]
    if len(generated) < n_generated:
        raise SystemExit(f"only {len(generated)} unseen generated problems: lower --generated")
    return {"generated": generated, "real": gsm8k.eval_problems()}


class ToolCount:
    """The reward, recording each episode's tool calls and failed calls (the engines' rollout columns) as it
    scores them: what the evaluation's result does not keep."""

    def __init__(self, reward_fn):
        self.reward_fn, self.calls, self.failures = reward_fn, [], []

    def __call__(self, prompts, completions, **columns):
        if "tool_calls" in columns:
            self.calls += [int(c) for c in columns["tool_calls"]]
            self.failures += [int(f) for f in columns.get("tool_failures", [0] * len(completions))]
        return self.reward_fn(prompts, completions, **columns)

    def __getattr__(self, name):  # extra_metrics and the rest: the reward's own
        return getattr(self.reward_fn, name)

    def figures(self) -> dict:
        if not self.calls:
            return {}
        calls, failed = sum(self.calls), sum(self.failures)
        return {"tool_calls_per_episode": calls / len(self.calls),
                "episodes_with_calls": sum(c > 0 for c in self.calls) / len(self.calls),
                "tool_call_success": (calls - failed) / calls if calls else None}


def figures(entry: dict, n: int, tools: dict | None = None, samples: int = 2) -> dict:
    out = {"n": n, "mean_score": entry["mean_score"], **(tools or {})}
    for key in KEYS:
        p = entry["extra"].get(key)
        if p is not None:
            out[key], out[f"{key}_se"] = p, standard_error(p, n)
    out["samples"] = entry["samples"][:samples]
    return out


def evaluate_phases(run_dir: Path, n_generated: int, engine_name: str | None = None,
                    which: tuple[str, ...] = PHASES, batch_size: int = 32, samples: int = 2) -> dict:
    import torch
    from accelerate import Accelerator
    from datasets import Dataset

    from rlhf_app import evaluation, rewards
    from rlhf_app.assets import registry as assets
    from rlhf_app.config import load_config
    from rlhf_app.data import prompts as data
    from rlhf_app.engines import build_engine
    from rlhf_app.models import policy as models
    from rlhf_app.models.policy import set_chat_template

    cfg = load_config([f"recipe={run_dir / 'ppo' / 'config.yaml'}", "ppo.do_sample=false"])
    if engine_name:
        cfg.rollout.engine = engine_name
    torch.set_num_threads(cfg.num_threads or torch.get_num_threads())
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    sft_cfg = load_config([f"recipe={run_dir / 'sft' / 'config.yaml'}"])
    phases = {"base": assets.resolve(sft_cfg.model.name_or_path), "sft": run_dir / "sft" / "final",
              "ppo": run_dir / "ppo" / "final"}
    phases = {phase: folder for phase, folder in phases.items() if phase in which}
    tokenizer = None
    out = {"engine": cfg.rollout.engine, "greedy": True, "phases": {}}
    engine = datasets = None
    reward_fn = rewards.build_reward(cfg, device)
    for phase, folder in phases.items():
        start = time.time()
        model, tokenizer = models.load_policy(folder, dtype="float32")
        set_chat_template(tokenizer, cfg.model.chat_template)  # the base model's too: the recipe's template
        if datasets is None:
            datasets = {name: Dataset.from_list(data.gsm8k_rows(problems, tokenizer, cfg, f"{name} eval"))
                        for name, problems in problem_sets(cfg, n_generated).items()}
        if engine is None and cfg.rollout.engine == "vllm":
            engine = build_engine(cfg, accelerator, model, tokenizer)
        model = model.to(device).eval()
        out["phases"][phase] = {}
        for name, ds in datasets.items():
            counted = ToolCount(reward_fn)
            entry = evaluation.evaluate_policy(cfg, model, tokenizer, ds, counted, device, engine=engine,
                                               batch_size=batch_size)
            out["phases"][phase][name] = figures(entry, len(ds), counted.figures(), samples)
        out["phases"][phase]["eval_s"] = round(time.time() - start, 1)
    out["gains"] = gains(out["phases"])
    return out


def gains(phases: dict) -> dict:
    """Each step's change in strict accuracy on each set, in standard errors of the difference
    (sqrt(se_a^2 + se_b^2), the two phases' shares treated as independent: conservative for paired items)."""
    out = {}
    for a, b in (("base", "sft"), ("sft", "ppo"), ("base", "ppo")):
        if a not in phases or b not in phases:
            continue
        for name in phases[a]:
            if name == "eval_s":
                continue
            for key in ("accuracy_strict", "accuracy_flexible"):
                out[f"{a}->{b}/{name}/{key}"] = difference(phases[a][name], phases[b][name], key)
    return out


def difference(a: dict, b: dict, key: str) -> dict:
    """b's share `key` minus a's, in standard errors of the difference (sqrt(se_a^2 + se_b^2), the two shares
    treated as independent): {"diff", "se", "in_se"}."""
    se = math.hypot(a[f"{key}_se"], b[f"{key}_se"])
    diff = b[key] - a[key]
    return {"diff": diff, "se": se, "in_se": diff / se if se else None}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--generated", type=int, default=GENERATED)
    parser.add_argument("--engine", choices=("vllm", "hf"))
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2, help="answers kept per phase and set")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.samples < 0:
        parser.error("--batch-size must be >= 1 and --samples >= 0")
    print(json.dumps(evaluate_phases(args.run_dir, args.generated, args.engine, tuple(args.phases), args.batch_size,
                                     args.samples)))


if __name__ == "__main__":
    main(sys.argv[1:])
