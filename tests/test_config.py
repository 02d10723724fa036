"""Config layering, every shipped recipe, and the one-line errors of the command line."""

import pytest

from rlhf_app.cli.main import main
from rlhf_app.config import ConfigError, available_recipes, load_config, to_yaml


@pytest.mark.parametrize("recipe", available_recipes())
def test_every_shipped_recipe_loads_and_validates(recipe, tmp_path):
    cfg = load_config([f"recipe={recipe}"])
    assert cfg.recipe == recipe
    assert cfg.ppo.local_batch_size % cfg.ppo.num_mini_batches == 0
    # The resolved config written into a run folder loads back to the same config.
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    again = load_config([f"recipe={saved}"])
    again.recipe = cfg.recipe
    assert again == cfg


def test_precedence_defaults_then_recipe_then_cli():
    default = load_config([])
    tiny = load_config(["recipe=tiny"])
    assert default.ppo.learning_rate == 3e-6  # dataclass default
    assert tiny.ppo.learning_rate == 3e-3  # recipe delta
    assert tiny.ppo.cliprange == default.ppo.cliprange  # untouched by the recipe
    cli = load_config(["recipe=tiny", "ppo.learning_rate=1e-5", "report_to=[wandb,tensorboard]"])
    assert cli.ppo.learning_rate == 1e-5
    assert cli.report_to == ["wandb", "tensorboard"]
    assert load_config(["recipe=tiny", "ppo.missing_eos_penalty=1.0"]).ppo.missing_eos_penalty == 1.0
    assert isinstance(load_config(["ppo.missing_eos_penalty=2"]).ppo.missing_eos_penalty, float)


