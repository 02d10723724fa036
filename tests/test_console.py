"""The `rlhf-app` console command: its entry point, every subcommand on a real tiny run, and `env` offline."""

import os
import subprocess
import sys
import tomllib
from importlib import import_module
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Imported by every Python started with this folder on its path: any socket connection fails loudly.
NO_NETWORK = '''import socket
def _refuse(self, *args, **kwargs):
    raise OSError("network call attempted: " + repr(args))
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
'''


def rlhf_app(*args, env=None, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "rlhf_app", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=600)


def test_console_script_points_at_the_dispatcher():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["rlhf-app"].split(":")
    main = getattr(import_module(module), func)
    assert set(import_module(module).COMMANDS) == {"train", "eval", "push", "report", "env"}
    assert callable(main)


def test_env_prints_versions_devices_and_accelerate_config_offline(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(NO_NETWORK)
    (tmp_path / "hf" / "accelerate").mkdir(parents=True)
    (tmp_path / "hf" / "accelerate" / "default_config.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_processes: 2\nuse_cpu: true\n")
    proc = subprocess.run([sys.executable, "-m", "rlhf_app", "env"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}",
                               "HF_HOME": str(tmp_path / "hf")}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"- Python: {sys.version.split()[0]}\n" in out
    for name in ("torch", "transformers", "trl", "accelerate", "peft", "datasets"):
        assert f"- {name}: {version(name)}\n" in out
    assert "- vllm: " in out and "- bitsandbytes: " in out  # a version, or "not installed"
    assert "\n- Devices: " in out
    assert "- Accelerate config: \n  - compute_environment: LOCAL_MACHINE\n  - distributed_type: MULTI_CPU" in out
    assert "network call attempted" not in proc.stderr


def test_env_names_a_missing_package():
    from rlhf_app.cli.env import package_version

    assert package_version("surely_not_a_package_here") == "not installed"
    assert package_version("torch") == version("torch")


def test_unknown_command_and_help():
    proc = rlhf_app("trian")
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: unknown command 'trian': did you mean train? "
                                   "commands: train, eval, push, report, env (rlhf-app --help)")
    assert "rlhf-app train" in rlhf_app("--help").stdout
    train_help = rlhf_app("train", "--help")
    assert train_help.returncode == 0 and "--config NAME_OR_FILE" in train_help.stdout
    assert "  --model_name_or_path                 model.name_or_path\n" in train_help.stdout


def test_train_eval_report_push_on_a_tiny_run(tmp_path):
    run = tmp_path / "run"
    proc = rlhf_app("train", "--config", "tiny", "--output_dir", str(run), "--total_episodes", "64",
                    "--eval_before_after", "false", "--sample_every", "0")
    assert proc.returncode == 0, proc.stderr
    assert (run / "final" / "model.safetensors").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) == 2
    proc = rlhf_app("eval", "--run_dir", str(run), "--num", "4", "ppo.response_length=8")
    assert proc.returncode == 0, proc.stderr
    assert "final on 4 eval prompts: mean score" in proc.stdout and (run / "eval-final.json").is_file()
    proc = rlhf_app("report", f"run_dir={run}")
    assert proc.returncode == 0, proc.stderr
    assert (run / "report.html").is_file()
    proc = rlhf_app("push", "--run_dir", str(run), "--hub_model_id", "alice/tiny", "--hub.dry_run", "true")
    assert proc.returncode == 0, proc.stderr
    assert f"dry run: would upload {run / 'hub_upload'}" in proc.stdout and "alice/tiny" in proc.stdout
    proc = rlhf_app("push", f"run_dir={run}", "--learning_rate", "1")
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: learning_rate cannot change after training")
