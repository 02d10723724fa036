"""Run configuration: dataclass defaults ⊕ recipe YAML ⊕ dotted CLI overrides.

Precedence is stated once, in `load_config`: the dataclasses below hold every default, a
recipe (`recipes/NAME.yaml` or a path) holds only its deltas, and `key=value` arguments win.
TRL's habits work too: `--key value`, `--key=value`, `--config FILE` and TRL's flat field names
(`ALIASES`), resolved to the nested keys before anything else. Unknown keys and wrong types fail
before any model loads. This module imports no torch.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlhf_app.argv import ArgvError, normalize_argv

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class ConfigError(ValueError):
    """A bad recipe or override; the message is one line that names the fix."""


TRACKERS = ("none", "wandb", "tensorboard", "trackio")
# transformers' schedulers that need no extra arguments (transformers.SchedulerType).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")


# Ranges per field: (low, high, low_inclusive, high_inclusive); None = unbounded. Checked for None-able
# fields only when set. One table, so every numeric field is covered and the messages read the same.
_GE0, _GT0, _GE1, _UNIT, _PROB = (0, None, True, False), (0, None, False, False), (1, None, True, False), \
    (0, 1, True, True), (0, 1, False, True)


def _ranges(section: str, obj, spec: dict) -> None:
    for name, (low, high, low_in, high_in) in spec.items():
        value = getattr(obj, name)
        if value is None:
            continue
        ok = (low is None or (value >= low if low_in else value > low)) and \
             (high is None or (value <= high if high_in else value < high))
        if not ok:
            key = f"{section}.{name}" if section else name
            if low is not None and high is not None:
                want = f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
            else:
                want = f"{'>=' if low_in else '>'} {low}" if low is not None else f"{'<=' if high_in else '<'} {high}"
            raise ConfigError(f"{key}={value} is out of range: set {key} {want}")


def _choice(section: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        key = f"{section}.{name}" if section else name
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, allowed))}")


# from_pretrained kwargs that model.* fields own, and where to set them instead.
RESERVED_INIT_KWARGS = {
    "dtype": "set model.dtype instead", "torch_dtype": "set model.dtype instead",
    "revision": "set model.revision instead", "trust_remote_code": "set model.trust_remote_code instead",
    "attn_implementation": "set model.attn_implementation instead",
    "quantization_config": "set model.load_in_4bit or model.load_in_8bit instead",
    "device_map": "accelerate places the models (one copy per process); leave it out",
}


@dataclass
class ModelConfig:
    name_or_path: str = "asset:tiny"  # Hub id, local folder, or asset:NAME (offline, built here)
    revision: Optional[str] = None
    dtype: str = "float32"  # float32 | bfloat16 | float16
    value_model: str = "shared"  # shared: scalar head on the policy trunk | separate: own critic
    value_model_path: Optional[str] = None  # separate critic init; default: the policy weights
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    attn_implementation: Optional[str] = None  # eager | sdpa | flash_attention_2 | ...; None: transformers' choice
    init_kwargs: dict[str, Any] = field(default_factory=dict)  # more from_pretrained kwargs (policy, critic, reference)
    load_in_4bit: bool = False  # QLoRA: bitsandbytes 4-bit base weights (CUDA), LoRA adapters trained on top
    load_in_8bit: bool = False
    bnb_4bit_quant_type: str = "nf4"  # nf4 | fp4
    use_bnb_nested_quant: bool = False

    def __post_init__(self):
        _choice("model", "dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _choice("model", "value_model", self.value_model, ("shared", "separate"))
        _choice("model", "bnb_4bit_quant_type", self.bnb_4bit_quant_type, ("nf4", "fp4"))
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("model.load_in_4bit and model.load_in_8bit are both true: choose one")
        for key in sorted(set(self.init_kwargs) & set(RESERVED_INIT_KWARGS)):
            raise ConfigError(f"model.init_kwargs.{key}: {RESERVED_INIT_KWARGS[key]}")


@dataclass
class PeftConfig:
    enabled: bool = False
    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: Optional[list[str]] = None  # None: every linear layer

    def __post_init__(self):
        _ranges("peft", self, {"r": _GE1, "lora_alpha": _GT0, "lora_dropout": (0, 1, True, False)})


DATA_PRESETS = ("toy", "imdb", "gsm8k")
DATA_FILE_TYPES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class DataConfig:
    name: str = "toy"  # a preset (toy | imdb | gsm8k), a Hub dataset id, or a local file / folder
    source: str = "hub"  # presets: hub | offline
    config: Optional[str] = None  # Hub dataset configuration (e.g. main)
    split: str = "train"
    eval_split: Optional[str] = None  # held-out split; None: a seeded data.eval_fraction of data.split
    eval_fraction: float = 0.1
    prompt_column: str = "prompt"  # text, or a conversation (list of {role, content})
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to apply_chat_template
    prompt_min_tokens: int = 2  # IMDB prompts are truncated to a sampled length in this range
    prompt_max_tokens: int = 8
    max_prompt_length: int = 256
    num_train: Optional[int] = None  # cap on training prompts (None: all)
    num_eval: int = 64  # held-out prompts for the before/after evaluation
    use_chat_template: bool = True

    def __post_init__(self):
        _check_data_name(self.name)
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"data.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        _choice("data", "source", self.source, ("hub", "offline"))
        if not 1 <= self.prompt_min_tokens <= self.prompt_max_tokens:
            raise ConfigError(f"data.prompt_min_tokens={self.prompt_min_tokens} and data.prompt_max_tokens="
                              f"{self.prompt_max_tokens} must satisfy 1 <= min <= max")
        for name in ("num_eval", "max_prompt_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_train is not None and self.num_train < 1:
            raise ConfigError(f"data.num_train must be >= 1 or null (all), got {self.num_train}")


def _check_data_name(name: str) -> None:
    """A preset, an existing file or folder, or something shaped like a Hub id (owner/name)."""
    path = Path(name).expanduser()
    if name in DATA_PRESETS or path.exists():
        return
    if path.suffix in DATA_FILE_TYPES:
        raise ConfigError(f"data.name={name!r}: no such file (relative paths start at {Path.cwd()})")
    if "/" not in name:
        close = difflib.get_close_matches(name, DATA_PRESETS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"data.name={name!r} is not one of {', '.join(DATA_PRESETS)}, a local file or folder, "
                          f"or a Hub dataset id (owner/name){hint}")


@dataclass
class RewardConfig:
    name: str = "toy"  # toy | sentiment | gsm8k | python
    # Several rewards, summed with reward.weights (TRL's reward_funcs / reward_weights): built-ins
    # (toy, sentiment, gsm8k), path/to/file.py:function, module.path:function or module:factory(k=v),
    # and sequence-classification models (Hub id, folder, asset:NAME). Empty: reward.name alone.
    funcs: list[str] = field(default_factory=list)
    weights: Optional[list[float]] = None  # one per reward.funcs entry; None: all 1.0
    model: Optional[str] = None  # sentiment: classifier Hub id, folder, or asset:NAME
    label: str = "POSITIVE"  # sentiment: the label whose logit / probability is the score
    kind: str = "logit"  # sentiment: logit | prob
    score_prompt: bool = False  # sentiment: score prompt + completion instead of the completion
    batch_size: int = 16
    device: Optional[str] = None  # reward model device (None: the policy's)
    function: Optional[str] = None  # python: path/to/file.py:function
    method: str = "strict"  # gsm8k: strict (#### N) | flexible (last number)
    score: float = 1.0  # gsm8k: correct answer
    format_score: float = 0.0  # gsm8k: parsable but wrong
    target: str = "a"  # toy: the string whose frequency in the completion is the reward

    def __post_init__(self):
        _choice("reward", "name", self.name, ("toy", "sentiment", "gsm8k", "python"))
        _choice("reward", "kind", self.kind, ("logit", "prob"))
        if self.batch_size < 1:
            raise ConfigError(f"reward.batch_size must be >= 1, got {self.batch_size}")
        _choice("reward", "method", self.method, ("strict", "flexible"))
        if self.weights is not None and len(self.weights) != len(self.funcs or [self.name]):
            raise ConfigError(f"reward.weights has {len(self.weights)} entries for {len(self.funcs or [self.name])} "
                              "reward functions (reward.funcs): give one weight per function")


@dataclass
class PPOConfig:
    """PPO settings under TRL's PPOConfig field names."""

    learning_rate: float = 3e-6
    lr_scheduler_type: str = "linear"  # linear | constant | cosine | constant_with_warmup | ... (SCHEDULERS)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    total_episodes: int = 1024  # prompts rolled out over the whole run (all processes)
    per_device_train_batch_size: int = 8  # micro-batch of one backward pass
    # Token budget of one backward pass (veRL's dynamic batch size, padded tokens): episodes are grouped
    # by length into micro-batches of at most this many tokens; None: per_device_train_batch_size episodes.
    max_tokens_per_micro_batch: Optional[int] = None
    gradient_accumulation_steps: int = 1
    num_mini_batches: int = 1
    num_ppo_epochs: int = 4
    local_rollout_forward_batch_size: int = 64
    response_length: int = 53
    temperature: float = 0.7
    do_sample: bool = True  # false: greedy rollouts (deterministic; for tests and debugging)
    top_k: int = 0
    top_p: float = 1.0
    stop_token: Optional[str] = "eos"  # eos | None: stop at the tokenizer's EOS, or never
    stop_token_id: Optional[int] = None
    missing_eos_penalty: Optional[float] = None
    kl_coef: float = 0.05
    kl_estimator: str = "k1"  # k1 | k3 (http://joschu.net/blog/kl-approx.html)
    adaptive_kl: bool = False  # Ziegler et al. 2019 controller
    kl_target: float = 6.0
    kl_horizon: int = 10000
    whiten_rewards: bool = False
    reward_scale: float = 1.0
    reward_clip: Optional[float] = None
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    gamma: float = 1.0
    lam: float = 0.95
    # Mixed precision (TRL's switches): forwards and backward under bf16 / fp16 autocast, the reference and
    # reward models too; weights, optimizer state and the log-prob, KL, advantage and loss math stay fp32.
    bf16: bool = False
    fp16: bool = False  # loss scaling, GPUs only

    def __post_init__(self):
        if self.bf16 and self.fp16:
            raise ConfigError("ppo.bf16 and ppo.fp16 are both true: choose one")
        _choice("ppo", "kl_estimator", self.kl_estimator, ("k1", "k3"))
        _choice("ppo", "lr_scheduler_type", self.lr_scheduler_type, SCHEDULERS)
        _choice("ppo", "stop_token", self.stop_token, ("eos", None))
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps",
                     "num_mini_batches", "num_ppo_epochs", "response_length", "total_episodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ppo.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_tokens_per_micro_batch is not None and self.max_tokens_per_micro_batch < 1:
            raise ConfigError(f"ppo.max_tokens_per_micro_batch must be >= 1 or null, got {self.max_tokens_per_micro_batch}")
        if self.temperature <= 0:
            raise ConfigError(f"ppo.temperature must be > 0, got {self.temperature}")
        _ranges("ppo", self, {
            "learning_rate": _GT0, "warmup_steps": _GE0, "weight_decay": _GE0, "max_grad_norm": _GE0,
            "local_rollout_forward_batch_size": _GE1, "top_k": _GE0, "top_p": _PROB, "stop_token_id": _GE0,
            "missing_eos_penalty": _GE0, "kl_coef": _GE0, "kl_target": _GT0, "kl_horizon": _GE1,
            "reward_scale": _GT0, "reward_clip": _GT0, "cliprange": _GT0, "cliprange_value": _GT0,
            "vf_coef": _GE0, "ent_coef": _GE0, "gamma": _UNIT, "lam": _UNIT})
        # Refused rather than renormalised: a truncated softmax gives the tokens outside the kept set
        # probability 0, and once the policy moves, a token sampled under the old cut can fall outside the
        # new one: the PPO ratio and the KL to the reference become 0 or infinite.
        if self.top_k or self.top_p < 1:
            raise ConfigError(f"ppo.top_k={self.top_k} / ppo.top_p={self.top_p} truncate sampling, but PPO's "
                              "log-probs and KL need the full softmax: set ppo.top_k=0 ppo.top_p=1.0 "
                              "(lower ppo.temperature for more focused samples)")

    @property
    def local_batch_size(self) -> int:
        """Episodes rolled out per update on one process (TRL's arithmetic)."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches


ENGINES = ("hf", "vllm")
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass
class RolloutConfig:
    """Which engine samples the rollouts. The vllm_* fields keep TRL's GRPOConfig names."""

    engine: str = "hf"  # hf: transformers' generate | vllm: a colocated vLLM engine in each process
    use_vllm: bool = False  # TRL's switch: true means engine=vllm
    vllm_mode: str = "colocate"  # only colocate: one engine inside each training process
    vllm_gpu_memory_utilization: float = 0.3  # CUDA: share of GPU memory for vLLM weights + KV cache
    vllm_kv_cache_gib: int = 1  # CPU: KV-cache space in GiB (VLLM_CPU_KVCACHE_SPACE)
    vllm_enable_sleep_mode: bool = False  # CUDA: free vLLM's memory while the PPO epochs run
    vllm_dtype: Optional[str] = None  # engine precision; None: model.dtype
    vllm_enforce_eager: bool = True  # false: graph capture / compile (slower start-up)
    vllm_importance_sampling_correction: bool = False  # TRL's truncated IS for engine/trainer mismatch
    vllm_importance_sampling_mode: str = "token_truncate"
    vllm_importance_sampling_cap: float = 3.0  # TRL's C_max (vllm_importance_sampling_clip_max)

    def __post_init__(self):
        if self.use_vllm:
            self.engine = "vllm"
        _choice("rollout", "engine", self.engine, ENGINES)
        self.use_vllm = self.engine == "vllm"
        _choice("rollout", "vllm_mode", self.vllm_mode, ("colocate",))
        _choice("rollout", "vllm_importance_sampling_mode", self.vllm_importance_sampling_mode, IS_MODES)
        if self.vllm_dtype is not None:
            _choice("rollout", "vllm_dtype", self.vllm_dtype, ("float32", "bfloat16", "float16"))
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ConfigError(f"rollout.vllm_gpu_memory_utilization must be in (0, 1], "
                              f"got {self.vllm_gpu_memory_utilization}")
        for name in ("vllm_kv_cache_gib", "vllm_importance_sampling_cap"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"rollout.{name} must be > 0, got {getattr(self, name)}")


