"""`run` and `Popen` as subprocess's, for the tests' `python SCRIPT ...` and `python -m MODULE ...` commands: they
start from a pre-imported Python (tests/zygote.py, one per environment and test process, two at most) and skip
the ~10 s a cold start spends importing torch, transformers and trl on a 2-core machine. The child is a real
process of its own (its pid takes signals, its exit status is reported as Popen reports it); it differs from a
cold start only in the modules already imported, so a test about what a run imports (test_footprint,
test_extras) or about the entry points themselves (test_console) starts cold. Any other command, an environment
used once, or RLHF_APP_TEST_COLD=1 goes to subprocess unchanged."""

import atexit
import locale
import os
import select
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import zygote as zygote_protocol
from zygote import LAUNCHER

PIPE, DEVNULL, STDOUT = subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT
ZYGOTE = Path(__file__).with_name("zygote.py")
_MAX_ZYGOTES = 2  # per test process, least recently used first out: each holds ~1 GB
_zygotes: dict[tuple, "_Zygote"] = {}
_asked: set[tuple] = set()  # the environments of earlier commands


class _Zygote:
    def __init__(self, env: dict[str, str]):
        self.folder = tempfile.mkdtemp(prefix="rlhf_app-zygote-")
        self.path = os.path.join(self.folder, "socket")
        self.proc = subprocess.Popen([sys.executable, str(ZYGOTE), self.path], env=env, stdin=PIPE, stdout=PIPE,
                                     text=True)
        said = []  # what its imports printed before it was ready
        for line in self.proc.stdout:
            if line == "ready\n":
                break
            said.append(line)
        else:
            raise RuntimeError(f"the test zygote did not start (exit status {self.proc.wait()}): {''.join(said)}")
        sys.stderr.write("".join(said))

    def close(self) -> None:
        self.proc.stdin.close()  # it kills its children and exits
        self.proc.wait()
        for name in (self.path, self.folder):
            (os.unlink if name == self.path else os.rmdir)(name)


def _zygote(env: dict[str, str]) -> _Zygote:
    key = _key(env)
    zygote = _zygotes.pop(key, None) or _Zygote(dict(key))  # without LAUNCHER's names: its imports never see them
    _zygotes[key] = zygote
    while len(_zygotes) > _MAX_ZYGOTES:
        _zygotes.pop(next(iter(_zygotes))).close()
    return zygote


RANK = str(Path(__file__).with_name("warm_rank.py"))  # `accelerate launch ... RANK SCRIPT ARGS`: SCRIPT from a zygote


def launcher_env(env: dict[str, str]) -> dict[str, str]:
    """ENV with RLHF_APP_TEST_ZYGOTE, the socket of this process's zygote (started here if none runs), for the
    processes a launcher starts through warm_rank.py; ENV as it is with RLHF_APP_TEST_COLD=1."""
    if os.environ.get("RLHF_APP_TEST_COLD") == "1":
        return env
    return {**env, "RLHF_APP_TEST_ZYGOTE": _zygote(dict(os.environ)).path}


@atexit.register
def _close_all() -> None:
    while _zygotes:
        _zygotes.popitem()[1].close()


def _key(env) -> tuple:
    """What a zygote is kept for: ENV but the names no import reads (zygote.LAUNCHER: pytest's name of the current
    test, what a launcher sets); the child gets the whole ENV."""
    return tuple(sorted((name, value) for name, value in env.items() if not name.startswith(LAUNCHER)))


def _warm_argv(cmd, env=None) -> list[str] | None:
    """CMD without the interpreter, when it is `python SCRIPT.py ...` or `python -m MODULE ...` and ENV (None: this
    process's) has a zygote or is this process's or was asked for before (a zygote's imports cost a cold start,
    so an environment used once starts cold); else None."""
    cmd = [str(part) for part in cmd]
    if os.environ.get("RLHF_APP_TEST_COLD") == "1" or len(cmd) < 2 or cmd[0] != sys.executable or \
            not (cmd[1] == "-m" and len(cmd) > 2 or cmd[1].endswith(".py")):
        return None
    key = _key(os.environ if env is None else env)
    if key not in _zygotes and key != _key(os.environ) and key not in _asked:
        _asked.add(key)
        return None
    return cmd[1:]


