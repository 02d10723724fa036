"""The tests' pre-imported launcher (warm.py, zygote.py) starts a command as a cold `python` would: the same exit
status, output, argv, working directory and sys.path[0], death by a signal, an uncaught exception's traceback,
and a timeout that ends the child; warm_rank.py, which a launcher starts, relays signals and exit status and takes
its child with it when it is killed."""

import os
import signal
import subprocess
import sys
import time

import pytest

import warm

SCRIPT = """import os, signal, sys
print("argv", sys.argv[1:], "cwd", os.getcwd(), "path0", sys.path[0], "test", os.environ["PYTEST_CURRENT_TEST"])
print("progress\\r50%\\r100%", file=sys.stderr)
mode = sys.argv[1]
if mode == "raise":
    raise ValueError("bad input")
if mode == "wait":
    print("waiting", flush=True)
    signal.pause()
sys.exit(int(mode))
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "bin" / "probe.py"
    path.parent.mkdir()
    path.write_text(SCRIPT)
    return path


@pytest.mark.parametrize("mode", ["0", "3", "raise"])
def test_a_warm_start_ends_and_prints_as_a_cold_one(script, tmp_path, mode):
    cmd = [sys.executable, str(script), mode, "x y"]
    assert warm._warm_argv(cmd) is not None  # this process's environment: served warm
    got, cold = (launch(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
                 for launch in (warm.run, subprocess.run))
    assert isinstance(got, subprocess.CompletedProcess) and got.returncode == cold.returncode
    assert got.stdout == cold.stdout == (f"argv ['{mode}', 'x y'] cwd {tmp_path} path0 {script.parent} "
                                         f"test tests/test_warm.py::test_a_warm_start_ends_and_prints_as_a_cold_one"
                                         f"[{mode}] (call)\n")  # the environment as it is now
    if mode == "raise":  # the traceback ends the same way; the warm one has the launcher's frames above
        ours = cold.stderr[cold.stderr.index(f'  File "{script}"'):]
        assert got.returncode == 1 and got.stderr.endswith(ours) and ours.endswith("ValueError: bad input\n")
        assert got.stderr.startswith("progress\n50%\n100%\nTraceback (most recent call last):\n")
    else:  # text mode turns the progress bar's carriage returns into newlines, as subprocess does
        assert got.stderr == cold.stderr == "progress\n50%\n100%\n"


def test_a_warm_child_is_a_process_that_takes_signals(script):
    proc = warm.Popen([sys.executable, str(script), "wait"], stdout=subprocess.PIPE, text=True)
    assert isinstance(proc, warm.WarmPopen)
    assert proc.stdout.readline().startswith("argv") and proc.stdout.readline() == "waiting\n"
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == -signal.SIGTERM and proc.poll() == -signal.SIGTERM
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run([sys.executable, str(script), "wait"], timeout=0.5)


def test_a_warm_child_started_in_a_new_session_leads_its_own_process_group(script):
    def started(**kwargs):
        proc = warm.Popen([sys.executable, str(script), "wait"], stdout=subprocess.PIPE, text=True, **kwargs)
        assert proc.stdout.readline().startswith("argv") and proc.stdout.readline() == "waiting\n"
        return proc

    plain = started()
    assert os.getpgid(plain.pid) != plain.pid  # in the zygote's group, as a Popen child is in its parent's
    plain.kill()
    proc = started(start_new_session=True)
    assert os.getsid(proc.pid) == os.getpgid(proc.pid) == proc.pid != os.getsid(0)
    os.killpg(proc.pid, signal.SIGKILL)  # what a caller does to end it with whatever it started
    assert proc.wait(timeout=300) == -signal.SIGKILL and plain.wait(timeout=300) == -signal.SIGKILL


def test_other_commands_and_a_once_used_environment_start_cold(script, monkeypatch):
    assert warm._warm_argv(["bash", "-c", "true"]) is None
    assert warm._warm_argv([sys.executable, "-c", "pass"]) is None
    cmd, other = [sys.executable, str(script), "0"], {"ONLY_HERE": "1"}
    assert warm._warm_argv(cmd, env=other) is None and warm._warm_argv(cmd, env=other) is not None
    monkeypatch.setenv("RLHF_APP_TEST_COLD", "1")
    assert warm._warm_argv(cmd) is None


def _relay(script, *args, env=None):
    return subprocess.Popen([sys.executable, "-u", warm.RANK, str(script), *args], env=env or warm.launcher_env(
        {**os.environ, "RANK": "1", "MASTER_PORT": "29999"}), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_launched_process_runs_warm_ends_with_its_childs_status_and_relays_signals(script):
    relayed = _relay(script, "3")
    out, err = relayed.communicate(timeout=300)
    assert relayed.returncode == 3 and out.startswith("argv ['3']") and "starting cold" not in err
    relayed = _relay(script, "wait")
    assert relayed.stdout.readline().startswith("argv ['wait']") and relayed.stdout.readline() == "waiting\n"
    relayed.send_signal(signal.SIGTERM)  # goes on to the child, which dies of it; so does the relay then
    assert relayed.wait(timeout=300) == -signal.SIGTERM


def test_a_killed_relay_takes_its_child_with_it_and_a_strange_environment_starts_cold(script, tmp_path):
    probe = tmp_path / "pid.py"
    probe.write_text("import os, signal\nprint(os.getpid(), flush=True)\nsignal.pause()\n")
    relayed = _relay(probe)
    child = int(relayed.stdout.readline())
    assert child != relayed.pid and not _gone(child)  # the child is the zygote's, not the relay's
    relayed.kill()
    relayed.wait(timeout=300)
    deadline = time.monotonic() + 300  # ends a hang only
    while not _gone(child):
        assert time.monotonic() < deadline, "the child outlived its relay"
        time.sleep(0.05)
    cold = _relay(script, "0", env=warm.launcher_env({**os.environ, "SOMETHING_ELSE": "1"}))
    out, err = cold.communicate(timeout=300)
    assert cold.returncode == 0 and out.startswith("argv ['0']")
    assert "the zygote refused: environment differs in SOMETHING_ELSE" in err
