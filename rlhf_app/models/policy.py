"""Policy with a value head, its reference, and saving/loading them.

The default critic is a scalar head on the policy's last hidden state (one trunk, one forward
for log-probs and values). `model.value_model=separate` gives the critic its own trunk: a
sequence-classification model with one label, whose per-token scores are the values.
The reference is a frozen copy, or with LoRA the same weights with the adapters disabled.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf_app.models.forward import fp32_linear, last_positions, position_ids_of, response_forward, unwrap_peft
from rlhf_app.models.loading import from_pretrained_kwargs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_MODEL_DIR = "value_model"


def _resolve(name_or_path: str) -> str:
    """A model name or path, with `asset:NAME` built into (or found in) the asset cache."""
    # Imported here, not at the top: importing this module (checkpoints save and load through it) never
    # loads the registry and its builders; only resolving a name does.
    from rlhf_app.assets import registry as assets

    return assets.resolve(name_or_path)


class PolicyAndValue(nn.Module):
    """A causal LM and its critic: forward -> (logits, values) at the response positions (see forward).

    `value_head=False` (critic-free estimators: GRPO, RLOO, REINFORCE++) builds no critic at all:
    values come back None and nothing but the policy is trained or saved.
    """

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None, value_head: bool = True,
                 value_head_init: str = "normal"):
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.value_head = None
        # FSDP's auto-wrap looks for this attribute on the wrapped model: shard per transformer block.
        self._no_split_modules = list(getattr(unwrap_peft(policy), "_no_split_modules", None) or [])
        if critic is None and value_head:
            hidden = policy.config.get_text_config().hidden_size
            self.value_head = nn.Linear(hidden, 1)
            # Small weights, zero bias (lm-human-preferences' init), or all zeros: every value starts at 0.
            if value_head_init == "zeros":
                nn.init.zeros_(self.value_head.weight)
            else:
                nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(self.value_head.bias)
            self.value_head.to(next(policy.parameters()).dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int | None = None,
                temperature: float = 1.0):
        """input_ids, attention_mask (B, T) -> (logits (B, R, V) / temperature, values (B, R)) at the R positions
        that predict the last R tokens (R = response_length; None: all T positions, nothing dropped)."""
        logits, hidden = response_forward(self.policy, input_ids, attention_mask, response_length, temperature)
        if self.value_head is not None:
            values = fp32_linear(self.value_head, hidden)
        elif self.critic is None:
            return logits, None
        else:
            trunk = getattr(self.critic, self.critic.base_model_prefix)
            hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_of(attention_mask),
                           use_cache=False).last_hidden_state
            values = fp32_linear(self.critic.score, last_positions(hidden, response_length))
        return logits, values.squeeze(-1)

    # trl's unwrap_model_for_generation switches checkpointing off while generating (KV cache).
    @property
    def is_gradient_checkpointing(self) -> bool:
        # transformers renamed is_gradient_checkpointing to is_activation_checkpointing.
        return bool(getattr(unwrap_peft(self.policy), "is_activation_checkpointing", False))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def gradient_checkpointing_disable(self):
        self.policy.gradient_checkpointing_disable()

    @contextlib.contextmanager
    def reference(self, ref_policy: nn.Module | None):
        """Yields the reference policy: `ref_policy`, or this policy with its LoRA adapters off."""
        if ref_policy is not None:
            yield ref_policy
        else:
            with self.policy.disable_adapter():
                yield self.policy


def set_chat_template(tokenizer, chat_template: str | None):
    """model.chat_template (asset:NAME, a .jinja file or the template text) in place of the tokenizer's own, with
    the response_template that parses its tool calls back when it ships one; None: kept."""
    from rlhf_app.assets import chat_templates

    return chat_templates.apply(tokenizer, chat_template)


def load_tokenizer(name_or_path: str, revision: str | None = None, chat_template: str | None = None):
    """The policy's tokenizer, left-padded for generation, with a pad token (EOS if it has none) and
    `chat_template` (model.chat_template) when given.

    Masks are always carried explicitly, so a pad token equal to EOS is harmless here.
    """
    tokenizer = set_chat_template(AutoTokenizer.from_pretrained(_resolve(name_or_path), revision=revision),
                                  chat_template)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_config(m):
    """The policy's transformers config (cheap: no weights), for checks before the model loads."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(_resolve(m.name_or_path), revision=m.revision,
                                      trust_remote_code=m.trust_remote_code)