ESTIMATORS = ("gae", "grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
GROUP_ESTIMATORS = ("grpo", "rloo", "reinforce_pp_baseline")  # need num_generations >= 2
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
# TRL GRPOConfig.loss_type -> the aggregation it performs (trl/trainer/grpo_trainer.py, compute_loss).
TRL_LOSS_TYPES = {"grpo": "seq-mean-token-mean", "bnpo": "token-mean", "dapo": "token-mean",
                  "dr_grpo": "seq-mean-token-sum-norm"}


@dataclass
class AlgorithmConfig:
    """Advantage estimator and policy-loss variants on the one PPO engine. veRL's names
    (advantage_estimator ~ adv_estimator, loss_agg_mode); TRL GRPOConfig's accepted: num_generations,
    scale_rewards, beta, epsilon_high (= cliprange_high), loss_type (-> loss_agg_mode)."""

    advantage_estimator: str = "gae"  # gae: PPO with a critic | grpo | rloo | reinforce_pp | reinforce_pp_baseline
    num_generations: Optional[int] = None  # responses per prompt; None: 1, or TRL's 8 for grpo/rloo/rpp_baseline
    scale_rewards: str = "group"  # grpo: group | batch | none (Dr. GRPO); true/false as TRL
    loss_agg_mode: str = "token-mean"  # | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    loss_type: Optional[str] = None  # TRL's: grpo | bnpo | dapo | dr_grpo, sets loss_agg_mode
    cliprange_high: Optional[float] = None  # DAPO's clip-higher upper ε; None: ppo.cliprange
    epsilon_high: Optional[float] = None  # TRL's name for cliprange_high
    importance_sampling_level: str = "token"  # token | sequence (GSPO)
    beta: float = 0.0  # coefficient of a k3 KL-to-reference loss term (GRPO, TRL's beta); 0: none
    lam_actor: Optional[float] = None  # gae: λ of the policy's advantages (VAPO); None: ppo.lam
    lam_critic: Optional[float] = None  # gae: λ of the critic's returns; None: ppo.lam

    def __post_init__(self):
        _choice("algorithm", "advantage_estimator", self.advantage_estimator, ESTIMATORS)
        if self.num_generations is not None and self.num_generations < 1:
            raise ConfigError(f"algorithm.num_generations must be >= 1, got {self.num_generations}")
        if self.advantage_estimator in GROUP_ESTIMATORS and self.group_size < 2:
            raise ConfigError(f"algorithm.advantage_estimator={self.advantage_estimator} compares responses to "
                              "the same prompt: set algorithm.num_generations >= 2")
        scale = str(self.scale_rewards).lower()
        self.scale_rewards = {"true": "group", "false": "none"}.get(scale, scale)
        _choice("algorithm", "scale_rewards", self.scale_rewards, ("group", "batch", "none"))
        if self.loss_type is not None:
            _choice("algorithm", "loss_type", self.loss_type, tuple(TRL_LOSS_TYPES))
            self.loss_agg_mode, self.loss_type = TRL_LOSS_TYPES[self.loss_type], None
        _choice("algorithm", "loss_agg_mode", self.loss_agg_mode, LOSS_AGG_MODES)
        if self.epsilon_high is not None:
            self.cliprange_high, self.epsilon_high = self.epsilon_high, None
        if self.cliprange_high is not None and self.cliprange_high < 0:
            raise ConfigError(f"algorithm.cliprange_high must be >= 0, got {self.cliprange_high}")
        _choice("algorithm", "importance_sampling_level", self.importance_sampling_level, ("token", "sequence"))
        if self.beta < 0:
            raise ConfigError(f"algorithm.beta must be >= 0, got {self.beta}")
        for name in ("lam_actor", "lam_critic"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ConfigError(f"algorithm.{name} must be in [0, 1], got {value}")

    @property
    def group_size(self) -> int:
        """num_generations resolved: None means 1, or TRL's default 8 for the group estimators."""
        if self.num_generations is not None:
            return self.num_generations
        return 8 if self.advantage_estimator in GROUP_ESTIMATORS else 1

    @property
    def uses_critic(self) -> bool:
        """Only GAE needs a value function: the other estimators build, train and save no critic."""
        return self.advantage_estimator == "gae"

    def check_batch(self, ppo) -> None:
        """A mini-batch must hold whole groups, so a group never straddles processes or mini-batches."""
        mini_batch = ppo.local_batch_size // ppo.num_mini_batches
        if mini_batch % self.group_size:
            raise ConfigError(f"algorithm.num_generations={self.group_size} must divide the mini-batch of "
                              f"{mini_batch} episodes (ppo.per_device_train_batch_size x "
                              "ppo.gradient_accumulation_steps): change one of them")


HUB_STRATEGIES = ("end", "every_save", "checkpoint")


@dataclass
class HubConfig:
    push: bool = False
    repo_id: Optional[str] = None
    private: bool = False
    dry_run: bool = False
    checkpoint: Optional[str] = None  # folder of the run to push, e.g. checkpoint-500; None: final
    commit_message: str = "Upload PPO policy trained with rlhf_app"
    license: Optional[str] = None  # model card licence; None: the base model's, when it is known
    # transformers' hub_strategy. end: push once, after training. every_save: also push each checkpoint as
    # it is saved (in the background). checkpoint: like every_save, plus the newest checkpoint whole in
    # last-checkpoint/ (resume state) with every push.
    strategy: str = "end"

    def __post_init__(self):
        _choice("hub", "strategy", self.strategy, HUB_STRATEGIES)


@dataclass
class TrainConfig:
    recipe: Optional[str] = None
    output_dir: str = "runs/default"
    seed: int = 0
    offline: bool = False  # forbid every network call (set HF_HUB_OFFLINE and friends)
    num_threads: int = 0  # torch threads per process; 0: leave torch's choice
    save_steps: int = 0  # 0: only the final save
    save_total_limit: int = 2
    resume_from: Optional[str] = None  # auto | path to a checkpoint folder
    report_to: list[str] = field(default_factory=lambda: ["none"])  # none|wandb|tensorboard|trackio|all
    run_name: Optional[str] = None  # the trackers' run name; None: the output folder's name
    logging_steps: int = 1  # updates between metrics sent to the trackers (metrics.jsonl keeps every update)
    overwrite_output_dir: bool = False  # true: a new run may replace the run already in output_dir
    sample_every: int = 10  # updates between sample tables (samples.jsonl and the trackers); 0: never
    log_completions: bool = True  # TRL's: also print the sample table to the console (rich)
    num_completions_to_print: int = 4  # TRL's: rows of that console table (at most 8, the logged rows)
    eval_before_after: bool = True
    eval_steps: int = 0  # score the held-out split every N updates and at the end (eval/... metrics); 0: never
    print_config: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def __post_init__(self):
        for tracker in self.report_to:
            _choice("", "report_to", tracker, TRACKERS)
        if self.logging_steps < 1:
            raise ConfigError(f"logging_steps must be >= 1, got {self.logging_steps}")
        if self.num_completions_to_print < 0:
            raise ConfigError(f"num_completions_to_print must be >= 0, got {self.num_completions_to_print}")
        _ranges("", self, {"seed": _GE0, "num_threads": _GE0, "save_steps": _GE0, "save_total_limit": _GE0,
                           "sample_every": _GE0})
        if self.resume_from and self.overwrite_output_dir:
            raise ConfigError("resume_from and overwrite_output_dir=true contradict each other: "
                              "keep resume_from to continue the run, or overwrite_output_dir=true to replace it")
        if self.hub.strategy != "end" and not (self.hub.push and self.save_steps):
            raise ConfigError(f"hub.strategy={self.hub.strategy} pushes each checkpoint: it needs hub.push=true and "
                              f"save_steps > 0 (now hub.push={str(self.hub.push).lower()}, save_steps={self.save_steps})")
        bits = "load_in_4bit" if self.model.load_in_4bit else "load_in_8bit" if self.model.load_in_8bit else None
        if bits and not self.peft.enabled:
            raise ConfigError(f"model.{bits}=true needs peft.enabled=true: quantized weights stay frozen, "
                              "LoRA adapters are what trains (QLoRA)")
        self.algorithm.check_batch(self.ppo)
        if self.eval_steps < 0:
            raise ConfigError(f"eval_steps must be >= 0 (0: never), got {self.eval_steps}")


# ---- TRL's flat field names (ModelConfig, PPOConfig, TrainingArguments) -> the nested keys here.
# The one table: an alias works in recipes and on the command line; print_config shows the nested key.
ALIASES = {
    "model_name_or_path": "model.name_or_path", "model_revision": "model.revision", "dtype": "model.dtype",
    "torch_dtype": "model.dtype",  # transformers' name before dtype
    # PPOConfig's model paths: the policy's initial weights, the separate critic's
    "sft_model_path": "model.name_or_path", "value_model_path": "model.value_model_path",
    "trust_remote_code": "model.trust_remote_code", "gradient_checkpointing": "model.gradient_checkpointing",
    "attn_implementation": "model.attn_implementation", "load_in_4bit": "model.load_in_4bit",
    "load_in_8bit": "model.load_in_8bit", "bnb_4bit_quant_type": "model.bnb_4bit_quant_type",
    "use_bnb_nested_quant": "model.use_bnb_nested_quant",
    "use_peft": "peft.enabled", "lora_r": "peft.r", "lora_alpha": "peft.lora_alpha",
    "lora_dropout": "peft.lora_dropout", "lora_target_modules": "peft.target_modules",
    "push_to_hub": "hub.push", "hub_model_id": "hub.repo_id", "hub_private_repo": "hub.private",
    "hub_strategy": "hub.strategy",
    "resume_from_checkpoint": "resume_from",
    **{name: f"ppo.{name}" for name in (
        "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "total_episodes",
        "per_device_train_batch_size", "gradient_accumulation_steps", "num_mini_batches", "num_ppo_epochs",
        "local_rollout_forward_batch_size", "response_length", "temperature", "stop_token", "stop_token_id",
        "missing_eos_penalty", "kl_coef", "kl_estimator", "whiten_rewards", "cliprange", "cliprange_value",
        "vf_coef", "gamma", "lam", "bf16", "fp16")},
    # GRPOConfig's vLLM switches
    **{name: f"rollout.{name}" for name in (
        "use_vllm", "vllm_mode", "vllm_gpu_memory_utilization", "vllm_enable_sleep_mode",
        "vllm_importance_sampling_correction", "vllm_importance_sampling_mode", "vllm_importance_sampling_cap")},
    "vllm_importance_sampling_clip_max": "rollout.vllm_importance_sampling_cap",
    # TRL GRPOConfig's names for the estimator options (epsilon is its clip range).
    **{name: f"algorithm.{name}" for name in (
        "num_generations", "scale_rewards", "loss_type", "epsilon_high", "beta", "importance_sampling_level")},
    "epsilon": "ppo.cliprange",
    # GRPOConfig's reward and prompt fields
    "reward_weights": "reward.weights", "chat_template_kwargs": "data.chat_template_kwargs",
}
# TRL's count of sample tables over the run; converted to sample_every (updates between them) after merging.
NUM_SAMPLE_GENERATIONS = "num_sample_generations"


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


def _dotted_keys(node, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of a config as 'a.b.c' -> value."""
    out = {}
    for key in node:
        value = node[key] if not OmegaConf.is_missing(node, key) else MISSING
        full = f"{prefix}{key}"
        if OmegaConf.is_dict(value):
            out.update(_dotted_keys(value, full + "."))
        else:
            out[full] = value
    return out


OPEN_DICTS = ("model.init_kwargs.", "data.chat_template_kwargs.")  # free-form keys (passed on to a library)


def _check_keys(cfg, known: set[str], sections: set[str], where: str, flags: set[str] = frozenset()) -> None:
    def shown(key: str) -> str:  # name a key in the form the user typed it
        return f"--{key}" if key in flags else key

    for key in _dotted_keys(cfg):
        if key in known or key.startswith(OPEN_DICTS):
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


def _hint(key: str) -> Any:
    """The declared type of a dotted key (None if unknown)."""
    cls = TrainConfig
    for part in key.split("."):
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


def _kind(key: str) -> str:
    """'bool', 'list' or 'value': how `--key` consumes the arguments after it."""
    hint = _hint(ALIASES.get(key, key))
    args = typing.get_args(hint)
    if hint is bool or (bool in args and type(None) in args):
        return "bool"
    if typing.get_origin(hint) is list or any(typing.get_origin(a) is list for a in args):
        return "list"
    return "value"


def _normalize(argv: list[str]) -> tuple[list[str], set[str]]:
    """(`key=value` arguments, keys typed as `--key`); ConfigError on a malformed argument."""
    try:
        return normalize_argv(argv, _kind)
    except ArgvError as err:
        raise ConfigError(str(err)) from None


def normalize_args(argv: list[str]) -> list[str]:
    """Any mix of `key=value`, `--key value`, `--key=value` as `key=value` arguments (for the other tools)."""
    return _normalize(argv)[0]


def parse_overrides(argv: list[str]):
    """Command-line arguments (`key=value`, `--key value`, `--key=value`) to an OmegaConf dotlist."""
    return OmegaConf.from_dotlist(_normalize(argv)[0])


def _set_dotted(tree: dict, key: str, value: Any, alias: str, where: str) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            return  # `model: 1`: _check_keys names the section
    if leaf in tree and tree[leaf] != value:
        raise ConfigError(f"{where}: {alias}={value!r} (TRL's name for {key}) disagrees with "
                          f"{key}={tree[leaf]!r}: set only one of them")
    tree[leaf] = value


def resolve_aliases(layer, where: str):
    """One config layer with TRL's flat names moved to their nested keys, list fields given one value
    made lists, and `report_to=all` expanded to the installed trackers. Returns (layer, num_sample_generations)."""
    tree = OmegaConf.to_container(layer)
    for alias, key in ALIASES.items():
        if alias in tree:
            _set_dotted(tree, key, tree.pop(alias), alias, where)
    generations = tree.pop(NUM_SAMPLE_GENERATIONS, None)
    if generations is not None and "sample_every" in tree:
        raise ConfigError(f"{where}: set sample_every (updates between samples) or TRL's {NUM_SAMPLE_GENERATIONS} "
                          "(samples over the run), not both")
    for key, value in _dotted_keys(OmegaConf.create(tree)).items():
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
    updates = math.ceil(cfg.ppo.total_episodes / (cfg.ppo.local_batch_size * world))
    return max(1, updates // generations)


def _load_yaml(path: Path):
    """A YAML file as OmegaConf; a syntax error becomes one line with the file and line."""
    import yaml

    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"YAML syntax error in {where}: {problem}; fix the file (indent with spaces, "
                          "'key: value' per line)") from None


def load_config(argv: list[str]) -> TrainConfig:
    """Defaults ⊕ recipe ⊕ CLI, validated. Raises ConfigError with a one-line message."""
    args, flags = _normalize(argv)
    cli, cli_generations = resolve_aliases(OmegaConf.from_dotlist(args), "command line")
    default = OmegaConf.structured(TrainConfig)
    known = set(_dotted_keys(default))
    sections = {k for k in TrainConfig.__dataclass_fields__ if OmegaConf.is_dict(default[k])}
    layers, generations = [default], None
    recipe = cli.get("recipe")
    if recipe:
        path = recipe_path(str(recipe))
        recipe_cfg, generations = resolve_aliases(_load_yaml(path), f"recipe {path.name}")
        _check_keys(recipe_cfg, known, sections, f"recipe {path.name}")
        layers.append(recipe_cfg)
    _check_keys(cli, known, sections, "command line", flags)
    layers.append(cli)
    if cli_generations is not None or "sample_every" in cli:
        generations = cli_generations  # the last layer that sets either wins
    try:
        merged = OmegaConf.merge(*layers)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"bad value for {key}: expected {_field_type(key)}, "
                          f"got {str(err).split(chr(39))[1] if chr(39) in str(err) else str(err)!r}") from None
    if generations is not None:
        cfg.sample_every = _sample_every(cfg, generations)
    if cfg.recipe and not Path(str(cfg.recipe)).suffix and "output_dir" not in cli and \
            (not recipe or "output_dir" not in _load_yaml(recipe_path(str(recipe)))):
        cfg.output_dir = f"runs/{cfg.recipe}"
    return cfg


def to_yaml(cfg: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def main_guard(argv: list[str]) -> TrainConfig:
    """load_config for a command-line tool: a ConfigError ends the program with its one line."""
    try:
        return load_config(argv)
    except ConfigError as err:
        sys.exit(f"error: {err}")
