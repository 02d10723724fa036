"""Where tool calls run: in the training process (`rollout.tool_isolation=none`) or in a subprocess (`process`).

Both hosts hold one environment per episode slot (TRL's pool: instances are built once and reset for each
episode) and answer `call(slot, name, arguments) -> (text, failed)`. As in TRL, a tool that raises returns
`{'error': '...'}` to the model; so does an unknown tool, and a call still running after `rollout.tool_timeout`
seconds. In the training process a timed-out call is abandoned (its thread runs on, unseen); in a subprocess
the process is killed and a fresh one started (its environments are lost: their later calls fail). The
subprocess contains hangs, crashes and global state; it is not a security sandbox.

Randomness: in the training process tools draw from the global generators, which checkpoints save. The
subprocess reseeds its `random`, numpy and torch generators at each batch from one draw of the run's `random`,
so a resumed run (a fresh subprocess) draws in each batch what the uninterrupted run drew there.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import random
import threading

from rlhf_app.engines.tool_specs import ToolSet, ToolSpecError


def _error(message: str) -> str:
    return str({"error": message})  # what TRL's loop returns to the model


def _run(fn, arguments):
    """Call a tool (a coroutine function too) with its keyword arguments."""
    if not isinstance(arguments, dict):
        raise TypeError(f"arguments must be a mapping of names to values, got {type(arguments).__name__}")
    out = fn(**arguments)
    return asyncio.run(out) if inspect.iscoroutine(out) else out


def _within(timeout: float | None, fn, *args):
    """fn(*args) in a thread, waited on for `timeout` seconds -> (finished, result, exception)."""
    if timeout is None:
        try:
            return True, fn(*args), None
        except Exception as err:  # noqa: BLE001 - returned to the caller
            return True, None, err
    box = {}

    def target():
        try:
            box["out"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - a tool's sys.exit must not end a thread silently
            box["err"] = err

    thread = threading.Thread(target=target, daemon=True, name="rlhf_app-tool")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return False, None, None
    return True, box.get("out"), box.get("err")


class LocalHost:
    """Tools and environments in this process."""

    isolated = False

    def __init__(self, found: ToolSet, timeout: float | None):
        self.found, self.timeout = found, timeout
        self.pool = {name: [] for name in found.factories}
        self.envs: list = []  # the environment of each episode slot of the current batch (None: no environment)

    def start(self, names: list) -> None:
        """Hand each episode slot an environment of its row's name, building more only when needed."""
        self.envs, taken = [], {}
        if not self.found.factories:
            return
        for name in names:
            pool, index = self.pool[name], taken.get(name, 0)
            if index == len(pool):
                pool.append(self.found.probes[name] if index == 0 else self.found.factories[name]())
            taken[name] = index + 1
            self.envs.append(pool[index])

    def reset(self, slot: int, row: dict):
        done, out, err = _within(self.timeout, lambda: self.envs[slot].reset(**row))
        if not done or err is not None:
            why = f"took over rollout.tool_timeout={self.timeout} s" if not done else f"{type(err).__name__}: {err}"
            raise ToolSpecError(f"environment {type(self.envs[slot]).__name__}.reset failed on a row ({why}): "
                                "fix reset(**row) for this dataset's columns")
        return None if out is None else str(out)

    def tool(self, slot: int, name: str):
        env = self.envs[slot] if slot < len(self.envs) else None
        if env is not None and name in self.found.methods(_name_of(self.found, env)):
            return getattr(env, name)
        return next((fn for fn in self.found.tools if getattr(fn, "__name__", None) == name), None)

    def call(self, slot: int, name: str, arguments) -> tuple[str, bool]:
        """(the text the model sees, whether the call failed)."""
        if self.found.factories and slot >= len(self.envs):
            return _error("Environment lost: its tool subprocess was restarted after a timeout."), True
        fn = self.tool(slot, name)
        if fn is None:
            return _error(f"Tool {name} not found."), True
        done, out, err = _within(self.timeout, _run, fn, arguments)
        if not done:
            return _error(f"Tool {name} timed out after {self.timeout} s."), True
        if err is not None:
            return _error(str(err)), True
        return str(out), False

    def reward(self, slot: int):
        """{class name: get_reward()} of the slot's environment, or None when it has no get_reward."""
        env = self.envs[slot] if slot < len(self.envs) else None
        if env is None or _name_of(self.found, env) not in self.found.rewarded:
            return None
        done, out, err = _within(self.timeout, env.get_reward)
        if not done or err is not None:
            why = "it took over rollout.tool_timeout" if not done else f"{type(err).__name__}: {err}"
            raise ToolSpecError(f"environment {type(env).__name__}.get_reward failed ({why}): return a float")
        return {type(env).__name__: None if out is None else float(out)}

    def environments(self) -> list:
        return list(self.envs)

    def close(self) -> None:
        self.envs = []


