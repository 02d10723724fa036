"""The config sections of the model, adapters, data, reward and PPO update: dataclass defaults and checks."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from rlhf_app.config.checks import _GE0, _GE1, _GT0, _PROB, _UNIT, SCHEDULERS, ConfigError, _choice, _ranges, finite


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
    # shared head's init: normal (std 1/sqrt(hidden+1), lm-human-preferences) | zeros (every value starts at 0:
    # the first advantages are the returns themselves, not head noise, which a sparse 0/1 reward drowns in)
    value_head_init: str = "normal"
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    attn_implementation: Optional[str] = None  # eager | sdpa | flash_attention_2 | ...; None: transformers' choice
    init_kwargs: dict[str, Any] = field(default_factory=dict)  # more from_pretrained kwargs (policy, critic, reference)
    load_in_4bit: bool = False  # QLoRA: bitsandbytes 4-bit base weights (CUDA), LoRA adapters trained on top
    load_in_8bit: bool = False
    bnb_4bit_quant_type: str = "nf4"  # nf4 | fp4
    use_bnb_nested_quant: bool = False
    # The tokenizer's chat template, replacing the model's own in every stage and engine (and saved with it):
    # asset:chatml-tools (ChatML with tool calls, for SmolLM2), a .jinja file or the template text; None: the
    # model's. E.g. one with tool support (docs/tools.md).
    chat_template: Optional[str] = None

    def __post_init__(self):
        _check_chat_template(self.chat_template)
        _choice("model", "dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _choice("model", "value_model", self.value_model, ("shared", "separate"))
        _choice("model", "value_head_init", self.value_head_init, ("normal", "zeros"))
        _choice("model", "bnb_4bit_quant_type", self.bnb_4bit_quant_type, ("nf4", "fp4"))
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("model.load_in_4bit and model.load_in_8bit are both true: choose one")
        for key in sorted(set(self.init_kwargs) & set(RESERVED_INIT_KWARGS)):
            raise ConfigError(f"model.init_kwargs.{key}: {RESERVED_INIT_KWARGS[key]}")


def _check_chat_template(template: Optional[str]) -> None:
    """Template text holds Jinja tags ({{ or {%); asset:NAME is a shipped one (assets/chat_templates.py checks the
    name); anything else names a file that must exist."""
    if template is None or "{{" in template or "{%" in template or template.startswith("asset:"):
        return
    if not Path(template).expanduser().is_file():
        raise ConfigError(f"model.chat_template={template!r} is neither a file nor a Jinja template: give a .jinja "
                          f"file (relative paths start at {Path.cwd()}), the template text or asset:chatml-tools")


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
    name: str = "toy"  # toy | sentiment | gsm8k | variety | python
    # Several rewards, summed with reward.weights (TRL's reward_funcs / reward_weights): built-ins
    # (toy, sentiment, gsm8k, variety), path/to/file.py:function, module.path:function or module:factory(k=v),
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
    multiple_answers: str = "last"  # gsm8k strict: last (veRL: the last "#### N" counts) | none (several: no answer)
    answer_at_end: bool = False  # gsm8k strict: the "#### N" must end the completion (text after it: no answer)
    trailing_answer_score: float = 0.0  # gsm8k with answer_at_end: partial credit for a "#### N" with text after it
    trailing_answer_until: float = 1.0  # the share of training's updates that pay it (then 0; 1: all of them)
    target: str = "a"  # toy: the string whose frequency in the completion is the reward
    # The gold reward: a second source (reward.funcs syntax: a built-in, file.py:fn, module:fn, a model), scored
    # beside the reward at every evaluation (eval/gold against eval/proxy); None: none. The run keeps the policy
    # of its best gold evaluation in gold-best/ and warns once when gold fell gold_patience evaluations in a row.
    gold: Optional[str] = None
    gold_patience: int = 3

    def __post_init__(self):
        _choice("reward", "name", self.name, ("toy", "sentiment", "gsm8k", "variety", "python"))
        _choice("reward", "kind", self.kind, ("logit", "prob"))
        if self.batch_size < 1:
            raise ConfigError(f"reward.batch_size must be >= 1, got {self.batch_size}")
        if self.gold_patience < 1:
            raise ConfigError(f"reward.gold_patience must be >= 1, got {self.gold_patience}")
        _choice("reward", "method", self.method, ("strict", "flexible"))
        _choice("reward", "multiple_answers", self.multiple_answers, ("last", "none"))
        if self.trailing_answer_score and not self.answer_at_end:
            raise ConfigError("reward.trailing_answer_score is the score of an answer that does not end its "
                              "completion: it needs reward.answer_at_end=true (or leave it at 0)")
        if not 0.0 < self.trailing_answer_until <= 1.0:
            raise ConfigError(f"reward.trailing_answer_until is the share of the updates that pay "
                              f"reward.trailing_answer_score, in (0, 1], got {self.trailing_answer_until}")
        if self.trailing_answer_until < 1.0 and not self.trailing_answer_score:
            raise ConfigError("reward.trailing_answer_until stops reward.trailing_answer_score, which is 0: set "
                              "reward.trailing_answer_score too (or leave reward.trailing_answer_until at 1)")
        if self.weights is not None:
            finite("reward.weights", list(self.weights))  # a NaN weight would silently drop its function
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
    ent_cap: Optional[float] = None  # nats: the bonus counts each token's entropy up to it (None: no cap)
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
            "vf_coef": _GE0, "ent_coef": _GE0, "ent_cap": _GT0, "gamma": _UNIT, "lam": _UNIT})
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