@pytest.mark.parametrize("argv, message", [
    (["ppo.kl_coeff=0.1"], "unknown key ppo.kl_coeff; did you mean ppo.kl_coef?"),
    (["kl_coeff=0.1"], "unknown key kl_coeff; did you mean kl_coef?"),
    (["--kl_coeff", "0.1"], "unknown key --kl_coeff; did you mean --kl_coef?"),
    (["--ppo.kl_coeff=0.1"], "unknown key --ppo.kl_coeff; did you mean --ppo.kl_coef?"),
    (["model.kl_coef=0.1"], "did you mean ppo.kl_coef?"),
    (["--learning_rate"], "--learning_rate needs a value: write --learning_rate VALUE or learning_rate=VALUE"),
    (["-lr", "1"], "-lr is not an option: write --key value or key=value"),
    (["--logging_steps", "0"], "logging_steps must be >= 1"),
    (["learning_rate=1e-5", "ppo.learning_rate=1e-4"],
     "learning_rate=1e-05 (TRL's name for ppo.learning_rate) disagrees with ppo.learning_rate=0.0001"),
    (["--use_peft", "peft.enabled=false"], "use_peft=True (TRL's name for peft.enabled) disagrees with peft.enabled=False"),
    (["num_sample_generations=4", "sample_every=3"], "set sample_every (updates between samples) or TRL's"),
    (["ppo.learning_rate=fast"], "bad value for ppo.learning_rate: expected float, got 'fast'"),
    (["ppo.num_ppo_epochs=1.5"], "expected int"),
    (["peft.enabled=maybe"], "expected bool"),
    (["ppo.kl_estimator=k2"], "ppo.kl_estimator='k2' is not one of k1, k3"),
    (["recipe=tinyy"], "unknown recipe 'tinyy': did you mean tiny? available:"),
    (["recipe=missing/file.yaml"], "recipe file missing/file.yaml does not exist"),
    (["ppo.learning_rate"], "has no '=': write key=value or --key value"),
    (["ppo=1"], "ppo is a section"),
    (["ppo.total_episodes=0"], "ppo.total_episodes must be >= 1"),
    (["ppo.lr_scheduler_type=cosin"], "ppo.lr_scheduler_type='cosin' is not one of linear, cosine,"),
    (["report_to=mlflow"], "report_to='mlflow' is not one of none, wandb, tensorboard, trackio"),
])
def test_errors_name_the_fix(argv, message):
    with pytest.raises(ConfigError) as err:
        load_config(argv)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arg, message", [
    ("ppo.cliprange=-1", "ppo.cliprange=-1.0 is out of range: set ppo.cliprange > 0"),
    ("ppo.cliprange_value=0", "set ppo.cliprange_value > 0"),
    ("ppo.gamma=2", "ppo.gamma=2.0 is out of range: set ppo.gamma in [0, 1]"),
    ("ppo.lam=5", "set ppo.lam in [0, 1]"),
    ("ppo.kl_coef=-1", "set ppo.kl_coef >= 0"),
    ("ppo.learning_rate=0", "set ppo.learning_rate > 0"),
    ("ppo.top_p=0", "set ppo.top_p in (0, 1]"),
    ("ppo.top_p=1.5", "set ppo.top_p in (0, 1]"),
    ("ppo.top_k=-1", "set ppo.top_k >= 0"),
    ("ppo.warmup_steps=-1", "set ppo.warmup_steps >= 0"),
    ("ppo.weight_decay=-0.1", "set ppo.weight_decay >= 0"),
    ("ppo.max_grad_norm=-1", "set ppo.max_grad_norm >= 0"),
    ("ppo.local_rollout_forward_batch_size=0", "set ppo.local_rollout_forward_batch_size >= 1"),
    ("ppo.missing_eos_penalty=-1", "set ppo.missing_eos_penalty >= 0"),
    ("ppo.kl_target=0", "set ppo.kl_target > 0"),
    ("ppo.kl_horizon=0", "set ppo.kl_horizon >= 1"),
    ("ppo.reward_scale=0", "set ppo.reward_scale > 0"),
    ("ppo.reward_clip=0", "set ppo.reward_clip > 0"),
    ("ppo.vf_coef=-1", "set ppo.vf_coef >= 0"),
    ("ppo.ent_coef=-0.1", "set ppo.ent_coef >= 0"),
    ("ppo.stop_token_id=-2", "set ppo.stop_token_id >= 0"),
    ("ppo.temperature=0", "ppo.temperature must be > 0"),
    ("peft.r=0", "set peft.r >= 1"),
    ("peft.lora_alpha=0", "set peft.lora_alpha > 0"),
    ("peft.lora_dropout=1", "set peft.lora_dropout in [0, 1)"),
    ("seed=-1", "set seed >= 0"),
    ("save_steps=-1", "set save_steps >= 0"),
    ("save_total_limit=-1", "set save_total_limit >= 0"),
    ("sample_every=-1", "set sample_every >= 0"),
    ("num_threads=-1", "set num_threads >= 0"),
])
def test_out_of_range_values_are_refused_in_one_line(arg, message):
    with pytest.raises(ConfigError) as err:
        load_config(["recipe=tiny", arg])
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("arg", ["ppo.top_k=50", "ppo.top_p=0.9"])
def test_truncated_sampling_is_refused(arg):
    with pytest.raises(ConfigError, match="truncate sampling, but PPO's log-probs and KL need the full softmax: "
                                          "set ppo.top_k=0 ppo.top_p=1.0"):
        load_config(["recipe=tiny", arg])


def test_in_range_edges_are_accepted():
    cfg = load_config(["recipe=tiny", "ppo.gamma=0", "ppo.lam=1", "ppo.kl_coef=0", "ppo.top_p=1", "ppo.top_k=0",
                       "ppo.max_grad_norm=0", "ppo.missing_eos_penalty=0"])
    assert (cfg.ppo.gamma, cfg.ppo.lam, cfg.ppo.kl_coef) == (0.0, 1.0, 0.0)


@pytest.mark.parametrize("text, where", [("ppo:\n  learning_rate: [1\n  cliprange: 2\n", "line 3, column 12"),
                                         ("ppo:\n\tlearning_rate: 1\n", "line 2, column 1")])
