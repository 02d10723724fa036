"""Score a saved policy on its recipe's held-out prompts:

    rlhf-app eval run_dir=runs/tiny [split=eval|train] [num=N] [checkpoint=final|checkpoint-N]
    (or python scripts/evaluate.py ...; --run_dir runs/tiny --num 8 works too)

Loads the run's recorded config, the policy from `run_dir/<checkpoint>`, the recipe's data and
reward, generates with the recipe's generation settings and the evaluation seed the trainer uses
(so `checkpoint=final` reproduces eval.json's "after" numbers), prints the mean reward and the
reward's extra metrics, and writes `run_dir/eval-<checkpoint>.json` (`-train` added for split=train).
Dotted overrides (e.g. `ppo.temperature=0.7`, `ppo.do_sample=false`) change generation or reward.
"""
import difflib
import json
import re
import sys
from pathlib import Path

from rlhf_app.config import ConfigError, load_config, normalize_args
from rlhf_app.run_dir.checkpoint import policy_folders

OPTIONS = ("run_dir", "split", "num", "checkpoint")
USAGE = "python scripts/evaluate.py run_dir=PATH [split=eval|train] [num=N] [checkpoint=final|checkpoint-N]"


def parse_args(argv: list[str]) -> tuple[dict, list[str]]:
    """(options, dotted config overrides); a bad argument raises ConfigError naming the fix."""
    opts, overrides = {"split": "eval", "num": None, "checkpoint": "final"}, []
    for arg in normalize_args(argv):
        key, sep, value = arg.partition("=")
        if not sep or arg.startswith("-"):
            raise ConfigError(f"arguments are key=value, not {arg!r}: {USAGE}")
        if "." in key:
            overrides.append(arg)
        elif key in OPTIONS:
            opts[key] = value
        else:
            close = difflib.get_close_matches(key, OPTIONS, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(f"unknown argument {key}: {hint}usage: {USAGE}")
    if not opts.get("run_dir"):
        raise ConfigError(f"pass the run folder: {USAGE}")
    if opts["split"] not in ("eval", "train"):
        raise ConfigError(f"split={opts['split']} is not one of eval, train")
    if opts["num"] is not None:
        if not opts["num"].isdigit() or int(opts["num"]) < 1:
            raise ConfigError(f"num={opts['num']} must be a positive integer (prompts to score)")
        opts["num"] = int(opts["num"])
    if not re.fullmatch(r"final|checkpoint-\d+", opts["checkpoint"]):
        raise ConfigError(f"checkpoint={opts['checkpoint']} must be final or checkpoint-N")
    return opts, overrides


def main(argv: list[str]) -> None:
    try:
        opts, overrides = parse_args(argv)
        run_dir = Path(opts["run_dir"])
        recorded = run_dir / "config.yaml"
        if not run_dir.is_dir():
            raise ConfigError(f"run_dir {run_dir} does not exist: pass the output_dir of a training run")
        if not recorded.is_file():
            raise ConfigError(f"{recorded} does not exist: run_dir must be the output_dir of a training run")
        if not (run_dir / opts["checkpoint"]).is_dir():
            have = ", ".join(policy_folders(run_dir)) or "none (did the run finish or save_steps > 0?)"
            raise ConfigError(f"no {opts['checkpoint']} in {run_dir}: saved policies: {have}")
        cfg = load_config([f"recipe={recorded}", *overrides])
    except ConfigError as err:
        sys.exit(f"error: {err}")

    from rlhf_app import run as cli

    cli.set_network_env(cfg)  # before the heavy imports
    try:
        result = evaluate_run(cfg, run_dir, opts)
    except cli.UserError as err:
        sys.exit(f"error: {err}")
    extra = "".join(f", {k} {v:.4f}" for k, v in result["extra"].items())
    print(f"{opts['checkpoint']} on {len(result['samples'])} {opts['split']} prompts: "
          f"mean score {result['mean_score']:.4f}{extra}")
    suffix = "-train" if opts["split"] == "train" else ""
    out = run_dir / f"eval-{opts['checkpoint']}{suffix}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def evaluate_run(cfg, run_dir: Path, opts: dict) -> dict:
    """Load, generate and score with the trainer's own functions; the eval.json entry plus metadata."""
    import torch
    from accelerate import PartialState

    from rlhf_app import rewards
    from rlhf_app import run as cli
    from rlhf_app.data import prompts as data
    from rlhf_app.models import policy as models

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = PartialState().device
    with cli.hub_access("the policy's base model", cfg.model.name_or_path, cfg):
        model, tokenizer = models.load_policy(run_dir / opts["checkpoint"], dtype=cfg.model.dtype)
    model.to(device).eval()
    hub_data = cfg.data.name if cfg.data.source == "hub" else None
    with cli.hub_access("the dataset", hub_data, cfg):
        train_ds, eval_ds = data.load_prompts(cfg, tokenizer)
    dataset = eval_ds if opts["split"] == "eval" else train_ds
    dataset = dataset.select(range(min(opts["num"] or cfg.data.num_eval, len(dataset))))
    with cli.hub_access("the reward model", cfg.reward.model, cfg):
        reward_fn = rewards.build_reward(cfg, device)
    result = cli.evaluate_policy(cfg, model, tokenizer, dataset, reward_fn, device)
    if cfg.data.name == "gsm8k":
        completions = [s["completion"] for s in result["samples"]]
        result["extra"].update(gsm8k_metric_scores(completions, dataset["answer"], cfg.reward.method,
                                                   cfg.reward.multiple_answers, cfg.reward.answer_at_end))
    return {"checkpoint": opts["checkpoint"], "split": opts["split"], **result}


def gsm8k_metric_scores(completions: list[str], answers: list, method: str = "strict",
                        multiple_answers: str = "last", answer_at_end: bool = False) -> dict:
    """GSM8K figures through the project's `evaluate` metric module, under the keys training's
    eval.json uses (the module grades with the reward's own `accuracy_metrics`)."""
    from rlhf_app.rewards.gsm8k import load_gsm8k_metric

    return load_gsm8k_metric().compute(predictions=completions, references=list(answers), method=method,
                                       multiple_answers=multiple_answers, answer_at_end=answer_at_end)
