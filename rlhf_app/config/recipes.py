"""Recipe files: `recipe=NAME` (recipes/NAME.yaml) or a path, read as one mapping of keys, each fault one line."""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import OmegaConf

from rlhf_app.config.checks import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent.parent.parent / "recipes"


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """`name` is a recipe under recipes/ or a path to a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or "/" in name:
        if not path.is_file():
            raise ConfigError(f"recipe file {name} does not exist")
        return path
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, available_recipes(), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"unknown recipe {name!r}: {hint}available: {', '.join(available_recipes())}")
    return path


def load_yaml(path: Path):
    """A recipe file as OmegaConf; a syntax error becomes one line with the file and line, and a file
    that is not a mapping of keys (a list, a scalar, nothing) one line naming the file."""
    import yaml

    try:
        top = yaml.safe_load(path.read_text())  # only its shape: OmegaConf's loader reads the values
        if isinstance(top, dict):
            return OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"YAML syntax error in {where}: {problem}; fix the file (indent with spaces, "
                          "'key: value' per line)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read recipe {path}: {err.__class__.__name__}: {err}") from None
    shape = "is empty" if top is None else "holds a list" if isinstance(top, list) else f"holds only {top!r}"
    raise ConfigError(f"recipe {path} {shape}: a recipe is a mapping of keys, one 'key: value' per line "
                      "(e.g. ppo.learning_rate: 1.0e-5)")
