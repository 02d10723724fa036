"""A user's reward function from a Python file: `reward.function=path/to/file.py:function`.

The function takes TRL's keyword arguments, `f(prompts=..., completions=..., **columns)`, so a
reward written for TRL's GRPOTrainer works unchanged (declare `**kwargs` to ignore columns).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

FORMAT = "reward.function=path/to/file.py:function"


def load_function(spec: str):
    """Import `path/to/file.py:function` from the file (no package needed) and return the callable."""
    path_text, sep, name = (spec or "").rpartition(":")
    if not sep or not path_text or not name:
        raise ValueError(f"reward.function={spec!r} is not 'file:function': write {FORMAT}")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"reward.function: file {path_text} does not exist (relative paths start at "
                         f"{Path.cwd()}): write {FORMAT}")
    # A module name unique to the file, so two reward files named alike never clash.
    module_name = f"rlhf_app_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's file; report where it failed
        raise ValueError(f"reward.function: importing {path_text} failed: {type(err).__name__}: {err}") from err
    fn = getattr(module, name, None)
    if fn is None:
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                         and getattr(v, "__module__", None) == module_name)
        raise ValueError(f"reward.function: {path_text} defines no {name!r}; "
                         f"its functions are: {', '.join(defined) or 'none'}")
    if not callable(fn):
        raise ValueError(f"reward.function: {path_text}:{name} is a {type(fn).__name__}, not a function")
    return fn


def build(cfg, device=None):
    """The user's function behind our positional signature, with its `extra_metrics` if it has one."""
    if not cfg.reward.function:
        raise ValueError(f"reward.name=python needs the function to call: {FORMAT}")
    fn = load_function(cfg.reward.function)

    def python_reward(prompts: list[str], completions: list[str], **columns) -> list[float]:
        return fn(prompts=prompts, completions=completions, **columns)

    if callable(getattr(fn, "extra_metrics", None)):
        python_reward.extra_metrics = fn.extra_metrics
    python_reward.__name__ = getattr(fn, "__name__", "python_reward")
    return python_reward
