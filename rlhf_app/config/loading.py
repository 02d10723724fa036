"""Loading a run's config: defaults ⊕ recipe ⊕ command line, TRL's flat names (aliases.py) and argv forms."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import os
import typing
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlhf_app.config.aliases import ALIASES, KEYWORD_KEYS, NUM_SAMPLE_GENERATIONS, set_dotted
from rlhf_app.config.argv import ArgvError, normalize_argv
from rlhf_app.config.checks import TRACKERS, ConfigError, finite
from rlhf_app.config.recipes import RECIPES_DIR, available_recipes, load_yaml, recipe_path  # noqa: F401 (re-exported)
from rlhf_app.config.stages import PairsSection, RMSection, SFTSection
from rlhf_app.config.train_config import TrainConfig, num_updates

# The stage sections, which `rlhf-app sft|rm|pairs` fill with their defaults (None in a PPO run's config).
STAGE_SECTIONS = {"sft": SFTSection, "rm": RMSection, "pairs": PairsSection}


@functools.cache
def _schema() -> tuple[frozenset[str], frozenset[str]]:
    """The keys a recipe or the command line may set (every section filled, the stages too) and the sections among
    them. Built once a process: a structured TrainConfig costs ~0.17 s here, more than the rest of load_config."""
    full = OmegaConf.structured(TrainConfig(**{name: cls() for name, cls in STAGE_SECTIONS.items()}))
    return (frozenset(flat_keys(full)),
            frozenset(k for k in TrainConfig.__dataclass_fields__ if OmegaConf.is_dict(full[k])))


@functools.cache
def _defaults(stage: str | None):
    """The first layer: the defaults, with `stage`'s section filled. Built once a process and never changed:
    OmegaConf.merge works on a copy of its first config."""
    return OmegaConf.structured(TrainConfig(**({stage: STAGE_SECTIONS[stage]()} if stage else {})))


def stage_field(key: str, stage: str | None) -> str:
    """On a stage's command line TRL's flat names are that stage's fields: `learning_rate` -> `sft.learning_rate`,
    `save_steps` -> `rm.save_steps` (in a recipe, write the section: it may hold several stages)."""
    if stage and "." not in key and key in {f.name for f in dataclasses.fields(STAGE_SECTIONS[stage])}:
        return f"{stage}.{key}"
    return key


def flat_keys(tree, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a nested config, a plain dict or an OmegaConf node, as {'a.b.c': value}.

    {"ppo": {"kl_coef": 0.05}, "seed": 0} -> {"ppo.kl_coef": 0.05, "seed": 0}; an empty section has
    no leaf; a node's missing value (`???`) is MISSING.
    """
    out = {}
    for key in tree:
        value = MISSING if OmegaConf.is_config(tree) and OmegaConf.is_missing(tree, key) else tree[key]
        if isinstance(value, dict) or OmegaConf.is_dict(value):
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


OPEN_DICTS = ("model.init_kwargs.", "data.chat_template_kwargs.", "rollout.environment_factory.")  # free-form keys (passed on to a library)
PER_STAGE = "per_stage"  # a pipeline's per-stage keys: each stage's layer is checked on its own (_stage_layers)


def _check_keys(cfg, known: frozenset[str], sections: frozenset[str], where: str,
                flags: set[str] = frozenset()) -> None:
    def shown(key: str) -> str:  # name a key in the form the user typed it
        return f"--{key}" if key in flags else key

    for key in flat_keys(cfg):
        if key in known or key.startswith(OPEN_DICTS) or key.startswith(f"{PER_STAGE}."):
            continue
        if key in sections:
            raise ConfigError(f"{where}: {key} is a section; set its fields, e.g. {key}.<field>=...")
        # A dotted key is compared with dotted keys; a flat one with TRL's names and the top-level fields too.
        pool = sorted(known) if "." in key else sorted(known | set(ALIASES) | {NUM_SAMPLE_GENERATIONS})
        close = difflib.get_close_matches(key, pool, n=1, cutoff=0.5)
        if not close:  # a misplaced field: same leaf name in another section
            leaf = key.rsplit(".", 1)[-1]
            close = [k for k in sorted(known) if k.rsplit(".", 1)[-1] == leaf][:1]
        hint = f"; did you mean {'--' if key in flags else ''}{close[0]}?" if close else ""
        raise ConfigError(f"{where}: unknown key {shown(key)}{hint}")


