"""bench/gpu_check.py without a GPU: its arguments, its arithmetic (MFU by hand), its JSON, the
script's syntax, every step's settings, and the one-line refusal on a machine without CUDA."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import warm

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
import gpu_check  # noqa: E402
import gpu_figures  # noqa: E402

from rlhf_app.config import ConfigError, load_config  # noqa: E402


def test_mfu_by_hand():
    # 135M parameters, 32 episodes x 100 tokens, 4 epochs: 2 (sampling) + 2x2 (no-grad forwards) + 6x4 = 30 N per token
    flops = gpu_figures.update_flops(135e6, 3200, epochs=4)
    assert flops == pytest.approx(135e6 * 3200 * 30) == pytest.approx(1.296e13)
    # 2 s per update on one H100 SXM (989.4 TFLOP/s): 6.48e12 FLOP/s / 9.894e14 = 0.655 %
    assert gpu_figures.mfu(flops, 2.0, 989.4) == pytest.approx(6.48e12 / 9.894e14)
    assert gpu_figures.mfu(flops, 2.0, 989.4, processes=2) == pytest.approx(6.48e12 / 9.894e14 / 2)
    assert gpu_figures.mfu(flops, 2.0, None) is None  # unknown chip: no figure made up


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA H200", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0), ("Tesla T4", None),
                                        ("Tesla V100-SXM2-16GB", None), ("Some Future GPU", None)])
def test_bf16_peak_by_device_name(name, peak):
    assert gpu_figures.peak_tflops(name) == peak


def test_run_figures_and_resume_comparison_from_metrics(tmp_path):
    rows = [{"step": i + 1, "objective/scores": 0.1 * i, "time/update_s": s, "perf/tokens_per_s": 1000 / s,
             "time/generate_s": s / 2, "time/train_s": s / 4} for i, s in enumerate([9.0, 2.0, 4.0, 3.0])]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = gpu_figures.run_figures(tmp_path, n_params=1e6, epochs=1, peak=100.0)
    # the first update (compiling) left out: median of 2, 4, 3 s; 1000 tokens per update
    assert fig["updates"] == 4 and fig["s_per_update"] == 3.0 and fig["tokens_per_s"] == pytest.approx(1000 / 3)
    assert fig["mfu"] == pytest.approx(1e6 * 1000 * (2 + 4 + 6) / 3.0 / 100e12)
    other = [dict(r, **{"time/update_s": 1.0}) for r in rows]  # only timings differ: exact
    assert gpu_figures.metrics_difference(rows, other)["exact"]
    other[2]["objective/scores"] += 1e-3
    diff = gpu_figures.metrics_difference(rows, other)
    assert not diff["exact"] and diff["same_rows"] and diff["where"] == "objective/scores at update 3"
    assert diff["max_abs_diff"] == pytest.approx(1e-3)
    assert not gpu_figures.metrics_difference(rows, rows[:3])["same_rows"]  # a missing update


def test_json_writer_round_trip(tmp_path):
    path = gpu_figures.write_json({"device": "NVIDIA H100", "steps": [{"step": "qlora", "mfu": 0.1}]},
                                  tmp_path / "out" / "gpu_check.json")
    assert json.loads(path.read_text())["steps"][0]["mfu"] == 0.1
    assert [p.name for p in path.parent.iterdir()] == ["gpu_check.json"]


def test_arguments():
    assert gpu_check.parse_args([]).steps == list(gpu_check.STEPS)
    assert gpu_check.parse_args(["--only", "qlora, zero3-resume"]).steps == ["qlora", "zero3-resume"]
    for bad in (["--only", "zero9"], ["--budget-s", "0"]):
        with pytest.raises(SystemExit) as err:
            gpu_check.parse_args(bad)
        assert err.value.code == 1
    listed = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--list"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert [line.split(":")[0] for line in listed] == list(gpu_check.STEPS)
    assert "deepspeed_zero3.yaml" in listed[3] and "--num_processes 1" in listed[3]
    assert listed[3].endswith(" ".join(gpu_check.STEPS["zero3-resume"]["args"]))


@pytest.mark.parametrize("step", list(gpu_check.STEPS))
def test_every_step_has_valid_settings(step, tmp_path):
    try:
        cfg = load_config([*gpu_check.STEPS[step]["args"], f"output_dir={tmp_path}"])
    except ConfigError as err:  # the overlapped-rollout key of the other half of issue 26, not merged here
        assert step == "async" and "unknown key rollout.async" in str(err)
        return
    assert cfg.ppo.bf16
    if step.endswith("vllm"):
        assert cfg.rollout.engine == "vllm" and cfg.rollout.vllm_enable_sleep_mode
    if step == "qlora":  # 4-bit base weights sample with their own generate
        assert cfg.model.load_in_4bit and cfg.peft.enabled and cfg.rollout.engine == "hf"


def test_the_script_parses_and_refuses_without_a_cuda_device_in_one_line():
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")]).returncode == 0
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the refusal is for machines without one")
    for cmd in (["bash", str(BENCH / "gpu_check.sh")], [sys.executable, str(BENCH / "gpu_check.py")]):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 1 and proc.stdout == ""  # nothing installed, nothing run
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: no CUDA device"), proc.stderr


@pytest.mark.slow
def test_the_resume_check_stops_a_run_resumes_it_and_finds_it_exact_on_cpu(tmp_path, monkeypatch):
    """run_step's stop / resume / compare machinery, end to end on the tiny recipe without a launcher
    config (CPU): the numbers a GPU run prints come out of this same path."""
    monkeypatch.setattr(gpu_check, "WORK", tmp_path)
    # Its three launches and their runs start pre-imported (tests/warm.py), the runs through warm.RANK as in
    # test_distributed; launch()'s PYTHONPATH=ROOT (for a checkout where the app is not installed) is dropped, the
    # app being installed here, so that the environment is this process's and its zygote serves them.
    command = gpu_check.command

    def warm_command(*args):
        cmd = command(*args)
        script = cmd.index(gpu_check.__file__)
        return [*cmd[:script], warm.RANK, *cmd[script:]]

    def popen(cmd, env, **kwargs):
        if "PYTHONPATH" not in os.environ:
            env = {k: v for k, v in env.items() if (k, v) != ("PYTHONPATH", str(ROOT))}
        return warm.Popen(cmd, env=warm.launcher_env(env), **kwargs)

    monkeypatch.setattr(gpu_check, "command", warm_command)
    monkeypatch.setattr(gpu_check, "subprocess", SimpleNamespace(Popen=popen, STDOUT=subprocess.STDOUT,
                                                                 run=subprocess.run))
    monkeypatch.setitem(gpu_check.STEPS, "cpu-resume", dict(
        config=None, args=["recipe=tiny", "ppo.total_episodes=128", "save_steps=1", "eval_before_after=false"],
        resume=True, limit_s=400))
    row = gpu_check.run_step("cpu-resume", peak=None, limit_s=400)
    assert row["rc"] == 0 and row["stopped"]["signal"] == 15 and row["resumed_rc"] == 0, row
    assert row["resume"]["exact"] and row["ok"], row["resume"]
    assert row["updates"] == 4 and row["s_per_update"] > 0 and row["mfu"] is None  # no peak: no MFU
    assert row["n_params"] > 0 and row["epochs"] == 4
    stopped_at = len(gpu_figures.read_metrics(tmp_path / "cpu-resume" / "resumed"))
    assert stopped_at == 4  # the resumed run continued to the end