def test_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path, text, where):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config([f"recipe={recipe}"])
    assert str(err.value).startswith(f"YAML syntax error in {recipe}, {where}: ")
    assert "\n" not in str(err.value)


def test_unknown_key_inside_a_recipe_file(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("ppo:\n  cliprang: 0.1\n")
    with pytest.raises(ConfigError, match=r"recipe mine.yaml: unknown key ppo.cliprang; did you mean ppo.cliprange\?"):
        load_config([f"recipe={recipe}"])


SAME_AS_NESTED = [  # TRL's flat name, its nested key here, a value that differs from the default
    ("model_name_or_path", "model.name_or_path", "someone/model"), ("model_revision", "model.revision", "v2"),
    ("dtype", "model.dtype", "bfloat16"), ("use_peft", "peft.enabled", "true"), ("lora_r", "peft.r", "4"),
    ("lora_alpha", "peft.lora_alpha", "8"), ("lora_dropout", "peft.lora_dropout", "0.1"),
    ("lora_target_modules", "peft.target_modules", "[c_attn,c_proj]"), ("push_to_hub", "hub.push", "true"),
    ("hub_model_id", "hub.repo_id", "alice/ppo"), ("hub_private_repo", "hub.private", "true"),
    ("resume_from_checkpoint", "resume_from", "auto"), ("learning_rate", "ppo.learning_rate", "1e-5"),
    ("kl_coef", "ppo.kl_coef", "0.2"), ("per_device_train_batch_size", "ppo.per_device_train_batch_size", "4"),
    ("run_name", "run_name", "first"), ("logging_steps", "logging_steps", "5"),
    ("sft_model_path", "model.name_or_path", "someone/sft"), ("value_model_path", "model.value_model_path", "a/b"),
    ("torch_dtype", "model.dtype", "float16"),
]


@pytest.mark.parametrize("alias, key, value", SAME_AS_NESTED)
def test_every_flag_form_and_trl_name_gives_the_nested_config(alias, key, value):
    nested = load_config(["recipe=tiny", f"{key}={value}"])
    assert nested != load_config(["recipe=tiny"])  # the value really changes something
    values = value.strip("[]").split(",")
    for argv in ([f"{alias}={value}"], [f"--{alias}={value}"], [f"--{alias}", *values], [f"--{key}", *values],
                 [f"--{key}={value}"], [f"--{alias.replace('_', '-')}", *values]):
        assert load_config(["--config", "tiny", *argv]) == nested, argv


def test_config_flag_is_recipe_and_bool_and_list_flags_read_like_trl(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("learning_rate: 0.25\nlora_r: 4\nmodel:\n  dtype: bfloat16\n")  # TRL's names in a recipe
    cfg = load_config(["--config", str(recipe)])
    assert cfg == load_config([f"recipe={recipe}"])
    assert (cfg.ppo.learning_rate, cfg.peft.r, cfg.model.dtype) == (0.25, 4, "bfloat16")
    flags = load_config(["--use_peft", "--lora_target_modules", "c_attn", "c_proj", "--whiten_rewards", "false",
                         "--gradient_checkpointing", "kl_coef=0.5", "--report_to", "tensorboard"])
    assert flags.peft.enabled and flags.peft.target_modules == ["c_attn", "c_proj"] and flags.ppo.kl_coef == 0.5
    assert not flags.ppo.whiten_rewards
    assert flags.model.gradient_checkpointing and flags.report_to == ["tensorboard"]
    assert load_config(["--reward.format_score", "-1.0"]).reward.format_score == -1.0  # a negative value, no flag
    conflict = tmp_path / "conflict.yaml"
    conflict.write_text("kl_coef: 0.1\nppo:\n  kl_coef: 0.2\n")
    with pytest.raises(ConfigError, match=r"^recipe conflict.yaml: kl_coef=0.1 \(TRL's name for ppo.kl_coef\) "
                                          r"disagrees with ppo.kl_coef=0.2: set only one of them$"):
        load_config([f"recipe={conflict}"])
    # A recipe's TRL name, then the command line's nested key: ordinary precedence, no conflict.
    assert load_config([f"recipe={recipe}", "ppo.learning_rate=0.5"]).ppo.learning_rate == 0.5


def test_every_alias_names_a_real_key():
    """Helpers add TRL names to the one table: each must land on a field of the config."""
    from omegaconf import OmegaConf

    from rlhf_app.config import ALIASES, TrainConfig
    default = OmegaConf.structured(TrainConfig)
    for alias, key in ALIASES.items():
        assert OmegaConf.select(default, key, default="<none>") != "<none>", (alias, key)
        assert "." not in alias and alias not in TrainConfig.__dataclass_fields__, alias


def test_report_to_all_and_num_sample_generations(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: real(name, *a) if name == "tensorboard" else
                        None if name in ("wandb", "trackio") else real(name, *a))
    assert load_config(["--report_to", "all"]).report_to == ["tensorboard"]
    # tiny: 1280 episodes / 32 per update = 40 updates; TRL samples every 40 // 4 = 10 updates
    assert load_config(["recipe=tiny", "num_sample_generations=4"]).sample_every == 10
    assert load_config(["recipe=tiny", "--total_episodes", "2560", "--num_sample_generations", "4"]).sample_every == 20
    assert load_config(["recipe=tiny", "num_sample_generations=0"]).sample_every == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert load_config(["recipe=tiny", "num_sample_generations=4"]).sample_every == 5


def _train(capsys, *args) -> tuple[int | str | None, str]:
    """`rlhf-app train ARGS` in this process: (the exit code, or None when it returned; what it printed)."""
    try:
        main(["train", *args])
        code = None
    except SystemExit as exit_:
        code = exit_.code
    printed = capsys.readouterr()
    return code, printed.out + printed.err


def test_print_config_prints_resolved_yaml_and_exits(capsys):
    code, out = _train(capsys, "recipe=tiny", "ppo.kl_coef=0.25", "print_config=true")
    assert code is None
    assert "kl_coef: 0.25" in out
    assert "learning_rate: 0.003" in out
    # TRL's habit prints the same nested config
    assert _train(capsys, "--config", "tiny", "--kl_coef", "0.25", "--print_config") == (None, out)
    _, trl = _train(capsys, "--config", "tiny", "--model_name_or_path", "x/y", "--use_peft", "--print_config")
    assert "  name_or_path: x/y\n" in trl and "\npeft:\n  enabled: true\n" in trl
    assert "model_name_or_path" not in trl and "use_peft" not in trl


def test_cli_error_is_one_line_without_traceback(capsys):
    code, _ = _train(capsys, "recipe=tiny", "ppo.kl_coeff=1")
    assert code == "error: command line: unknown key ppo.kl_coeff; did you mean ppo.kl_coef?"


def test_push_that_cannot_work_fails_before_training(tmp_path, capsys):
    code, out = _train(capsys, "recipe=tiny", "hub.push=true", "hub.repo_id=someone/tiny-ppo",
                       f"output_dir={tmp_path / 'run'}")
    assert code.startswith("error: the Hugging Face Hub cannot be reached") and "\n" not in code
    assert "PPO" not in out  # no update ran
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("recipe", ["imdb", "gsm8k"])
def test_unreachable_hub_names_the_offline_twin(recipe, tmp_path, capsys):
    code, _ = _train(capsys, f"recipe={recipe}", f"output_dir={tmp_path / 'run'}")  # conftest sets HF_HUB_OFFLINE=1
    assert code.startswith("error: cannot load the policy") and code.endswith(f"run recipe={recipe}-offline")
    assert "\n" not in code


def test_a_reward_returning_nan_stops_the_run_in_one_line(tmp_path, capsys):
    reward = tmp_path / "bad.py"
    reward.write_text("def nan_reward(prompts, completions, **columns):\n"
                      "    return [float('nan')] * len(completions)\n")
    code, _ = _train(capsys, "recipe=tiny", f"output_dir={tmp_path / 'run'}", "reward.name=python",
                     f"reward.function={reward}:nan_reward")
    assert code.startswith("error: reward 'python' returned nan for completion 0") and "\n" not in code


def test_flat_keys_of_a_dict_and_of_an_omegaconf_node():
    from omegaconf import MISSING, OmegaConf

    from rlhf_app.config import flat_keys

    tree = {"seed": 0, "ppo": {"kl_coef": 0.05, "stop_token": None}, "model": {"init_kwargs": {}}, "report_to": ["none"]}
    assert flat_keys(tree) == {"seed": 0, "ppo.kl_coef": 0.05, "ppo.stop_token": None, "report_to": ["none"]}
    node = OmegaConf.create({"a": {"b": 1, "c": "???"}})
    assert flat_keys(node) == {"a.b": 1, "a.c": MISSING}


def test_network_env_sets_telemetry_always_and_the_offline_switches_when_asked():
    from rlhf_app.offline import OFFLINE_ENV, set_network_env

    online, offline = {}, {"HF_HUB_OFFLINE": "0"}
    set_network_env(False, online)
    assert online == {"HF_HUB_DISABLE_TELEMETRY": "1"}
    set_network_env(True, offline)
    assert offline == {**OFFLINE_ENV, "HF_HUB_OFFLINE": "0"}  # a value already set wins
    assert OFFLINE_ENV["HF_DATASETS_OFFLINE"] == OFFLINE_ENV["TRANSFORMERS_OFFLINE"] == "1"


def test_a_value_set_in_one_call_never_reaches_the_next():
    # load_config keeps its defaults layer for the process (loading.py, _defaults): a merge must not write into it.
    plain = load_config(["recipe=tiny"])
    changed = load_config(["recipe=tiny", "ppo.kl_coef=0.3", "peft.enabled=true", "sft.learning_rate=0.5"])
    assert (changed.ppo.kl_coef, changed.peft.enabled, changed.sft.learning_rate) == (0.3, True, 0.5)
    assert load_config(["recipe=tiny"]) == plain and plain.ppo.kl_coef != 0.3 and plain.sft is None
    stage = load_config(["recipe=tiny", "learning_rate=0.25"], stage="sft")
    assert stage.sft.learning_rate == 0.25 and load_config([], stage="sft").sft.learning_rate != 0.25


NO_RECOMPUTE = ["rollout.recompute_logprobs=false"]
GRPO = ["algorithm.advantage_estimator=grpo", "algorithm.num_generations=4"]


@pytest.mark.parametrize("args, message", [
    ([*GRPO], r"^rollout.recompute_logprobs=false takes the engine's log-probs, which rollout.engine=hf does not "
              r"return \(it needs the trainer's forward\): set rollout.engine=vllm, or rollout.recompute_logprobs=true$"),
    ([*GRPO, "rollout.engine=vllm", "rollout.async=true"], r"^rollout.recompute_logprobs=false needs rollout.async=false"),
    ([*GRPO, "rollout.engine=vllm", "rollout.vllm_importance_sampling_correction=true"],
     r"^rollout.recompute_logprobs=false leaves no trainer log-probs to weigh the engine's against: set "
     r"rollout.vllm_importance_sampling_correction=false, or rollout.recompute_logprobs=true$"),
    (["rollout.engine=vllm"], r"^rollout.recompute_logprobs=false skips the forward that also gives the critic's "
                              r"values \(algorithm.advantage_estimator=gae\): pick grpo"),
])
def test_the_engines_logprobs_only_where_they_are_the_update_starts_weights(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(["recipe=tiny", *NO_RECOMPUTE, *args])
    cfg = load_config(["recipe=tiny", *NO_RECOMPUTE, *GRPO, "rollout.engine=vllm"])
    assert cfg.rollout.recompute_logprobs is False and load_config(["recipe=tiny"]).rollout.recompute_logprobs