def build_models(cfg) -> tuple[PolicyAndValue, nn.Module | None]:
    """(policy with critic, frozen reference or None when LoRA provides it) from `cfg.model`/`cfg.peft`."""
    from transformers import set_seed

    m, critic_needed = cfg.model, cfg.algorithm.uses_critic
    path = _resolve(m.name_or_path)
    critic_path = _resolve(m.value_model_path) if m.value_model_path else path
    # Seed after any asset build, so freshly initialised heads never depend on what was cached.
    set_seed(cfg.seed)
    kwargs = from_pretrained_kwargs(cfg)  # dtype, revision, attention, init_kwargs, 4/8-bit weights
    policy = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    critic = None
    if m.value_model == "separate" and critic_needed:
        # The critic trains all its weights: never quantized, even when the policy's base is (QLoRA).
        full = {k: v for k, v in kwargs.items() if k not in ("quantization_config", "device_map")}
        critic = AutoModelForSequenceClassification.from_pretrained(critic_path, num_labels=1, **full)
        critic.config.pad_token_id = critic.config.pad_token_id or policy.config.pad_token_id
    ref = None
    if cfg.peft.enabled:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if m.load_in_4bit or m.load_in_8bit:  # QLoRA: frozen quantized base, norms in fp32, input grads on
            policy = prepare_model_for_kbit_training(policy, use_gradient_checkpointing=m.gradient_checkpointing)
        policy = get_peft_model(policy, lora_config(cfg.peft))
    else:
        ref = copy.deepcopy(policy).eval().requires_grad_(False)
    if m.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.peft.enabled:
            policy.enable_input_require_grads()
    model = PolicyAndValue(policy, critic, value_head=critic_needed,
                           value_head_init=cfg.model.value_head_init)
    # PPO compares log-probs of the same tokens across forwards: dropout would add noise to the ratio.
    disable_all_dropout(model)
    return model, ref


def lora_config(peft, task_type: str = "CAUSAL_LM", modules_to_save: list[str] | None = None):
    """peft's LoraConfig of the `peft` section: the adapters build_models puts on the policy, the SFT and
    RM stages on theirs, and the race bench (bench/race_child.py) gives TRL's GRPOTrainer as peft_config."""
    from peft import LoraConfig

    return LoraConfig(r=peft.r, lora_alpha=peft.lora_alpha, lora_dropout=peft.lora_dropout, task_type=task_type,
                      target_modules=peft.target_modules or "all-linear", modules_to_save=modules_to_save)


def disable_all_dropout(model: nn.Module) -> None:
    """Dropout off for every architecture: trl's `disable_dropout_in_model` zeroes `nn.Dropout` modules,
    but Llama, Qwen2, Mistral, ... apply `attention_dropout` (a float copied from the config) inside the
    attention function. Those floats are zeroed too; the configs, saved with the model, stay as they are."""
    from trl.trainer.utils import disable_dropout_in_model

    disable_dropout_in_model(model)
    for module in model.modules():
        for name, value in vars(module).items():
            if isinstance(value, float) and not isinstance(value, bool) and ("dropout" in name or name.endswith("pdrop")):
                setattr(module, name, 0.0)


def save_policy(model: PolicyAndValue, tokenizer, out_dir: str | Path, state_dict: dict | None = None) -> None:
    """Policy + tokenizer with save_pretrained (safetensors), the critic beside them.

    `state_dict`: the whole model's weights as `accelerator.get_state_dict` gathers them (ZeRO-3 and FSDP
    shard the parameters, so the module's own tensors are not the full weights); None: the module's own.
    """
    out_dir = Path(out_dir)

    def part(prefix: str):
        return None if state_dict is None else \
            {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}

    model.policy.save_pretrained(out_dir, safe_serialization=True, state_dict=part("policy."))
    tokenizer.save_pretrained(out_dir)
    if model.value_head is not None:
        head = part("value_head.") or model.value_head.state_dict()
        save_file({k: v.detach().contiguous().cpu() for k, v in head.items()}, str(out_dir / VALUE_HEAD_FILE))
    elif model.critic is not None:
        model.critic.save_pretrained(out_dir / VALUE_MODEL_DIR, safe_serialization=True, state_dict=part("critic."))


def load_policy(path: str | Path, dtype: str = "float32") -> tuple[PolicyAndValue, object]:
    """A saved policy and its critic, for evaluation or further training: (model, tokenizer).

    `path` is a `final/` or `checkpoint-N/` folder written by `save_policy`. LoRA runs save
    adapters, which are loaded on top of their base model.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no saved policy at {path}: pass a run's final/ or checkpoint-N/ folder")
    kwargs = dict(dtype=DTYPES[dtype])
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        base_id = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModelForCausalLM.from_pretrained(_resolve(base_id), **kwargs)
        policy = PeftModel.from_pretrained(base, path, is_trainable=True)
    else:
        policy = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    critic = None
    if (path / VALUE_MODEL_DIR).is_dir():
        critic = AutoModelForSequenceClassification.from_pretrained(path / VALUE_MODEL_DIR, **kwargs)
    # Neither a head nor a critic model: a critic-free run (GRPO, RLOO, REINFORCE++) saved only the policy.
    model = PolicyAndValue(policy, critic, value_head=(path / VALUE_HEAD_FILE).is_file())
    if model.value_head is not None:
        model.value_head.load_state_dict(load_file(str(path / VALUE_HEAD_FILE)))
    tokenizer = load_tokenizer(str(path))
    return model, tokenizer
