"""Config layering, every shipped recipe, and the one-line errors of the command line."""

import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_app.config import ConfigError, available_recipes, load_config, to_yaml

ROOT = Path(__file__).resolve().parent.parent


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
    (["kl_coef=0.1"], "did you mean ppo.kl_coef?"),
    (["ppo.learning_rate=fast"], "bad value for ppo.learning_rate: expected float, got 'fast'"),
    (["ppo.num_ppo_epochs=1.5"], "expected int"),
    (["peft.enabled=maybe"], "expected bool"),
    (["ppo.kl_estimator=k2"], "ppo.kl_estimator='k2' is not one of k1, k3"),
    (["recipe=tinyy"], "unknown recipe 'tinyy': did you mean tiny? available:"),
    (["recipe=missing/file.yaml"], "recipe file missing/file.yaml does not exist"),
    (["--learning_rate=1e-5"], "arguments are key=value, not --learning_rate"),
    (["ppo.learning_rate"], "has no '='"),
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


def test_unknown_key_inside_a_recipe_file(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("ppo:\n  cliprang: 0.1\n")
    with pytest.raises(ConfigError, match=r"recipe mine.yaml: unknown key ppo.cliprang; did you mean ppo.cliprange\?"):
        load_config([f"recipe={recipe}"])


def _train(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_print_config_prints_resolved_yaml_and_exits():
    proc = _train("recipe=tiny", "ppo.kl_coef=0.25", "print_config=true")
    assert proc.returncode == 0, proc.stderr
    assert "kl_coef: 0.25" in proc.stdout
    assert "learning_rate: 0.003" in proc.stdout


def test_cli_error_is_one_line_without_traceback():
    proc = _train("recipe=tiny", "ppo.kl_coeff=1")
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: command line: unknown key ppo.kl_coeff; did you mean ppo.kl_coef?"


def test_push_that_cannot_work_fails_before_training():
    proc = _train("recipe=tiny", "hub.push=true", "hub.repo_id=someone/tiny-ppo", "output_dir=runs/never")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: the Hugging Face Hub cannot be reached")
    assert "PPO" not in proc.stderr  # no update ran


@pytest.mark.parametrize("recipe", ["imdb", "gsm8k"])
def test_unreachable_hub_names_the_offline_twin(recipe):
    proc = _train(f"recipe={recipe}", "output_dir=runs/never")  # conftest sets HF_HUB_OFFLINE=1
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot load the policy") and last.endswith(f"run recipe={recipe}-offline")


def test_a_reward_returning_nan_stops_the_run_in_one_line(tmp_path):
    reward = tmp_path / "bad.py"
    reward.write_text("def nan_reward(prompts, completions, **columns):\n"
                      "    return [float('nan')] * len(completions)\n")
    proc = _train("recipe=tiny", f"output_dir={tmp_path / 'run'}", "reward.name=python",
                  f"reward.function={reward}:nan_reward")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: reward 'python' returned nan for completion 0")