def _name_of(found: ToolSet, env):
    """The environment name whose factory built `env` (matched by class, as TRL does)."""
    return next((n for n, p in found.probes.items() if type(p) is type(env)), None)


class _Served(LocalHost):
    """The subprocess's host: each batch begins by reseeding the process's generators."""

    def begin(self, names: list, seed: int) -> None:
        # not accelerate's set_seed (run.py): that one also seeds CUDA, which a forked child must not touch
        import numpy as np
        import torch

        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.start(names)


def _serve(conn, found: ToolSet, parent_end) -> None:
    """The subprocess: a LocalHost without timeouts (the parent enforces them), driven over a pipe. The parent's
    end, inherited by fork, is closed first: held open here it would hide the parent's close (no EOF, no exit)."""
    parent_end.close()
    host = _Served(found, None)
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", getattr(host, op)(*args)))
        except Exception as err:  # noqa: BLE001 - sent back, raised in the parent
            conn.send(("err", str(err)))


class ProcessHost:
    """Tools and environments in a subprocess (fork where the platform has it: no re-import, instant)."""

    isolated = True

    def __init__(self, found: ToolSet, timeout: float):
        self.found, self.timeout, self.proc = found, timeout, None
        methods = multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")

    def _ensure(self):
        if self.proc is None or not self.proc.is_alive():
            self.conn, child = self.context.Pipe()
            self.proc = self.context.Process(target=_serve, args=(child, self.found, self.conn), daemon=True,
                                             name="rlhf_app-tools")
            self.proc.start()
            child.close()

    def _ask(self, op: str, *args, timeout: float | None = None):
        """-> ("ok", value) | ("err", text) | ("timeout", None) | ("died", None)."""
        self._ensure()
        self.conn.send((op, args))
        if not self.conn.poll(self.timeout if timeout is None else timeout):
            self._kill()
            return "timeout", None
        try:
            return self.conn.recv()
        except (EOFError, OSError):  # the tool ended the process (os._exit, a crash)
            self._kill()
            return "died", None

    def _kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
            self.proc = None

    def start(self, names: list) -> None:
        seed = random.getrandbits(63)  # from the run's checkpointed generator: the same per batch after a resume
        status, value = self._ask("begin", names, seed)
        if status != "ok":
            raise ToolSpecError(f"the tool subprocess could not build the environments ({status}: {value})")

    def reset(self, slot: int, row: dict):
        status, value = self._ask("reset", slot, row)
        if status != "ok":
            raise ToolSpecError(value if status == "err" else f"environment reset failed in the tool subprocess "
                                f"({status} after rollout.tool_timeout={self.timeout} s): fix reset(**row)")
        return value

    def call(self, slot: int, name: str, arguments) -> tuple[str, bool]:
        status, value = self._ask("call", slot, name, arguments)
        if status == "ok":
            return value
        if status == "timeout":
            return _error(f"Tool {name} timed out after {self.timeout} s."), True
        return _error(f"Tool {name} ended its process." if status == "died" else value), True

    def reward(self, slot: int):
        status, value = self._ask("reward", slot)
        if status != "ok":
            raise ToolSpecError(value if status == "err" else f"get_reward in the tool subprocess: {status}")
        return value

    def environments(self) -> list:
        return []  # they live in the subprocess

    def close(self) -> None:
        if self.proc is not None:
            self.conn.close()  # the subprocess sees EOF and returns
            self.proc.join(timeout=5)
            self._kill()


def make_host(found: ToolSet, isolation: str, timeout: float):
    return ProcessHost(found, timeout) if isolation == "process" else LocalHost(found, timeout)
