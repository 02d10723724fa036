"""Checks that run before training starts, each ending the run with one line that names the fix.

They need what the config alone cannot say: the model's config (its number of positions), the
tokenized prompts and the machine. Whether the run folder can be written is checked by
`rlhf_app.run_dir.claim`. Each raises `PreflightError`; the command line prints it.
"""

from __future__ import annotations

from rlhf_app.errors import UserError


class PreflightError(UserError, RuntimeError):
    """A setting that cannot work with this model, data or machine; the message names the fix."""


def model_positions(model_config) -> int | None:
    """The longest sequence the model's positions allow, or None when it declares none."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_positions(model_config, datasets: dict, response_length: int) -> None:
    """The longest prompt of every split plus `response_length` fits the model's positions.

    `datasets` maps a split name to a dataset with an `input_ids` column.
    """
    positions = model_positions(model_config)
    if positions is None:
        return
    for split, ds in datasets.items():
        if len(ds) == 0:
            continue
        longest = max(len(ids) for ids in ds["input_ids"])
        if longest + response_length > positions:
            room = positions - longest
            fix = f"lower ppo.response_length to {room}" if room > 0 else "shorten the prompts"
            raise PreflightError(
                f"the longest {split} prompt ({longest} tokens) + ppo.response_length ({response_length}) = "
                f"{longest + response_length} exceeds the model's {positions} positions: {fix}, "
                f"or lower data.max_prompt_length")


def check_engine(cfg, model_config) -> None:
    """rollout.engine=vllm: vLLM can load the policy's architecture, read from its config before the
    weights load (EngineError names the fix)."""
    if cfg.rollout.engine == "vllm":
        from rlhf_app.engines.vllm_engine import check_architecture

        check_architecture(model_config)


def check_tool_template(cfg, tokenizer) -> None:
    """With tools, the tokenizer's chat template renders a tool-calling conversation (TRL's refusal, before any
    weights load) and its tool calls can be parsed; one line naming the fix."""
    if not cfg.rollout.uses_tools:
        return
    from trl.chat_template_utils import supports_tool_calling

    from rlhf_app.engines.tools import ensure_parser

    if not supports_tool_calling(tokenizer):
        has = "has no chat template" if not tokenizer.chat_template else "has a chat template that cannot render " \
            "tool calls (trl's supports_tool_calling)"
        raise PreflightError(f"rollout.tools / environment_factory need a chat template with tool support, and "
                             f"{cfg.model.name_or_path} {has}: set model.chat_template=asset:chatml-tools (ChatML with "
                             "tool calls, shipped) or path/to/template.jinja (one with tools), or give the model one "
                             "with trl's clone_chat_template and fine-tune it")
    ensure_parser(tokenizer)


def check_overlap(rollout, world_size: int) -> None:
    """rollout.async=true runs in one process: the engine's thread and the trainer would otherwise share
    the process group's collectives (vLLM's external launcher joins it), which nothing orders."""
    if rollout.asynchronous and world_size > 1:
        raise PreflightError(f"rollout.async=true overlaps sampling and training in one process, not {world_size}: "
                             "launch one process, or set rollout.async=false")


def check_prompts_fill_a_batch(num_prompts: int, local_batch_size: int, world_size: int,
                               num_generations: int = 1) -> None:
    """One update takes `local_batch_size / num_generations` distinct prompts on each of `world_size`
    processes (each prompt repeated `num_generations` times in a row: `rl.sampler.PromptSampler`)."""
    need = local_batch_size // num_generations * world_size
    if num_prompts < need:
        episodes = f"{local_batch_size * world_size} episodes" + (
            f" ({need} prompts x {num_generations} generations)" if num_generations > 1 else "")
        raise PreflightError(
            f"{num_prompts} training prompts cannot fill one update of {episodes} "
            f"(ppo.per_device_train_batch_size x gradient_accumulation_steps x num_mini_batches x {world_size} "
            f"processes): lower ppo.per_device_train_batch_size or ppo.num_mini_batches, or add prompts "
            f"(data.num_train)")


def mixed_precision(section, cuda: bool, cuda_bf16: bool = True, name: str = "ppo") -> str:
    """accelerate's `mixed_precision` for TRL's `bf16` / `fp16` switches of config section `name` on this machine:
    "no", "bf16" or "fp16".

    fp16 needs loss scaling, which accelerate does on GPUs only; bf16 runs on CPUs too (fast where they
    have AVX-512-BF16 or AMX, correct but emulated and slow elsewhere: one warning line).
    """
    if section.fp16 and not cuda:
        raise PreflightError(f"{name}.fp16=true needs a CUDA GPU (fp16 trains with loss scaling there): "
                             f"on CPU use {name}.bf16=true, or neither for fp32")
    if section.bf16 and cuda and not cuda_bf16:
        raise PreflightError(f"{name}.bf16=true: this GPU has no bfloat16; use {name}.fp16=true")
    if section.bf16 and not cuda and not cpu_has_bf16():
        # Measured on a 2-core AMD EPYC with AVX2 only (2026-12-04), SmolLM2-135M forward + backward: 13x slower
        # under bf16 autocast at 8 x 36 tokens on 1 thread, 27x at 4 x 256 on 2 (docs/performance.md).
        print(f"warning: {name}.bf16=true on a CPU without bfloat16 hardware (no AVX-512-BF16 or AMX): torch emulates "
              f"it, ~13-27x slower than float32 for a small model's training step; set {name}.bf16=false to run in "
              "float32", flush=True)
    return "bf16" if section.bf16 else "fp16" if section.fp16 else "no"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512-BF16 or AMX), as torch reports it; True when this
    torch cannot say (no warning rather than a wrong one)."""
    import torch

    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None) or all(c is None for c in checks)


def check_settings(cfg) -> tuple[list, str | None]:
    """Before the run folder or a model: 4/8-bit without bitsandbytes or a GPU, a reward that cannot be
    imported, a push that cannot work, a missing extra or vLLM, one line each.
    -> (the reward sources, the Hub token or None)"""
    from rlhf_app import extras, rewards
    from rlhf_app.assets import chat_templates
    from rlhf_app.models.loading import quantization_problem

    if quantization_problem(cfg):
        raise PreflightError(quantization_problem(cfg))
    if cfg.model.chat_template:
        chat_templates.read(cfg.model.chat_template)  # no such asset or file: one line
    reward_sources = rewards.resolve_sources(cfg)
    if cfg.rollout.uses_tools:  # imported and checked now; an environment's get_reward scores as TRL's does
        from rlhf_app.engines.tool_specs import resolve_tools, reward_sources as environment_rewards

        reward_sources += environment_rewards(resolve_tools(cfg.rollout))
    hub_token = None
    if cfg.hub.push:
        from rlhf_app.hub import upload as hub

        hub_token = hub.check_push(cfg)  # no repo id, offline, no token: say so now, not after training
    extras.check(cfg)  # trackers, asset builders
    if cfg.rollout.engine == "vllm":
        from rlhf_app.engines.vllm_engine import import_vllm

        import_vllm()  # EngineError names the install command
    return reward_sources, hub_token
