"""`rlhf-app sft ...` and `rlhf-app rm ...` (or scripts/sft.py, scripts/rm.py): `--help`, `print_config=true`,
else the stage's run (rlhf_app/stages). The same recipes, `key=value` and TRL's `--flag value` as train."""

from __future__ import annotations

import dataclasses

from rlhf_app.config import available_recipes, load_config, to_yaml
from rlhf_app.config.loading import STAGE_SECTIONS
from rlhf_app.config.pipeline import refuse_pipeline

TRAINERS = {"sft": "SFTTrainer", "rm": "RewardTrainer"}


def usage(stage: str) -> str:
    names = ", ".join(f.name for f in dataclasses.fields(STAGE_SECTIONS[stage]))
    return (f"usage: rlhf-app {stage} recipe=NAME {stage}.dataset=FILE_OR_HUB_ID key=value ...   "
            f"(or python scripts/{stage}.py ...)\n\n"
            f"TRL's {TRAINERS[stage]} with the run folder's rules; output_dir defaults to the recipe's, /{stage}.\n"
            f"recipes: {', '.join(available_recipes())}; print_config=true shows every key with its value.\n"
            f"The {stage} section (TRL's names; on the command line also as --name value or name=value):\n  {names}\n"
            "Also: model.*, peft.* (LoRA), output_dir, seed, resume_from=auto, overwrite_output_dir, report_to.")


def main(argv: list[str], stage: str) -> None:
    if "-h" in argv or "--help" in argv:
        print(usage(stage))
        return
    cfg = load_config(argv, stage=stage)
    refuse_pipeline(cfg, stage)
    if cfg.print_config:
        print(to_yaml(cfg), end="")
        return
    if stage == "sft":
        from rlhf_app.stages.sft import run
    else:
        from rlhf_app.stages.rm import run
    run(cfg)


def sft(argv: list[str]) -> None:
    main(argv, "sft")


def rm(argv: list[str]) -> None:
    main(argv, "rm")
