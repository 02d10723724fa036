"""The `rlhf-app` console command: its entry points, every subcommand on a real tiny run, and `env` offline.

Commands run in this process (`main([...])`); one smoke test starts the real entry points."""

import os
import subprocess
import sys
import tomllib
from importlib import import_module
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from rlhf_app.cli.main import main
from rlhf_app.preflight import cpu_has_bf16

ROOT = Path(__file__).resolve().parent.parent
# Imported by every Python started with this folder on its path: any socket connection fails loudly.
NO_NETWORK = '''import socket
def _refuse(self, *args, **kwargs):
    raise OSError("network call attempted: " + repr(args))
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
'''


def rlhf_app(capsys, *args) -> tuple[int | str | None, str]:
    """`rlhf-app ARGS` in this process: (the exit code, or None when it returned; its stdout)."""
    try:
        main(list(args))
        code = None
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().out


def test_console_script_points_at_the_dispatcher():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["rlhf-app"].split(":")
    assert getattr(import_module(module), func) is main
    assert set(import_module(module).COMMANDS) == {"train", "sft", "rm", "pairs", "pipeline", "eval", "push", "report",
                                                   "label", "env"}


@pytest.mark.slow  # a fresh interpreter that imports every package
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
    if not torch.cuda.is_available():  # whether bf16=true is fast here, which a slow run's report needs
        assert ("; bfloat16 in hardware)" if cpu_has_bf16() else "; bfloat16 emulated: no AVX-512-BF16 or AMX") in out
    assert "- Accelerate config: \n  - compute_environment: LOCAL_MACHINE\n  - distributed_type: MULTI_CPU" in out
    assert "network call attempted" not in proc.stderr


def test_env_names_a_missing_package():
    from rlhf_app.cli.env import package_version

    assert package_version("surely_not_a_package_here") == "not installed"
    assert package_version("torch") == version("torch")


def test_entry_points_start_the_dispatcher():
    """The real entry points, as a user starts them: `python -m rlhf_app` and the scripts."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for argv in (["-m", "rlhf_app", "train"], [str(ROOT / "scripts" / "train.py")]):
        proc = subprocess.run([sys.executable, *argv, "--config", "tiny", "--kl_coef", "0.25", "--print_config"],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
        assert proc.returncode == 0 and "  kl_coef: 0.25\n" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "rlhf_app", "trian"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)
    assert proc.returncode == 1 and proc.stderr.startswith("error: unknown command 'trian'"), proc.stderr
    for script in ("eval", "push", "report"):  # each script runs its command (here: its usage error)
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py")], capture_output=True,
                              text=True, cwd=ROOT, env=env, timeout=300)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "run_dir" in proc.stderr, proc.stderr


def test_unknown_command_and_help(capsys):
    assert rlhf_app(capsys, "trian") == ("error: unknown command 'trian': did you mean train? "
                                         "commands: train, sft, rm, pairs, pipeline, eval, push, report, label, env (rlhf-app --help)", "")
    assert "rlhf-app train" in rlhf_app(capsys, "--help")[1]
    code, train_help = rlhf_app(capsys, "train", "--help")
    assert code is None and "--config NAME_OR_FILE" in train_help
    assert "  --model_name_or_path                 model.name_or_path\n" in train_help
    assert rlhf_app(capsys, "env", "x") == ("usage: rlhf-app env (takes no arguments)", "")


def test_every_command_ends_a_user_error_in_one_line(capsys, tmp_path):
    """The one place: each command's UserError is `error: <message>` and exit status 1 (SystemExit(str))."""
    for argv, start in ((["train", "recipe=nope"], "error: unknown recipe 'nope'"),
                        (["eval", f"run_dir={tmp_path}"], f"error: {tmp_path / 'config.yaml'} does not exist"),
                        (["push", "hub.dry_run=true"], "error: pass the run folder once"),
                        (["report", f"run_dir={tmp_path / 'nope'}"], "error: run_dir"),
                        (["report", f"run_dir={tmp_path}"], "error: "),
                        (["report", "--run_dir"], "error: --run_dir needs a value")):
        code, _ = rlhf_app(capsys, *argv)
        assert isinstance(code, str) and code.startswith(start) and "\n" not in code, (argv, code)


def test_a_stop_signal_and_ctrl_c_map_to_their_exit_codes(monkeypatch, capsys):
    import signal

    from rlhf_app.cli import main as dispatcher
    from rlhf_app.run_dir.signals import Stopped

    def stopped(argv):
        raise Stopped(signal.SIGTERM, "runs/x/checkpoint-3")

    def interrupted(argv):
        raise KeyboardInterrupt

    for command, code in ((stopped, 143), (interrupted, 130)):
        monkeypatch.setitem(dispatcher.COMMANDS, "train", command)
        assert rlhf_app(capsys, "train") == (code, "")


def test_eval_report_push_on_a_finished_tiny_run(tiny_run_copy, capsys):
    run = tiny_run_copy
    (run / "report.html").unlink()  # the run wrote one: the report command must write it again
    assert not (run / "eval-final.json").exists() and not (run / "hub_upload").exists()
    code, out = rlhf_app(capsys, "eval", "--run_dir", str(run), "--num", "4", "ppo.response_length=8")
    assert code is None
    assert "final on 4 eval prompts: mean score" in out and (run / "eval-final.json").is_file()
    code, out = rlhf_app(capsys, "report", f"run_dir={run}")
    assert code is None and out == f"report written to {run / 'report.html'}\n"
    assert (run / "report.html").is_file()
    code, out = rlhf_app(capsys, "push", "--run_dir", str(run), "--hub_model_id", "alice/tiny", "--hub.dry_run", "true")
    assert code is None
    assert f"dry run: would upload {run / 'hub_upload'}" in out and "alice/tiny" in out
    code, _ = rlhf_app(capsys, "push", f"run_dir={run}", "--learning_rate", "1")
    assert code.startswith("error: learning_rate cannot change after training")
