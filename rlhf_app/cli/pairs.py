"""`rlhf-app pairs ...` (or scripts/pairs.py): `--help`, `print_config=true`, else stages/pairs.py: preference
pairs sampled from a policy and labelled by a reward source. The same recipes and arguments as train."""

from __future__ import annotations

import dataclasses

from rlhf_app.config import available_recipes, load_config, to_yaml
from rlhf_app.config.pipeline import refuse_pipeline
from rlhf_app.config.stages import PairsSection


def usage() -> str:
    names = ", ".join(f.name for f in dataclasses.fields(PairsSection))
    return ("usage: rlhf-app pairs recipe=NAME key=value ...   (or python scripts/pairs.py ...)\n\n"
            "Samples pairs.num_generations completions of each training prompt (data.*) from model.name_or_path\n"
            "(rollout.engine; ppo.response_length, ppo.temperature), scores them with the labeller (reward.funcs or\n"
            "reward.name, as train builds its reward) and writes the best against the worst of each prompt in TRL's\n"
            "preference format, with a margin: output_dir/final/pairs.jsonl (rlhf-app rm rm.dataset=...), and\n"
            "pairs_summary.json. output_dir defaults to the recipe's, /pairs.\n"
            f"recipes: {', '.join(available_recipes())}; print_config=true shows every key with its value.\n"
            f"The pairs section (also as --name value or name=value): {names}")


def main(argv: list[str]) -> None:
    if "-h" in argv or "--help" in argv:
        print(usage())
        return
    cfg = load_config(argv, stage="pairs")
    refuse_pipeline(cfg, "pairs")
    if cfg.print_config:
        print(to_yaml(cfg), end="")
        return
    from rlhf_app.stages.pairs import run

    run(cfg)
