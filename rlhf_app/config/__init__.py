"""Run configuration: dataclass defaults ⊕ recipe YAML ⊕ dotted CLI overrides.

Precedence is stated once, in `load_config` (loading.py): the dataclasses (sections.py,
train_config.py) hold every default, a recipe (`recipes/NAME.yaml` or a path) holds only its
deltas, and `key=value` arguments win.
TRL's habits work too: `--key value`, `--key=value`, `--config FILE` and TRL's flat field names
(`ALIASES`, aliases.py), resolved to the nested keys before anything else. Unknown keys and wrong types fail
before any model loads. This package imports no torch; every name is importable from here.
"""

from rlhf_app.config.aliases import ALIASES, NUM_SAMPLE_GENERATIONS
from rlhf_app.config.checks import SCHEDULERS, TRACKERS, ConfigError
from rlhf_app.config.loading import (OPEN_DICTS, RECIPES_DIR, available_recipes, flat_keys, load_config,
                                     normalize_args, parse_overrides, recipe_path, resolve_aliases, to_yaml)
from rlhf_app.config.sections import (DATA_FILE_TYPES, DATA_PRESETS, RESERVED_INIT_KWARGS, DataConfig, ModelConfig,
                                      PeftConfig, PPOConfig, RewardConfig)
from rlhf_app.config.train_config import (ENGINES, ESTIMATORS, GROUP_ESTIMATORS, HUB_STRATEGIES, IS_MODES,
                                          LOSS_AGG_MODES, TRL_LOSS_TYPES, AlgorithmConfig, HubConfig, RolloutConfig,
                                          TrainConfig)

__all__ = ["ALIASES", "DATA_FILE_TYPES", "DATA_PRESETS", "ENGINES", "ESTIMATORS", "GROUP_ESTIMATORS", "HUB_STRATEGIES",
           "IS_MODES", "LOSS_AGG_MODES", "NUM_SAMPLE_GENERATIONS", "OPEN_DICTS", "RECIPES_DIR", "RESERVED_INIT_KWARGS",
           "SCHEDULERS", "TRACKERS", "TRL_LOSS_TYPES", "AlgorithmConfig", "ConfigError", "DataConfig", "HubConfig",
           "ModelConfig", "PPOConfig", "PeftConfig", "RewardConfig", "RolloutConfig", "TrainConfig",
           "available_recipes", "flat_keys", "load_config", "normalize_args", "parse_overrides", "recipe_path",
           "resolve_aliases", "to_yaml"]
