"""The config sections of the rollout engine, the estimator and the Hub, and the whole run's TrainConfig."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from rlhf_app.config.checks import _GE0, TRACKERS, ConfigError, _choice, _ranges, finite
from rlhf_app.config.pipeline import check_stages
from rlhf_app.config.sections import DataConfig, ModelConfig, PeftConfig, PPOConfig, RewardConfig
from rlhf_app.config.stages import PairsSection, RMSection, SFTSection


ENGINES = ("hf", "vllm")
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
TOOL_ISOLATION = ("none", "process")


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
    # TRL's truncated IS for the engine/trainer mismatch (and the staleness of asynchronous rollouts);
    # None: on with asynchronous=true, off otherwise (the `importance_sampling` property resolves it)
    vllm_importance_sampling_correction: Optional[bool] = None
    vllm_importance_sampling_mode: str = "token_truncate"
    vllm_importance_sampling_cap: float = 3.0  # TRL's C_max (vllm_importance_sampling_clip_max)
    # false: the engine's log-probs of the sampled tokens are the PPO ratio's old policy (veRL's
    # recompute_old_log_prob=false), saving the trainer's no-grad forward of the policy; vllm, synced, no IS
    recompute_logprobs: bool = True
    # `rollout.async=true`: the engine samples update k+1's batch while update k trains (engines/overlap.py)
    asynchronous: bool = False
    max_staleness: int = 1  # TRL AsyncGRPO's name: updates a batch lags the policy; 0 (no overlap) or 1
    # Tools and multi-turn episodes (TRL GRPOTrainer's names, flat on the command line: docs/tools.md)
    tools: list[str] = field(default_factory=list)  # module:function or path/file.py:function, typed + docstring
    environment_factory: Any = None  # module:Class | path/file.py:Class | {name: factory} chosen by an `environment` column
    max_tool_calling_iterations: Optional[int] = None  # tool rounds per episode; None: until it answers or R runs out
    tool_timeout: float = 30.0  # seconds one tool call may take; then it is stopped and counted as failed
    tool_isolation: str = "none"  # none: tools run in the training process | process: in a subprocess

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
        if self.max_staleness not in (0, 1):
            raise ConfigError(f"rollout.max_staleness must be 0 or 1 (one update stale, veRL's one-step-off), "
                              f"got {self.max_staleness}")
        if self.asynchronous and self.engine != "vllm":
            raise ConfigError("rollout.async=true needs rollout.engine=vllm: the hf engine samples with the very "
                              "weights the update is changing")
        check_tools(self)
        check_recompute(self)
        if self.asynchronous and self.vllm_enable_sleep_mode:
            raise ConfigError("rollout.async=true samples while the update trains, so the engine cannot sleep "
                              "then: set rollout.vllm_enable_sleep_mode=false or rollout.async=false")

    @property
    def uses_tools(self) -> bool:
        """Whether episodes are multi-turn: tools or an environment are set."""
        return bool(self.tools) or self.environment_factory is not None

    @property
    def importance_sampling(self) -> bool:
        """Whether the truncated importance weights multiply the advantages (the correction resolved)."""
        if self.vllm_importance_sampling_correction is None:
            return self.asynchronous
        return self.vllm_importance_sampling_correction


def _spec_shape(key: str, spec, what: str) -> None:
    """A `module:name` or `path/file.py:name` string; the import itself is checked before the policy loads."""
    where, sep, name = str(spec).rpartition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not where.strip() or not name.strip():
        raise ConfigError(f"{key}={spec!r} is not {what}: write module:{what.split()[0]} or path/file.py:"
                          f"{what.split()[0]}")


def check_recompute(r: RolloutConfig) -> None:
    """rollout.recompute_logprobs=false needs log-probs from the weights the update starts from, and nothing
    that compares them with the trainer's."""
    if r.recompute_logprobs:
        return
    fix = "or rollout.recompute_logprobs=true"
    if r.engine != "vllm":
        raise ConfigError(f"rollout.recompute_logprobs=false takes the engine's log-probs, which rollout.engine=hf "
                          f"does not return (it needs the trainer's forward): set rollout.engine=vllm, {fix}")
    if r.asynchronous:
        raise ConfigError("rollout.recompute_logprobs=false needs rollout.async=false: an overlapped batch is one "
                          f"update stale and its importance weights need the trainer's log-probs: {fix}")
    if r.importance_sampling:
        raise ConfigError("rollout.recompute_logprobs=false leaves no trainer log-probs to weigh the engine's "
                          f"against: set rollout.vllm_importance_sampling_correction=false, {fix}")


