"""Score a saved policy on its recipe's held-out prompts:

    rlhf-app eval run_dir=runs/tiny [split=eval|train] [num=N] [checkpoint=final|checkpoint-N|gold-best]
    (or python scripts/eval.py ...; --run_dir runs/tiny --num 8 works too)

Reads the run's recorded config, scores with `rlhf_app.evaluation.evaluate_run` (the trainer's own
loading, generation and reward, so `checkpoint=final` reproduces eval.json's "after" numbers),
prints the mean reward and the extra metrics, and writes `run_dir/eval-<checkpoint>.json` (`-train`
added for split=train). Dotted overrides (e.g. `ppo.temperature=0.7`, `ppo.do_sample=false`) change
generation or reward.
"""
import difflib
import json
import re
from pathlib import Path

from rlhf_app.config import ConfigError, load_config, normalize_args
from rlhf_app.offline import set_network_env
from rlhf_app.run_dir.checkpoint import policy_folders

OPTIONS = ("run_dir", "split", "num", "checkpoint")
USAGE = "python scripts/eval.py run_dir=PATH [split=eval|train] [num=N] [checkpoint=final|checkpoint-N|gold-best]"


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
    if not re.fullmatch(r"final|checkpoint-\d+|gold-best", opts["checkpoint"]):
        raise ConfigError(f"checkpoint={opts['checkpoint']} must be final, checkpoint-N or gold-best (reward.gold)")
    return opts, overrides


def main(argv: list[str]) -> None:
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
    set_network_env(cfg.offline)  # before the heavy imports
    from rlhf_app.evaluation import evaluate_run

    result = evaluate_run(cfg, run_dir, opts["checkpoint"], opts["split"], opts["num"])
    extra = "".join(f", {k} {v:.4f}" for k, v in result["extra"].items())
    print(f"{opts['checkpoint']} on {len(result['samples'])} {opts['split']} prompts: "
          f"mean score {result['mean_score']:.4f}{extra}")
    suffix = "-train" if opts["split"] == "train" else ""
    out = run_dir / f"eval-{opts['checkpoint']}{suffix}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
