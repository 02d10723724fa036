"""Lean install: the core dependencies train the tiny recipe with every extra hidden; a missing extra is one line."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rlhf_app.extras import EXTRAS

ROOT = Path(__file__).resolve().parent.parent
HIDDEN = ("wandb", "tensorboard", "tensorboardX", "trackio", "gguf", "reasoning_gym", "bitsandbytes", "vllm")
# sitecustomize runs at every interpreter start: the path finder stops seeing the extras' packages,
# so `import X` fails and importlib.util.find_spec(X) is None, as in an install without them.
HIDE = f'''import importlib.machinery, sys
HIDDEN = {HIDDEN!r}
class _WithoutExtras(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)
sys.meta_path[:] = [_WithoutExtras if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
'''


def without_extras(tmp_path, *argv):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "RLHF_APP_CACHE": str(tmp_path / "cache")}
    env.pop("WANDB_MODE", None)
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)


def test_core_dependencies_hold_no_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=\[ ]", d)[0].lower().replace("_", "-") for d in project["dependencies"]}
    assert not core & {"wandb", "tensorboard", "trackio", "gguf", "reasoning-gym", "bitsandbytes", "vllm", "pytest"}
    extras = project["optional-dependencies"]
    for module, extra in EXTRAS.items():
        assert extra in extras, (module, extra)
    setup = re.search(r"^EXTRAS := ([\w,-]+)", (ROOT / "Makefile").read_text(), re.M).group(1).split(",")
    assert {"assets", "dev"} <= set(setup) <= set(extras)  # make demo builds assets, make test runs pytest


@pytest.mark.slow  # a training subprocess
def test_tiny_recipe_trains_without_any_extra(tmp_path):
    hidden = without_extras(tmp_path, "-c", "import importlib.util as u; import sys; "
                            f"sys.exit(any(u.find_spec(m) for m in {HIDDEN!r}))")
    assert hidden.returncode == 0, "the extras are still visible: the test would prove nothing"
    proc = without_extras(tmp_path, "scripts/train.py", "recipe=tiny", f"output_dir={tmp_path / 'run'}",
                          "ppo.total_episodes=64")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "report.html").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_each_extra_is_checked_before_any_model_loads(tmp_path, monkeypatch):
    from rlhf_app import extras
    from rlhf_app.config import load_config

    monkeypatch.setenv("RLHF_APP_CACHE", str(tmp_path / "cache"))  # the SmolLM2 asset is not built
    monkeypatch.setattr(extras, "installed", lambda module: module not in HIDDEN)
    for argv, module, extra in ((["recipe=gsm8k-offline"], "reasoning_gym", "assets"),
                                (["recipe=imdb-offline"], "gguf", "assets"),
                                (["recipe=tiny", "report_to=[tensorboard]"], "tensorboard", "tensorboard")):
        with pytest.raises(extras.MissingExtra, match=rf"needs the {module} package: pip install -e \.\[{extra}\]"):
            extras.check(load_config(argv))
    extras.check(load_config(["recipe=tiny"]))  # nothing optional needed
    # The command line's one line for it: tests/test_tracking.py (report_to=trackio, not installed here).
    with pytest.raises(extras.MissingExtra, match=r"^building asset:smollm2-135m-instruct .*\[assets\]"):
        from rlhf_app.assets.smollm2 import build_smollm2
        build_smollm2(tmp_path / "out")