@functools.cache  # the dataclasses never change; typing.get_type_hints cost a sixth of each load_config
def _hint(key: str) -> Any:
    """The declared type of a dotted key (None if unknown)."""
    cls = TrainConfig
    for part in key.split("."):
        if type(None) in typing.get_args(cls):  # Optional[Section]: the section
            cls = next(a for a in typing.get_args(cls) if a is not type(None))
        cls = typing.get_type_hints(cls).get(part) if hasattr(cls, "__dataclass_fields__") else None
        if cls is None:
            return None
    return cls


def _field_type(dotted: str) -> str:
    """The declared type of a dotted key, for error messages ('float', 'Optional[int]')."""
    cls = _hint(dotted)
    if cls is None:
        return "?"
    return getattr(cls, "__name__", None) if isinstance(cls, type) else str(cls).replace("typing.", "")


def _kind(key: str, stage: str | None = None) -> str:
    """'bool', 'list' or 'value': how `--key` consumes the arguments after it."""
    named = stage_field(key, stage)
    hint = _hint(named if named != key else ALIASES.get(key, key))
    args = typing.get_args(hint)
    if hint is bool or (bool in args and type(None) in args):
        return "bool"
    if typing.get_origin(hint) is list or any(typing.get_origin(a) is list for a in args):
        return "list"
    return "value"


def _normalize(argv: list[str], stage: str | None = None) -> tuple[list[str], set[str]]:
    """(`key=value` arguments, keys typed as `--key`); ConfigError on a malformed argument. On a stage's
    command line the stage's flat field names become its section's keys (`stage_field`)."""
    try:
        args, flags = normalize_argv(argv, functools.partial(_kind, stage=stage))
    except ArgvError as err:
        raise ConfigError(str(err)) from None
    if not stage:
        return args, flags
    moved = [stage_field(a.split("=", 1)[0], stage) + "=" + a.split("=", 1)[1] for a in args]
    return moved, flags | {stage_field(k, stage) for k in flags}


def normalize_args(argv: list[str]) -> list[str]:
    """Any mix of `key=value`, `--key value`, `--key=value` as `key=value` arguments (for the other tools)."""
    return _normalize(argv)[0]


def parse_overrides(argv: list[str]):
    """Command-line arguments (`key=value`, `--key value`, `--key=value`) to an OmegaConf dotlist."""
    return OmegaConf.from_dotlist(_normalize(argv)[0])


def resolve_aliases(layer, where: str):
    """One config layer with TRL's flat names moved to their nested keys, list fields given one value
    made lists, and `report_to=all` expanded to the installed trackers. Returns (layer, num_sample_generations)."""
    tree = OmegaConf.to_container(layer)
    for alias, key in ALIASES.items():
        if alias in tree:
            set_dotted(tree, key, tree.pop(alias), alias, where)
    for typed, key in KEYWORD_KEYS.items():
        section, leaf = typed.split(".")
        if isinstance(tree.get(section), dict) and leaf in tree[section]:
            set_dotted(tree, key, tree[section].pop(leaf), typed, where, "the short name")
    generations = tree.pop(NUM_SAMPLE_GENERATIONS, None)
    if generations is not None and "sample_every" in tree:
        raise ConfigError(f"{where}: set sample_every (updates between samples) or TRL's {NUM_SAMPLE_GENERATIONS} "
                          "(samples over the run), not both")
    for key, value in flat_keys(tree).items():
        if isinstance(value, str) and _kind(key) == "list":  # report_to=wandb means [wandb]
            *parents, leaf = key.split(".")
            node = tree
            for part in parents:
                node = node[part]
            node[leaf] = [value]
    if tree.get("report_to") == ["all"]:  # transformers' "all": every installed integration
        tree["report_to"] = [t for t in TRACKERS[1:] if importlib.util.find_spec(t)] or ["none"]
    if generations is not None and (not isinstance(generations, int) or generations < 0):
        raise ConfigError(f"{NUM_SAMPLE_GENERATIONS} must be an integer >= 0, got {generations!r}")
    return OmegaConf.create(tree), generations


