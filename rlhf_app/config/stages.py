"""The `sft`, `rm` and `pairs` sections: a supervised stage (TRL's SFTTrainer), a reward-model stage (TRL's
RewardTrainer), under their SFTConfig / RewardConfig / TrainingArguments field names, with their own data keys;
and the preference pairs sampled from a policy and labelled by a reward source (stages/pairs.py).

Both default to None in TrainConfig, so a PPO recipe and its config.yaml stay as they were; `rlhf-app sft` and
`rlhf-app rm` fill their section with these defaults (stages/common.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from rlhf_app.config.checks import _GE0, _GE1, _GT0, SCHEDULERS, ConfigError, _choice, _ranges

STAGES = ("sft", "rm", "pairs")
MODEL_KEYS = ("model.name_or_path", "model.revision", "model.dtype", "model.attn_implementation",
              "model.gradient_checkpointing")
# TrainingArguments.train_sampling_strategy's choices (transformers >= 5; its group_by_length=True before)
SAMPLING_STRATEGIES = ("random", "sequential", "group_by_length", "batch_rebalance")
LORA_KEYS = ("peft.r", "peft.lora_alpha", "peft.lora_dropout", "peft.target_modules")


@dataclass
class StageConfig:
    """What both stages share: the dataset (a local file / folder or a Hub id, split as data.* splits) and
    transformers' TrainingArguments (TRL's names). Steps are optimizer steps of the Trainer."""

    dataset: Optional[str] = None  # local jsonl/json/parquet/csv file, folder, or Hub dataset id
    dataset_config: Optional[str] = None  # Hub dataset configuration
    split: str = "train"
    eval_split: Optional[str] = None  # held-out split; None: a seeded eval_fraction of split
    eval_fraction: float = 0.1
    num_train: Optional[int] = None  # cap on training rows (None: all)
    num_eval: int = 64  # held-out rows (SFT: eval loss; RM: pairwise accuracy, margins)
    learning_rate: float = 2e-5
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0: overrides num_train_epochs
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: Optional[int] = 1024
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 1  # steps between metrics.jsonl rows (and tracker logs)
    save_steps: int = 500  # steps between Trainer checkpoints (the last step is always saved)
    save_total_limit: Optional[int] = 2
    bf16: bool = False  # TRL defaults to bf16 when fp16 is unset; here precision is asked for
    fp16: bool = False

    def check(self, section: str) -> None:
        if self.bf16 and self.fp16:
            raise ConfigError(f"{section}.bf16 and {section}.fp16 are both true: choose one")
        _choice(section, "lr_scheduler_type", self.lr_scheduler_type, SCHEDULERS)
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"{section}.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"{section}.max_steps must be > 0, or -1 (num_train_epochs decides), got {self.max_steps}")
        _ranges(section, self, {
            "num_train": _GE1, "num_eval": _GE1, "learning_rate": _GT0, "num_train_epochs": _GT0,
            "per_device_train_batch_size": _GE1, "per_device_eval_batch_size": _GE1,
            "gradient_accumulation_steps": _GE1, "max_length": _GE1, "warmup_steps": _GE0, "weight_decay": _GE0,
            "max_grad_norm": _GE0, "logging_steps": _GE1, "save_steps": _GE1, "save_total_limit": _GE0})


@dataclass
class SFTSection(StageConfig):
    """TRL SFTConfig's data fields: `text` (dataset_text_field), `messages`, or `prompt` + `completion`."""

    dataset_text_field: str = "text"
    completion_only_loss: Optional[bool] = None  # None: TRL's choice (true for prompt-completion data)
    assistant_only_loss: bool = False  # conversations: loss on the assistant turns only (template markers)
    packing: bool = False
    # transformers' TrainingArguments sampler; group_by_length batches rows of like length (less padding)
    train_sampling_strategy: str = "random"

    def __post_init__(self):
        self.check("sft")
        _choice("sft", "train_sampling_strategy", self.train_sampling_strategy, SAMPLING_STRATEGIES)


@dataclass
class RMSection(StageConfig):
    """TRL RewardConfig: `chosen` / `rejected` pairs (implicit or explicit `prompt`), optional `margin`."""

    learning_rate: float = 1e-4  # RewardConfig's default
    center_rewards_coefficient: Optional[float] = None  # 0.01 recommended (Eq. 2 of arXiv 2312.09244)
    disable_dropout: bool = True

    def __post_init__(self):
        self.check("rm")
        _ranges("rm", self, {"center_rewards_coefficient": _GE0})


@dataclass
class PairsSection:
    """`rlhf-app pairs`: num_generations completions of each training prompt (data.*, sampled as ppo.* and
    rollout.engine say), scored by the labeller (reward.funcs / reward.name); the best against the worst."""

    num_generations: int = 2  # completions per prompt (TRL's name); the best and the worst make the pair
    tie_threshold: float = 0.0  # |score(best) - score(worst)| <= this: a tie
    keep_ties: bool = False  # false: ties are dropped; true: kept, chosen = the higher score (first sampled if equal)
    batch_size: int = 16  # prompts per generation call (each with its num_generations completions)

    def __post_init__(self):
        if self.num_generations < 2:
            raise ConfigError(f"pairs.num_generations must be >= 2 (the best and the worst of the completions of a "
                              f"prompt make its pair), got {self.num_generations}")
        _ranges("pairs", self, {"tie_threshold": _GE0, "batch_size": _GE1})


def stage_settings(stage: str, lora: bool = True) -> list[str]:
    """The keys a stage trains with, for its report's and model card's settings tables: the seed, model.*, peft.*
    (the LoRA keys when `lora`), then every field of its section."""
    section = {"sft": SFTSection, "rm": RMSection}[stage]
    return ["seed", *MODEL_KEYS, "peft.enabled", *(LORA_KEYS if lora else ())] + \
        [f"{stage}.{f.name}" for f in fields(section)]
