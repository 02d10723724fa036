"""GSM8K figures of a finished single-stage run (gsm8k-offline) on generated problems it never trained on.

    .venv/bin/python bench/generated_eval.py RUN_DIR [--generated 300]

Before (the recipe's base policy) and after (RUN_DIR/final), on bench/phases.py's `generated` set: problems
from the training templates with a seed no stage draws (`seed + 7919`), minus any question PPO or the SFT
set trained on; the same set the race (bench/race.py) and the pipelines' phase evaluations score. Sampled
as training's evaluation samples (the run's vLLM engine when it used one, seeded). One JSON line out:
{"before"|"after": {"mean_score", accuracy figures, "n", "samples"}}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
from phases import GENERATED  # noqa: E402  (bench/phases.py: the same set and size)


def generated_eval(run_dir: Path, n: int = GENERATED) -> dict:
    import torch
    from accelerate import Accelerator
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from learning_figures import gsm8k_figures
    from phases import problem_sets
    from rlhf_app import evaluation, rewards
    from rlhf_app.assets import registry as assets
    from rlhf_app.config import load_config
    from rlhf_app.data import prompts as data
    from rlhf_app.engines import build_engine
    from rlhf_app.models import policy as models

    cfg = load_config([f"recipe={run_dir / 'config.yaml'}"])
    torch.set_num_threads(cfg.num_threads or torch.get_num_threads())
    accelerator = Accelerator()
    device = accelerator.device
    problems = problem_sets(cfg, n)["generated"]
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


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--generated", type=int, default=GENERATED)
    args = parser.parse_args(argv)
    print(json.dumps(generated_eval(args.run_dir, args.generated)))


if __name__ == "__main__":
    main(sys.argv[1:])
