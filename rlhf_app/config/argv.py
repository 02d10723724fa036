"""TRL's command-line habit (`--key value`, `--key=value`, `--config FILE`) turned into `key=value` arguments."""

from __future__ import annotations

from typing import Callable

from rlhf_app.errors import UserError


class ArgvError(UserError, ValueError):
    """A malformed argument; the message is one line that names the fix."""


BOOLS = ("true", "false", "yes", "no", "1", "0")


def normalize_argv(argv: list[str], kind: Callable[[str], str]) -> tuple[list[str], set[str]]:
    """TRL's command-line habit to ours: (`key=value` arguments, the keys that were typed as `--key`).

    `--key value` and `--key=value` for every key (dotted, or TRL's flat names), `--config FILE`
    for `recipe=FILE`; a bool flag alone (`--use_peft`) is true, a list takes the values after it
    (`--lora_target_modules q_proj v_proj`), as transformers' HfArgumentParser reads them.
    `kind(key)` says which: 'bool', 'list' or 'value'.
    """
    out, flags, recipes, i = [], set(), [], 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-"):
            if "=" not in arg:
                raise ArgvError(f"argument {arg!r} has no '=': write key=value or --key value (e.g. recipe=tiny)")
            out.append(arg)
            _one_recipe(recipes, arg, arg)
            continue
        start = i - 1
        if not arg.startswith("--") or len(arg) == 2:
            raise ArgvError(f"{arg.split('=', 1)[0]} is not an option: write --key value or key=value "
                              "(e.g. --learning_rate 1e-5 or ppo.learning_rate=1e-5)")
        key, sep, value = arg[2:].partition("=")
        key = "recipe" if key == "config" else key.replace("-", "_")
        if not sep:
            how, values = kind(key), []
            if how == "bool":
                if i < len(argv) and argv[i].lower() in BOOLS:
                    values, i = [argv[i]], i + 1
                else:
                    values = ["true"]
            elif how == "list":
                while i < len(argv) and not argv[i].startswith("--") and "=" not in argv[i]:
                    values, i = values + [argv[i]], i + 1
            elif i < len(argv) and not argv[i].startswith("--"):
                values, i = [argv[i]], i + 1
            if not values:
                raise ArgvError(f"--{key} needs a value: write --{key} VALUE or {key}=VALUE")
            value = f"[{','.join(values)}]" if how == "list" and len(values) > 1 else values[0]
        out.append(f"{key}={value}")
        flags.add(key)
        _one_recipe(recipes, out[-1], " ".join(argv[start:i]))
    return out, flags


def _one_recipe(recipes: list[str], arg: str, typed: str) -> None:
    """A run reads one recipe: a second one (`recipe=`, `--config`) would silently replace the first."""
    if arg.split("=", 1)[0].strip() == "recipe":
        recipes.append(typed)
        if len(recipes) > 1:
            raise ArgvError(f"two recipes on one command line ({recipes[0]} and {recipes[1]}): pass one recipe "
                            "and set what should differ as key=value")
