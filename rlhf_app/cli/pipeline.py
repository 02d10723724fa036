"""`rlhf-app pipeline recipe=NAME key=value ...`: the recipe's stages in order (rlhf_app/stages/pipeline.py);
`print_config=true` prints each stage's resolved config and exits."""

from __future__ import annotations

from rlhf_app.config import ConfigError, load_config, to_yaml

USAGE = """usage: rlhf-app pipeline recipe=NAME key=value ...   (or python scripts/pipeline.py ...)

Runs the recipe's stages (stages: [sft, rm, ppo]) in order, each in output_dir/<stage>/. Run the same
command again after a stop: finished stages are skipped, a started one continues from its checkpoint.
per_stage.NAME.<key>=value sets a key for one stage; stage:NAME means that stage's final/ folder
(model.name_or_path=stage:sft, reward.funcs=[stage:rm]). print_config=true shows each stage's config."""


def main(argv: list[str]) -> None:
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return
    cfg = load_config(argv)
    if not cfg.stages:
        raise ConfigError(f"{'recipe ' + cfg.recipe if cfg.recipe else 'this config'} names no stages: a pipeline "
                          "recipe lists them (stages: [sft, ppo]); a single PPO run is rlhf-app train")
    from rlhf_app.stages.pipeline import run_pipeline, stage_config

    if cfg.print_config:
        for name in cfg.stages:
            print(f"# ---- stage {name}\n{to_yaml(stage_config(cfg, name))}", end="")
        return
    run_pipeline(cfg, argv)