def _fd(target, default: int, keep: list) -> int:
    """A descriptor for the child from a Popen-style stdin/stdout/stderr argument."""
    if target is None:
        return default
    if target == DEVNULL:
        keep.append(open(os.devnull, "r+b"))
        return keep[-1].fileno()
    return target if isinstance(target, int) else target.fileno()


class WarmPopen:
    """The part of subprocess.Popen the tests use: pid, args, returncode, stdout/stderr (PIPE), start_new_session,
    poll, wait, send_signal, terminate, kill, communicate."""

    def __init__(self, cmd, *, cwd=None, env=None, stdin=None, stdout=None, stderr=None, text=False,
                 universal_newlines=None, start_new_session=False):
        self.args, self.text = cmd, bool(text or universal_newlines)
        self.returncode, self.stdout, self.stderr = None, None, None
        keep, ends = [], {}
        fds = [_fd(stdin, 0, keep)]
        for name, target, default in (("stdout", stdout, 1), ("stderr", stderr, 2)):
            if target == PIPE:
                ends[name], write = os.pipe()
                keep.append(os.fdopen(write, "wb"))
                fds.append(write)
            elif name == "stderr" and target == STDOUT:
                fds.append(fds[1])
            else:
                fds.append(_fd(target, default, keep))
        for name, read in ends.items():
            setattr(self, name, os.fdopen(read, "r" if self.text else "rb"))
        env = dict(os.environ if env is None else env)
        zygote = _zygote(env)
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conn.connect(zygote.path)
        # "launched": the zygote checks that ENV differs from its own in LAUNCHER's names only
        request = {"argv": [str(part) for part in cmd[1:]], "cwd": str(cwd or os.getcwd()), "env": env,
                   "launched": True, "new_session": start_new_session}
        zygote_protocol.request(self._conn, request, fds)
        for file in keep:
            file.close()
        answer = zygote_protocol.answer(self._conn)
        if "pid" not in answer:  # cannot happen for an environment keyed as _key does
            raise RuntimeError(f"the test zygote refused {cmd}: {answer}")
        self.pid = answer["pid"]

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
            self._done()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._conn], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self._done()
        return self.returncode

    def _done(self) -> None:
        self.returncode = zygote_protocol.answer(self._conn)["returncode"]
        self._conn.close()

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(15)

    def kill(self) -> None:
        self.send_signal(9)

    def communicate(self, timeout: float | None = None):
        """Reads the PIPE outputs to their ends, then waits (stdout and stderr both piped: read one after the other,
        which is enough for the tests' short outputs)."""
        out = self.stdout.read() if self.stdout else None
        err = self.stderr.read() if self.stderr else None
        self.wait(timeout)
        return out, err


def Popen(cmd, **kwargs):
    """subprocess.Popen(CMD, **KWARGS), from the pre-imported Python where CMD allows."""
    return subprocess.Popen(cmd, **kwargs) if _warm_argv(cmd, kwargs.get("env")) is None else WarmPopen(cmd, **kwargs)


def _decoded(data: bytes, text: bool):
    if not text:
        return data
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


def run(cmd, *, capture_output=False, timeout=None, check=False, text=False, universal_newlines=None, stdout=None,
        stderr=None, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(CMD, ...), from the pre-imported Python where CMD allows; captured output goes through
    files, so that a long output never blocks the child."""
    if _warm_argv(cmd, kwargs.get("env")) is None:
        return subprocess.run(cmd, capture_output=capture_output, timeout=timeout, check=check, text=text,
                              universal_newlines=universal_newlines, stdout=stdout, stderr=stderr, **kwargs)
    text = bool(text or universal_newlines)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        if capture_output:
            stdout, stderr = out, err
        proc = WarmPopen(cmd, stdout=out if stdout == PIPE else stdout, stderr=err if stderr == PIPE else stderr,
                         **kwargs)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        captured = []
        for file, asked in ((out, capture_output or stdout == PIPE), (err, capture_output or stderr == PIPE)):
            file.seek(0)
            captured.append(_decoded(file.read(), text) if asked else None)
    result = subprocess.CompletedProcess(cmd, proc.returncode, *captured)
    if check:
        result.check_returncode()
    return result
