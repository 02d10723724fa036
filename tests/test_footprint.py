"""What a process imports: the CLI's quick answers (help, a config error) load no ML library, and a
tiny PPO run loads no engine, tracker or plotting library it was not asked for (rlhf_app/footprint.py).

Each check runs in its own interpreter: this test session has imported everything already."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "trl", "datasets", "accelerate", "peft", "pandas", "numpy", "matplotlib",
         "vllm", "wandb", "tensorboard", "tensorboardX", "trackio", "triton", "deepspeed", "evaluate")

# Runs the rlhf-app dispatcher with argv, then prints one JSON line: the exit status and HEAVY's
# members in sys.modules at exit (and, for a run, just before the report is written).
PROBE = """
import json, sys
HEAVY = %r
seen = {}
def loaded():
    return sorted(m for m in HEAVY if sys.modules.get(m) is not None)
if sys.argv[1] == "train" and "--help" not in sys.argv:
    import rlhf_app.run as run
    report = run._report
    def spy(out):
        seen["before_report"] = loaded()
        report(out)
    run._report = spy
from rlhf_app.cli.main import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code if isinstance(exit.code, int) else 1
    print(exit.code, file=sys.stderr)
seen.update(code=code, at_exit=loaded(), cuda="torch" in sys.modules and sys.modules["torch"].cuda.is_available())
print("PROBE " + json.dumps(seen))
""" % (HEAVY,)


def probe(*argv: str) -> tuple[dict, str, str]:
    """rlhf-app ARGV in a fresh interpreter -> (what PROBE saw, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE "))
    return json.loads(line[len("PROBE "):]), proc.stdout, proc.stderr


@pytest.mark.parametrize("argv, error", [
    (("--help",), None),
    (("train", "--help"), None),
    (("train", "recipe=nope"), "error: unknown recipe 'nope': available: "),
    (("train", "recipe=tiny", "ppo.learning_rate=abc"), "error: bad value for ppo.learning_rate: expected float, got 'abc'"),
    (("train", "recipe=tiny", "ppo.kl_coeff=0.1"), "error: command line: unknown key ppo.kl_coeff; did you mean ppo.kl_coef?"),
])
def test_help_and_config_errors_import_no_ml_library(argv, error):
    seen, out, err = probe(*argv)
    assert seen["at_exit"] == [], seen  # no torch, transformers, ... : these answer in a fraction of a second
    if error is None:
        assert seen["code"] == 0 and "usage:" in out
    else:
        assert seen["code"] == 1 and err.strip().startswith(error) and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_a_tiny_run_imports_no_engine_tracker_or_plots_it_was_not_asked_for(tmp_path):
    seen, out, err = probe("train", "recipe=tiny", f"output_dir={tmp_path / 'run'}", "ppo.total_episodes=64")
    assert seen["code"] == 0, err[-2000:]
    assert (tmp_path / "run" / "final").is_dir() and (tmp_path / "run" / "report.html").is_file()
    training = set(seen["before_report"])
    assert {"torch", "transformers"} <= training  # the probe sees what the run loaded
    # rollout.engine=hf, report_to=none: no vLLM, no tracker; matplotlib only for the report's plots.
    assert not training & {"vllm", "wandb", "tensorboard", "tensorboardX", "trackio", "matplotlib", "deepspeed"}
    assert "matplotlib" in seen["at_exit"]
    if not seen["cuda"]:  # triton kept out where nothing can use it (footprint.py)
        assert "triton" not in seen["at_exit"]


def test_triton_is_kept_out_only_for_the_hf_engine_and_only_within():
    code = """
import importlib.util, json, sys
from rlhf_app import footprint
installed = importlib.util.find_spec("triton") is not None
import torch
rows = {"installed": installed, "cuda": torch.cuda.is_available()}
with footprint.without_triton("vllm") as blocked:
    rows["vllm_blocked"] = blocked
with footprint.without_triton("hf") as blocked:
    rows["hf_blocked"] = blocked
    try:
        import triton
        rows["inside"] = "imported"
    except ImportError:
        rows["inside"] = "ImportError"
rows["after"] = importlib.util.find_spec("triton") is not None
print(json.dumps(rows))
"""
    rows = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                                     check=True).stdout.splitlines()[-1])
    assert rows["vllm_blocked"] is False
    assert rows["hf_blocked"] is (not rows["cuda"])
    if not rows["cuda"]:
        assert rows["inside"] == "ImportError"
    assert rows["after"] == rows["installed"]  # the marker is gone: a later import finds it again
