"""TRL's flat field names and the short names a Python keyword keeps from being fields, each with the
nested key it sets here: the one table behind every alias in recipes and on the command line."""

from __future__ import annotations

from typing import Any

from rlhf_app.config.checks import ConfigError

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
    "max_staleness": "rollout.max_staleness",  # TRL AsyncGRPOConfig's
    # GRPOTrainer's tools and environments (its arguments; max_tool_calling_iterations is GRPOConfig's), and ours
    **{name: f"rollout.{name}" for name in (
        "tools", "environment_factory", "max_tool_calling_iterations", "tool_timeout", "tool_isolation")},
    # TRL GRPOConfig's names for the estimator options (epsilon is its clip range).
    **{name: f"algorithm.{name}" for name in (
        "num_generations", "scale_rewards", "loss_type", "epsilon_high", "beta", "importance_sampling_level")},
    "epsilon": "ppo.cliprange",
    # GRPOConfig's reward and prompt fields
    "reward_weights": "reward.weights", "chat_template_kwargs": "data.chat_template_kwargs",
}
# Keys a Python keyword keeps from being field names: the key users type -> the field.
KEYWORD_KEYS = {"rollout.async": "rollout.asynchronous"}
# TRL's count of sample tables over the run; converted to sample_every (updates between them) after merging.
NUM_SAMPLE_GENERATIONS = "num_sample_generations"


def set_dotted(tree: dict, key: str, value: Any, alias: str, where: str, kind: str = "TRL's name") -> None:
    """Put `value` at the dotted `key` of `tree` (nested dicts). A key that already holds another value is a
    ConfigError in one line naming both spellings (`alias` is the one this value came as)."""
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            return  # `model: 1`: loading._check_keys names the section
    if leaf in tree and tree[leaf] != value:
        raise ConfigError(f"{where}: {alias}={value!r} ({kind} for {key}) disagrees with "
                          f"{key}={tree[leaf]!r}: set only one of them")
    tree[leaf] = value