def _sample_every(cfg: "TrainConfig", generations: int) -> int:
    """TRL's sample_generations_freq: max(1, updates // num_sample_generations); 0 samples: never."""
    if generations == 0:
        return 0
    world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    return max(1, num_updates(cfg.ppo, world) // generations)


def _check_finite(merged) -> None:
    """Every float of the merged config (not the free-form kwargs) a finite number, before the sections'
    own checks: `ppo.learning_rate=inf` passes `> 0`, and a NaN fails every comparison silently."""
    for key, value in flat_keys(OmegaConf.to_container(merged)).items():  # walking the nodes: 1/7 of load_config
        if not key.startswith((*OPEN_DICTS, f"{PER_STAGE}.")):
            finite(key, value)


def _stage_layers(layer, where: str, known: frozenset[str], sections: frozenset[str]):
    """`layer` with each per_stage.NAME made a layer of its own: its keys dotted (`model.name_or_path: x`)
    or nested alike, TRL's names resolved, unknown keys and non-finite numbers refused as at the top."""
    tree = OmegaConf.to_container(layer)
    stages = tree.get(PER_STAGE)
    if stages is None:
        return layer
    shape = "per_stage maps stage names to their keys, e.g. per_stage.ppo.model.name_or_path=stage:sft"
    if not isinstance(stages, dict) or not all(isinstance(v, (dict, type(None))) for v in stages.values()):
        raise ConfigError(f"{where}: {shape}")
    for name, keys in stages.items():
        here, nested = f"{where}, per_stage.{name}", {}
        for key, value in flat_keys(keys or {}).items():
            *parents, leaf = key.split(".")
            node = nested
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        stage, generations = resolve_aliases(OmegaConf.create(nested), here)
        if generations is not None:
            raise ConfigError(f"{here}: set sample_every (updates between samples) rather than "
                              f"{NUM_SAMPLE_GENERATIONS} for one stage")
        _check_keys(stage, known, sections, here)
        _check_finite(stage)
        stages[name] = OmegaConf.to_container(stage)
    return OmegaConf.create(tree)


def load_config(argv: list[str], stage: str | None = None) -> TrainConfig:
    """Defaults ⊕ recipe ⊕ CLI, validated. Raises ConfigError with a one-line message.

    `stage` (sft | rm): the config of that stage's command, its section filled with its defaults."""
    args, flags = _normalize(argv, stage)
    cli, cli_generations = resolve_aliases(OmegaConf.from_dotlist(args), "command line")
    known, sections = _schema()
    layers, generations, recipe_cfg = [_defaults(stage)], None, {}
    recipe = cli.get("recipe")
    if recipe:
        path = recipe_path(str(recipe))
        recipe_cfg, generations = resolve_aliases(load_yaml(path), f"recipe {path.name}")
        _check_keys(recipe_cfg, known, sections, f"recipe {path.name}")
        layers.append(_stage_layers(recipe_cfg, f"recipe {path.name}", known, sections))
    _check_keys(cli, known, sections, "command line", flags)
    layers.append(_stage_layers(cli, "command line", known, sections))
    if cli_generations is not None or "sample_every" in cli:
        generations = cli_generations  # the last layer that sets either wins
    try:
        merged = OmegaConf.merge(*layers)
        _check_finite(merged)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"bad value for {key}: expected {_field_type(key)}, "
                          f"got {str(err).split(chr(39))[1] if chr(39) in str(err) else str(err)!r}") from None
    if generations is not None:
        cfg.sample_every = _sample_every(cfg, generations)
    named = "output_dir" in cli or "output_dir" in recipe_cfg
    if cfg.recipe and not Path(str(cfg.recipe)).suffix and not named:
        cfg.output_dir = f"runs/{cfg.recipe}"
    if stage and "output_dir" not in cli:  # the recipe's folder holds each stage in a sub-folder: runs/tiny/sft
        cfg.output_dir = str(Path(cfg.output_dir) / stage)
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML; an unset stage section (None) and empty pipeline keys are left out, so a
    PPO run's file is unchanged."""
    tree = OmegaConf.to_container(OmegaConf.structured(cfg))
    for name in STAGE_SECTIONS:
        if tree.get(name) is None:
            tree.pop(name, None)
    for name in ("stages", PER_STAGE):  # a pipeline's keys: not in one run's file
        if not tree.get(name):
            tree.pop(name, None)
    return OmegaConf.to_yaml(OmegaConf.create(tree))
