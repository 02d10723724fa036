"""Tests run offline, single-threaded, with assets built in quick mode into a private cache. `make test` runs
them in two worker processes (pytest-xdist, --dist loadfile: each module's tests in one worker, in order, so
module-scoped fixtures and `beside` hold); a plain `pytest` runs them in this one.

Shared fixtures: `tiny_cfg` (the tiny recipe's config), `train_tiny` (train it in this process),
`finished_tiny_run` (the folder of one finished tiny run for the whole session, read-only: a test that writes
into a run folder takes `tiny_run_copy`), `reward_cfg` (a TrainConfig with only reward fields set),
`tool_model` (asset:tiny-tools taught its tool conversations, tool_fixtures.py), the two made once for all
workers (`_once`),
`one_line_error` (a refused `rlhf-app` command's one `error: ...` line), `beside` (a subprocess started
ahead of the test that reads it, to run on the second core). Every test must leave SIGINT's and SIGTERM's
handlers as it found them (`_signal_handlers_kept`)."""

import os
import signal
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest
from filelock import FileLock

import warm

from rlhf_app.offline import set_network_env

set_network_env(offline=True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RLHF_APP_ASSET_QUICK", "1")
os.environ.setdefault("RLHF_APP_CACHE", tempfile.mkdtemp(prefix="rlhf_app-test-cache-"))

import torch  # noqa: E402

from rlhf_app.config import TrainConfig, load_config  # noqa: E402

torch.set_num_threads(1)

# The shared run: 640 episodes / 32 per update = 20 updates, checkpoints after updates 10 and 20,
# evaluation before and after, values.json and the report (the tiny recipe's defaults).
FINISHED_TINY_RUN = ("ppo.total_episodes=640", "save_steps=10")


class TinyRun(NamedTuple):
    dir: Path
    result: dict  # what rlhf_app.run.run returned: step, model, eval, ...


def _tiny_cfg(*overrides: str, output_dir: str | Path | None = None) -> TrainConfig:
    """recipe=tiny with OVERRIDES (`key=value` or TRL's `--key value`) and, when given, its run folder."""
    where = [] if output_dir is None else [f"output_dir={output_dir}"]
    return load_config(["recipe=tiny", *where, *overrides])


def _train_tiny(out: str | Path, *overrides: str) -> TinyRun:
    """Trains recipe=tiny with OVERRIDES into OUT in this process, through the composition root."""
    from rlhf_app.run import run

    return TinyRun(Path(out), run(_tiny_cfg(*overrides, output_dir=out)))


def _reward_cfg(**reward) -> TrainConfig:
    """The dataclass defaults with these reward fields, unvalidated (so a test can hand build_reward
    a config that load_config would refuse)."""
    cfg = TrainConfig()
    for key, value in reward.items():
        setattr(cfg.reward, key, value)
    return cfg


@pytest.fixture(scope="session")
def tiny_cfg():
    return _tiny_cfg


@pytest.fixture(scope="session")
def train_tiny():
    return _train_tiny


@pytest.fixture(scope="session")
def reward_cfg():
    return _reward_cfg


def _once(tmp_path_factory, name: str, make) -> Path:
    """make(folder) once for the whole session -> the folder, read-only. Under pytest-xdist the first worker to ask
    makes it in the folder the workers share (pytest-xdist's documented way) while the others wait on its lock,
    and later ones read it: each of the two ~10-15 s of training paid once, not once a worker. (Assets are built
    byte for byte alike in each worker's cache, and a run folder names `asset:...`, not a cache path.)"""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent  # this session's, above each worker's own
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(shared / f"{name}.lock"):
        if not done.is_file():  # none yet, or a worker failed making it: make it again, whole
            shutil.rmtree(folder, ignore_errors=True)
            make(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory) -> Path:
    """The folder of a finished tiny run (FINISHED_TINY_RUN), trained once per session; never write into it."""
    return _once(tmp_path_factory, "finished-tiny", lambda out: _train_tiny(out, *FINISHED_TINY_RUN).dir)


@pytest.fixture
def tiny_run_copy(finished_tiny_run, tmp_path) -> Path:
    """A copy of the finished tiny run's folder, for a test that writes into it."""
    return Path(shutil.copytree(finished_tiny_run, tmp_path / "run"))


@pytest.fixture(scope="session")
def tool_model(tmp_path_factory) -> Path:
    """The tiny model that calls tools (tool_fixtures.train_tool_model, ~10 s), trained once per session."""
    from tool_fixtures import train_tool_model

    return _once(tmp_path_factory, "tool-model", train_tool_model)


@pytest.fixture(autouse=True)
def _signal_handlers_kept():
    """Fails the test that leaves another SIGINT or SIGTERM handler installed (a run that installs its own must
    put the user's back, even when it fails), and puts the old one back so that later tests do not inherit it."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    left = {sig.name: handler for sig, handler in before.items() if signal.getsignal(sig) != handler}
    for sig, handler in before.items():
        signal.signal(sig, handler)
    assert not left, f"the test left other handlers installed for {', '.join(left)}"


@pytest.fixture
def one_line_error(monkeypatch):
    """`one_line_error(argv, models_may_load=True)`: `rlhf-app ARGV` ends with one `error: ...` line -> that line;
    with models_may_load=False, a model loaded before the error fails the test."""
    from rlhf_app.cli.main import main
    from rlhf_app.models import policy as models

    def check(argv: list[str], models_may_load: bool = True) -> str:
        if not models_may_load:
            monkeypatch.setattr(models, "build_models", lambda cfg: pytest.fail("a model loaded before the error"))
        with pytest.raises(SystemExit) as info:
            main(argv)
        message = str(info.value.code)
        assert message.startswith("error: ") and "\n" not in message, message
        return message
    return check


class Beside:
    """A subprocess started before the test that reads it, so that it runs on another core while
    this process (single-threaded, one test at a time) goes on with other tests. Only for
    runs that are deterministic and whose timings no assertion reads. Its output goes to LOG.out and LOG.err: a
    pipe nobody reads meanwhile could fill and block it."""

    def __init__(self, cmd: list[str], log: Path, **popen):
        self.log = log
        with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
            self.proc = warm.Popen(cmd, stdout=out, stderr=err, text=True, **popen)

    def result(self, timeout: float = 1200) -> subprocess.CompletedProcess:
        """Waits for it (the timeout only ends a hung run) -> what subprocess.run would have returned."""
        self.proc.wait(timeout=timeout)
        out, err = (Path(f"{self.log}.{name}").read_text(errors="replace") for name in ("out", "err"))
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def ok(self) -> subprocess.CompletedProcess:
        """result(), which must have exit status 0 (else the test fails with its stderr's end)."""
        proc = self.result()
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    def stop(self) -> None:
        """Ends it if it is still running (its test failed before reading it, or was not selected)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def beside(request, tmp_path_factory):
    """`beside(name, cmd, for_tests=(), **popen)`: starts CMD now as a Beside, its log files in a fresh folder
    named NAME; with FOR_TESTS (names of test functions of this module), only if this session runs one of them
    (else None), so that a module-wide fixture starts no run for tests that -k or -m left out. Whatever still
    runs when the module ends is stopped."""
    started = []

    def start(name: str, cmd: list[str], for_tests: tuple[str, ...] = (), **popen) -> Beside | None:
        if for_tests and not any(getattr(item, "originalname", None) in for_tests and item.module is request.module
                                 for item in request.session.items):
            return None
        started.append(Beside(cmd, tmp_path_factory.mktemp(f"{name}-log") / name, **popen))
        return started[-1]
    yield start
    for run in started:
        run.stop()
