"""`warm_rank.py SCRIPT ARGS...`: runs SCRIPT as __main__ the way `python SCRIPT ARGS` would, from the test process's
pre-imported Python (tests/zygote.py, named by RLHF_APP_TEST_ZYGOTE) when there is one, for the processes that
`accelerate launch` starts in the tests (tests/test_distributed.py), which would each spend ~10 s importing torch,
transformers and trl on a 2-core machine.

This process imports no more than the standard library and stays the process the launcher watches: the child gets
its stdin, stdout, stderr, directory and environment (the launcher's RANK, MASTER_PORT, ... included), SIGINT and
SIGTERM sent here go on to the child, this process ends as the child ends (its exit status, or the signal that
killed it), and the child dies with this process, a SIGKILL included (the pipe it watches closes). Without
RLHF_APP_TEST_ZYGOTE, or when the zygote refuses (an environment it was not started with), SCRIPT runs here."""

import os
import runpy
import signal
import socket
import sys

import zygote  # its protocol only: the standard library, no preload


def relay(path: str, argv: list[str]) -> int | None:
    """Hands ARGV to the zygote at PATH -> the child's exit status (negative: its signal); None if refused."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    watched, kept = os.pipe()  # the child holds the read end; the write end closes only when this process ends
    zygote.request(conn, {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "launched": True,
                          "unbuffered": "-u" in sys.orig_argv[1:sys.orig_argv.index(sys.argv[0])]},
                   [0, 1, 2, watched])
    os.close(watched)
    answer = zygote.answer(conn)
    if "refused" in answer:
        print(f"warm_rank.py: starting cold, the zygote refused: {answer['refused']}", file=sys.stderr)
        return None
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, _: os.kill(answer["pid"], number))
    return zygote.answer(conn)["returncode"]


if __name__ == "__main__":
    script = sys.argv[1]
    path = os.environ.get("RLHF_APP_TEST_ZYGOTE")
    code = relay(path, sys.argv[1:]) if path else None
    if code is None:
        sys.argv = sys.argv[1:]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")
    elif code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    else:
        sys.exit(code)
