"""A pre-imported Python for the tests' subprocesses (started by tests/warm.py, never by hand): it imports torch,
transformers, trl and the app once, then forks one child per request, so that a test's training subprocess
skips the ~10 s of imports a cold `python scripts/train.py` pays on a 2-core machine.

The child becomes the requested command as `python SCRIPT ARGS` or `python -m MODULE ARGS` would: the caller's
stdin, stdout and stderr (passed as file descriptors), its working directory, environment, sys.argv and
sys.path[0]; it runs the script as __main__ and ends as the interpreter ends (atexit, threads, flush, the exit
status of an uncaught exception). The imported modules read their settings from the environment when they load,
so warm.py sends each environment to a zygote started with it (pytest's name of the current test aside), and a
request from tests/warm_rank.py, whose environment a launcher extended, is served only when it differs in
LAUNCHER's names alone (else refused: warm_rank.py then runs the command cold).

Protocol on the Unix socket named by argv[1], one connection per child: the caller sends a length-prefixed JSON
request {"argv", "cwd", "env", "new_session" (Popen's start_new_session); from warm_rank.py "launched",
"unbuffered"} with its three descriptors (and from warm_rank.py a pipe to watch); this process answers
{"pid": ...} once the child runs (or {"refused": why}) and {"returncode": ...} when it ends (negative: the
signal that ended it, as subprocess reports it). It exits, killing children still running, when its stdin (a
pipe from the test process) closes."""

import array
import io
import json
import os
import select
import signal
import socket
import struct
import sys
import threading

# What a tiny training run imports before its first step (python -X importtime): the heavy part of a cold start.
PRELOAD = ("torch", "transformers", "trl.trainer.utils", "accelerate", "datasets", "rlhf_app.cli.main",
           "rlhf_app.run", "rlhf_app.engines", "rlhf_app.rl.loop", "rlhf_app.report.page", "trl.models.utils",
           "transformers.models.llama.modeling_llama")


def request(conn: socket.socket, message: dict, fds: list[int]) -> None:
    """The caller's side (warm.py, warm_rank.py): MESSAGE, length-prefixed, with the descriptors FDS."""
    data = json.dumps(message).encode()
    conn.sendmsg([struct.pack("!I", len(data)) + data],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])


def answer(conn: socket.socket) -> dict:
    """The caller's side: this process's next message ({"pid"}, {"refused"} or {"returncode"})."""
    def read(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise RuntimeError("the test zygote went away")
            data += chunk
        return data
    return json.loads(read(struct.unpack("!I", read(4))[0]))


def _send(conn: socket.socket, message: dict) -> None:
    data = json.dumps(message).encode()
    try:
        conn.sendall(struct.pack("!I", len(data)) + data)
    except OSError:  # the caller has gone; its child still runs to its end
        pass


# What a launcher (accelerate launch, torch's elastic agent) adds to the environment of the processes it starts
# (tests/warm_rank.py) and the names the tests set for a launch: read when a run starts, not when a module is
# imported, so a child whose environment differs from this process's in these names alone may be served.
LAUNCHER = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
            "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_", "TORCHINDUCTOR_CACHE_DIR",
            "TORCH_NCCL_", "NCCL_", "ACCELERATE_", "PYTEST_CURRENT_TEST", "RLHF_APP_TEST_ZYGOTE")


STARTED_WITH = dict(os.environ)  # before PRELOAD's imports, some of which set defaults of their own


def _unexpected(env: dict) -> list[str]:
    """The names whose values differ between ENV and the environment this process started with, but those
    LAUNCHER sets."""
    names = set(env) ^ set(STARTED_WITH) | {name for name in env if env[name] != STARTED_WITH.get(name)}
    return sorted(name for name in names if not name.startswith(LAUNCHER))


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """One request and its descriptors (stdin, stdout, stderr and, from warm_rank.py, a pipe to watch)."""
    fds = array.array("i")
    head, ancillary, _, _ = conn.recvmsg(4, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    (size,) = struct.unpack("!I", head)
    body = b""
    while len(body) < size:
        body += conn.recv(size - len(body))
    return json.loads(body), list(fds)


def serve(path: str) -> tuple[dict, list[int]] | None:
    """Forks a child per request; returns only in a child, with its request and descriptors."""
    for name in PRELOAD:
        __import__(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    children: dict[int, socket.socket] = {}
    print("ready", flush=True)  # warm.py waits for this line
    while True:
        ready, _, _ = select.select([listener, wake_r, sys.stdin], [], [])
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1):  # the test process has ended
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            return None
        if wake_r in ready:
            os.read(wake_r, 512)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid)
            _send(conn, {"returncode": os.waitstatus_to_exitcode(status)})
            conn.close()
        if listener in ready:
            conn, _ = listener.accept()
            try:
                request, fds = _receive(conn)
            except (OSError, ValueError, struct.error) as err:  # a caller that went away before its request
                print(f"zygote: no request read: {err!r}", file=sys.stderr)
                conn.close()
                continue
            unexpected = _unexpected(request["env"]) if request.get("launched") else []
            if unexpected:  # warm_rank.py then starts the command cold
                _send(conn, {"refused": f"environment differs in {', '.join(unexpected)}"})
                for fd in fds:
                    os.close(fd)
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in (listener.fileno(), conn.fileno(), wake_r, wake_w, *(c.fileno() for c in children.values())):
                    os.close(fd)
                return request, fds
            for fd in fds:
                os.close(fd)
            children[pid] = conn
            _send(conn, {"pid": pid})


def become(request: dict, fds: list[int]) -> None:
    """In the child: takes the caller's descriptors, directory and argv, then runs the script as __main__."""
    import runpy

    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
        os.close(fd)
    if request.get("unbuffered"):  # python -u, as torch's elastic agent starts its workers
        for name, fd in (("stdout", 1), ("stderr", 2)):
            old = getattr(sys, name)
            setattr(sys, name, io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding=old.encoding,
                                                errors=old.errors, write_through=True))
    if len(fds) == 4:  # warm_rank.py's pipe: when that process ends, however it ends, so does this one
        watched = fds[3]
        threading.Thread(target=lambda: os.read(watched, 1) or os.kill(os.getpid(), signal.SIGKILL),
                         daemon=True).start()
    if request.get("new_session"):  # Popen's start_new_session: a group of its own, for os.killpg(pid)
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    argv = request["argv"]
    if argv[0] == "-m":
        sys.argv = ["-m", *argv[2:]]
        sys.path[0] = os.getcwd()
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    served = serve(sys.argv[1])
    if served is not None:
        become(*served)