def check_tools(r: RolloutConfig) -> None:
    """The tool settings' shape (TRL's names); importing them is preflight's (engines/tool_specs.py)."""
    _choice("rollout", "tool_isolation", r.tool_isolation, TOOL_ISOLATION)
    for spec in r.tools:
        _spec_shape("rollout.tools entry", spec, "function")
    factory = r.environment_factory
    if isinstance(factory, dict):
        if not factory:
            raise ConfigError("rollout.environment_factory is an empty mapping: give {name: module:Class, ...} "
                              "or one module:Class")
        for name, spec in factory.items():
            _spec_shape(f"rollout.environment_factory.{name}", spec, "Class")
    elif factory is not None:
        _spec_shape("rollout.environment_factory", factory, "Class")
    if r.max_tool_calling_iterations is not None and r.max_tool_calling_iterations < 0:
        raise ConfigError(f"rollout.max_tool_calling_iterations must be >= 0 or null (no limit), "
                          f"got {r.max_tool_calling_iterations}")
    finite("rollout.tool_timeout", r.tool_timeout)
    if r.tool_timeout <= 0:
        raise ConfigError(f"rollout.tool_timeout must be > 0 seconds, got {r.tool_timeout}")
    if r.uses_tools and r.asynchronous:
        raise ConfigError("rollout.async=true does not run tools yet: set rollout.async=false, or leave out "
                          "rollout.tools and rollout.environment_factory")


# The names of rl/estimators.ESTIMATORS and what each declares there (config imports no torch;
# tests/test_layout.py pins these tuples to the estimators' own declarations).
ESTIMATORS = ("gae", "grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
CRITIC_ESTIMATORS = ("gae",)  # need a value function
GROUP_ESTIMATORS = ("grpo", "rloo", "reinforce_pp_baseline")  # need num_generations >= 2
# The modes rl/core.aggregate_loss accepts (its LOSS_AGG_MODES; pinned by tests/test_layout.py).
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
        return self.advantage_estimator in CRITIC_ESTIMATORS

    def check_batch(self, ppo) -> None:
        """A mini-batch must hold whole groups, so a group never straddles processes or mini-batches."""
        mini_batch = ppo.local_batch_size // ppo.num_mini_batches
        if mini_batch % self.group_size:
            raise ConfigError(f"algorithm.num_generations={self.group_size} must divide the mini-batch of "
                              f"{mini_batch} episodes (ppo.per_device_train_batch_size x "
                              "ppo.gradient_accumulation_steps): change one of them")


def num_updates(ppo: PPOConfig, world_size: int) -> int:
    """Updates of a run: ppo.total_episodes over the global batch (local batch x processes), rounded up."""
    return math.ceil(ppo.total_episodes / (ppo.local_batch_size * world_size))


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
    # A pipeline (rlhf-app pipeline): its stages in order, each in output_dir/<stage>; empty: one run.
    stages: list[str] = field(default_factory=list)  # e.g. [sft, rm, ppo] (config/pipeline.py)
    per_stage: dict[str, Any] = field(default_factory=dict)  # keys of one stage: per_stage.ppo.model.name_or_path=stage:sft
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    # The stages before PPO (`rlhf-app sft`, `rlhf-app rm`, `rlhf-app pairs`); None: not set (left out of config.yaml).
    sft: Optional[SFTSection] = None
    rm: Optional[RMSection] = None
    pairs: Optional[PairsSection] = None  # `rlhf-app pairs`: preference pairs from a policy (stages/pairs.py)

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
        if not self.rollout.recompute_logprobs and self.algorithm.uses_critic:
            raise ConfigError("rollout.recompute_logprobs=false skips the forward that also gives the critic's values "
                              f"(algorithm.advantage_estimator={self.algorithm.advantage_estimator}): pick grpo, rloo "
                              "or reinforce_pp, or set rollout.recompute_logprobs=true")
        if self.eval_steps < 0:
            raise ConfigError(f"eval_steps must be >= 0 (0: never), got {self.eval_steps}")
        tree = {k: v for k, v in asdict(self).items() if k != "per_stage"}
        check_stages(list(self.stages), dict(self.per_stage), tree)
