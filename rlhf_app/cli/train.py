"""`rlhf-app train recipe=NAME key=value ...` (or `accelerate launch scripts/train.py ...`): `--help`,
`print_config=true`, else the run that `rlhf_app.run` composes."""

from __future__ import annotations

from rlhf_app.config import ALIASES, available_recipes, load_config, to_yaml
from rlhf_app.config.pipeline import refuse_pipeline


def usage() -> str:
    """`--help`: both command-line habits, the recipes and TRL's names with the keys they set."""
    names = "\n".join(f"  --{alias:<34} {key}" for alias, key in ALIASES.items())
    return (f"usage: python scripts/train.py recipe=NAME key=value ...   (or rlhf-app train ...)\n"
            f"       python scripts/train.py --config NAME_OR_FILE --key value ...\n\n"
            f"recipes: {', '.join(available_recipes())}; print_config=true shows every key with its value.\n"
            f"TRL's names, accepted in recipes and on the command line:\n{names}")


def main(argv: list[str]) -> None:
    if "-h" in argv or "--help" in argv:
        print(usage())
        return
    cfg = load_config(argv)
    refuse_pipeline(cfg, "train")
    if cfg.print_config:
        print(to_yaml(cfg), end="")
        return
    from rlhf_app.run import run

    run(cfg)
