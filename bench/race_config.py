"""The race's settings (bench/race.py): each side's TrainConfig, TRL's GRPOConfig built from it, the evaluation.

Sides, on the same recipe, seed, model, LoRA, reward, training and held-out prompts:
- `ours`: the recipe as shipped (its estimator and its KL to the reference in the reward);
- `ours-grpo`: the same recipe with rlhf_app's GRPO estimator (a PPO recipe gets GROUP responses per prompt,
  std-scaled groups, token-mean) and the recipe's KL coefficient moved from the reward (k1) into the loss
  (k3, TRL's beta): what `trl` runs, so ours-grpo against trl is the engine alone;
- `trl`: TRL 1.16's GRPOTrainer with ours-grpo's settings, field by field (`trl_kwargs`), and LoRA through
  its own `peft_config` (the LoraConfig build_models uses). Its vLLM colocate route cannot sync weights
  on this CPU build (docs/performance.md), so it samples with transformers' generate.
Only rlhf_app.config is imported at module level: the parent process builds configs without torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

RECIPES = {"imdb": "imdb-offline", "gsm8k": "gsm8k-offline"}
SIDES = ("ours", "ours-grpo", "trl")
GROUP = 4  # responses per prompt of a PPO recipe's GRPO sides (a GRPO recipe keeps its own); mini-batches hold groups
# The held-out score each recipe races on: (eval metric, gain over the start; None: the best both reach).
TARGETS = {"imdb-offline": ("positive_share", 0.30), "gsm8k-offline": ("accuracy_strict", None)}
POINTS = {"imdb-offline": 8, "gsm8k-offline": 6}  # evaluated snapshots over the recipe's budget (plus the start)
# IMDB held-out prompts; GSM8K generated problems no stage trains on (and the 55 real items besides)
HELD_OUT = {"imdb-offline": 256, "gsm8k-offline": 300}
EVAL_BATCH = 32  # requests the evaluation's engine runs at once (vLLM's max_num_seqs): speed only
# Every side: no evaluation, samples or periodic checkpoints inside the timed run (the race evaluates its snapshots).
COMMON = ["eval_before_after=false", "eval_steps=0", "sample_every=0", "log_completions=false", "save_steps=0"]
# --quick: the tiny 2-layer model, transformers' generate, two updates, a few held-out prompts.
QUICK_HELD_OUT = {"imdb-offline": 8, "gsm8k-offline": 8}
QUICK = {"imdb-offline": ["ppo.total_episodes=64", "data.num_train=128"],
         "gsm8k-offline": ["ppo.total_episodes=16", "data.num_train=256", "data.max_prompt_length=240"]}
QUICK_ALL = ["model.name_or_path=asset:tiny", "rollout.engine=hf", "ppo.response_length=8", "ppo.bf16=false",
             "model.dtype=float32"]
# ours-grpo's loss aggregation -> TRL's loss_type doing the same (config/train_config.py TRL_LOSS_TYPES, inverted).
LOSS_TYPES = {"token-mean": "dapo", "seq-mean-token-mean": "grpo", "seq-mean-token-sum-norm": "dr_grpo"}


def held_out(recipe: str, quick: bool, override: int | None = None) -> int:
    """IMDB's held-out prompts, GSM8K's generated problems (override or quick: also at most that many real items)."""
    return override or (QUICK_HELD_OUT if quick else HELD_OUT)[recipe]


def base_args(recipe: str, seed: int, threads: int, quick: bool, extra: list[str],
              held: int | None = None) -> list[str]:
    eval_arg = [f"data.num_eval={held_out(recipe, quick, held)}"] if recipe == "imdb-offline" else []
    return [f"recipe={recipe}", f"seed={seed}", f"num_threads={threads}", *COMMON, *eval_arg,
            *((QUICK_ALL + QUICK[recipe]) if quick else []), *extra]


def grpo_args(cfg) -> list[str]:
    """The recipe turned into TRL's GRPO: the estimator (kept when the recipe already has it) and the KL to the
    reference moved from the reward (k1) into the loss (k3, TRL's beta), which is the only place TRL puts it."""
    kl = [f"algorithm.beta={cfg.ppo.kl_coef}", "ppo.kl_coef=0", "ppo.adaptive_kl=false"]
    if cfg.algorithm.advantage_estimator == "grpo":
        return kl if cfg.ppo.kl_coef else []
    return ["algorithm.advantage_estimator=grpo", f"algorithm.num_generations={GROUP}",
            "algorithm.scale_rewards=group", "algorithm.loss_agg_mode=token-mean", *kl]


def side_config(recipe: str, side: str, seed: int, threads: int = 1, quick: bool = False,
                extra: list[str] | tuple = (), peer_factor: float = 1.0, held: int | None = None):
    """The TrainConfig `side` trains with. The GRPO sides get `peer_factor` times the recipe's episodes
    (they also stop at a wall-time cap, bench/race.py)."""
    from rlhf_app.config import load_config

    if side not in SIDES:
        raise ValueError(f"side {side!r} is not one of {', '.join(SIDES)}")
    args = base_args(recipe, seed, threads, quick, list(extra), held)
    cfg = load_config(args)
    if side == "ours":
        return cfg
    episodes = int(round(cfg.ppo.total_episodes * peer_factor))
    return load_config([*args, *grpo_args(cfg), f"ppo.total_episodes={episodes}"])


def eval_config(recipe: str, seed: int, threads: int = 1, quick: bool = False, extra: list[str] | tuple = (),
                held: int | None = None):
    """The one evaluation every side's snapshots get: the recipe's sampling (temperature, response length,
    stop token), engine, reward and held-out prompts at this seed; EVAL_BATCH requests at a time."""
    from rlhf_app.config import load_config

    return load_config([*base_args(recipe, seed, threads, quick, list(extra), held),
                        "ppo.gradient_accumulation_steps=1", f"ppo.per_device_train_batch_size={EVAL_BATCH}",
                        "ppo.num_mini_batches=1"])


def updates_per_snapshot(cfg, recipe: str, points: int | None = None) -> int:
    from rlhf_app.config.train_config import num_updates

    return max(1, round(num_updates(cfg.ppo, 1) / (points or POINTS[recipe])))


def optimizer_steps_per_update(cfg) -> int:
    return cfg.ppo.num_mini_batches * cfg.ppo.num_ppo_epochs


def trl_kwargs(cfg, output_dir: str) -> dict:
    """GRPOConfig's arguments doing what ours-grpo's `cfg` does. One generation batch = one of our updates
    (local_batch_size episodes); steps_per_generation mini-batches, num_iterations epochs over it."""
    from rlhf_app.config.train_config import num_updates

    ppo, alg = cfg.ppo, cfg.algorithm
    unmatched = {"advantage_estimator": alg.advantage_estimator != "grpo", "ppo.kl_coef": ppo.kl_coef != 0,
                 "ppo.whiten_rewards": ppo.whiten_rewards, "ppo.reward_scale": ppo.reward_scale != 1,
                 "ppo.missing_eos_penalty": ppo.missing_eos_penalty is not None,
                 "ppo.max_tokens_per_micro_batch": ppo.max_tokens_per_micro_batch is not None,
                 "rollout.async": cfg.rollout.asynchronous, "loss_agg_mode": alg.loss_agg_mode not in LOSS_TYPES}
    if any(unmatched.values()):
        raise ValueError(f"TRL's GRPOTrainer has no equivalent of {', '.join(k for k, v in unmatched.items() if v)}")
    return dict(
        output_dir=output_dir, seed=cfg.seed, use_cpu=True, bf16=ppo.bf16, fp16=False, report_to="none",
        save_strategy="no", logging_steps=1, log_completions=False, disable_dropout=True, use_vllm=False,
        gradient_checkpointing=cfg.model.gradient_checkpointing,  # TRL's default is on: ~20% slower
        dataloader_num_workers=0, max_steps=num_updates(ppo, 1) * optimizer_steps_per_update(cfg),
        learning_rate=ppo.learning_rate, lr_scheduler_type=ppo.lr_scheduler_type, warmup_steps=ppo.warmup_steps,
        weight_decay=ppo.weight_decay, adam_epsilon=1e-5, optim="adamw_torch_fused", max_grad_norm=ppo.max_grad_norm,
        per_device_train_batch_size=ppo.per_device_train_batch_size,
        gradient_accumulation_steps=ppo.gradient_accumulation_steps,
        steps_per_generation=ppo.gradient_accumulation_steps * ppo.num_mini_batches, num_iterations=ppo.num_ppo_epochs,
        num_generations=alg.group_size, max_completion_length=ppo.response_length, temperature=ppo.temperature,
        top_k=ppo.top_k, top_p=ppo.top_p, beta=alg.beta, epsilon=ppo.cliprange,
        epsilon_high=alg.cliprange_high if alg.cliprange_high is not None else ppo.cliprange,
        loss_type=LOSS_TYPES[alg.loss_agg_mode], scale_rewards=alg.scale_rewards,
        importance_sampling_level=alg.importance_sampling_level, entropy_coef=ppo.ent_coef)


def fingerprint(cfg, *more) -> str:
    """A short hash of a side's settings (seed, threads and folder left out): runs merged into the JSON under
    another fingerprint were measured under other settings."""
    tree = {k: v for k, v in asdict(cfg).items() if k not in ("seed", "output_dir", "num_threads")}
    return hashlib.sha1(json.dumps([tree, *more], sort_keys=True, default=str).encode()).hexdigest()[:12]


def settings(cfg) -> dict:
    """The figures a reader of bench/race.json needs about a side's run."""
    ppo, alg = cfg.ppo, cfg.algorithm
    return {"estimator": alg.advantage_estimator, "num_generations": alg.group_size, "beta": alg.beta,
            "kl_coef": ppo.kl_coef, "ent_coef": ppo.ent_coef, "reward_clip": ppo.reward_clip,
            "episodes_per_update": ppo.local_batch_size, "total_episodes": ppo.total_episodes,
            "epochs": ppo.num_ppo_epochs, "mini_batches": ppo.num_mini_batches, "lr": ppo.learning_rate,
            "response_length": ppo.response_length, "temperature": ppo.temperature, "bf16": ppo.bf16,
            "engine": cfg.rollout.engine, "model": cfg.model.name_or_path,
            "lora_r": cfg.peft.r if cfg.peft.enabled else None}
