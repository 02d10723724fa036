"""Reward sources named in `reward.funcs` (or the single `reward.name`), resolved before any model loads.

- a built-in: `toy`, `sentiment`, `gsm8k`, `variety` (they read their settings from the `reward` section);
- a function in a file, `path/to/file.py:function` (imported from the file, no package needed;
  the single-reward form `reward.name=python reward.function=path/to/file.py:function` too), or
  in a module, `module.path:function`;
  `module:factory(key=value, ...)` calls a factory with literal arguments first, e.g.
  `trl.rewards:get_soft_overlong_punishment(max_completion_len=64, soft_punish_cache=16)`;
- a sequence-classification reward model, with its own tokenizer: a Hub id, a folder or `asset:NAME`.

Functions are imported here and their signature checked against TRL's reward contract, so a typo
fails in one line before the policy loads.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from rlhf_app.data.columns import REWARD_ARGUMENTS
from rlhf_app.errors import UserError

BUILTINS = ("toy", "sentiment", "gsm8k", "variety")
CONTRACT = REWARD_ARGUMENTS  # what every reward function receives besides the dataset columns
_CALL = re.compile(r"^([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.DOTALL)
FORMAT = "reward.function=path/to/file.py:function"


class RewardSourceError(UserError, ValueError):
    """A reward source that cannot be found, imported or called with TRL's arguments (one line)."""


@dataclass
class Source:
    spec: str  # as written in the config
    name: str  # the metric name: rewards/<name>/mean
    kind: str  # builtin | function | model
    fn: Optional[Callable] = None  # kind == function: the imported callable


def _literal_call(text: str, spec: str, what: str = "reward source", error: type = RewardSourceError
                  ) -> tuple[str, list, dict]:
    """'factory(a, k=1)' -> ('factory', [a], {'k': 1}); plain 'name' -> ('name', None, None)."""
    match = _CALL.match(text)
    if not match:
        return text, None, None
    try:
        call = ast.parse(f"f({match.group(2)})", mode="eval").body
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError) as err:
        raise error(f"{what} {spec!r}: the arguments of {match.group(1)}(...) must be literals "
                                f"such as 16, 0.5, 'text' ({type(err).__name__})") from None
    return match.group(1), args, kwargs


def load_function(spec: str, key: str = "reward.function", error: type = RewardSourceError):
    """Import `path/to/file.py:function` from the file (no package needed) and return the callable.
    `key` names the setting in messages and `error` is what they raise (tools share this loader)."""
    path_text, sep, name = (spec or "").rpartition(":")
    fmt = FORMAT.replace("reward.function", key)
    if not sep or not path_text or not name:
        raise error(f"{key}={spec!r} is not 'file:function': write {fmt}")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise error(f"{key}: file {path_text} does not exist (relative paths start at {Path.cwd()}): write {fmt}")
    # A module name unique to the file, so two reward files named alike never clash.
    module_name = f"rlhf_app_reward_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - the user's file; report where it failed
        raise error(f"{key}: importing {path_text} failed: {type(err).__name__}: {err}") from err
    fn = getattr(module, name, None)
    if fn is None:
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                         and getattr(v, "__module__", None) == module_name)
        raise error(f"{key}: {path_text} defines no {name!r}; its functions are: {', '.join(defined) or 'none'}")
    if not callable(fn):
        raise error(f"{key}: {path_text}:{name} is a {type(fn).__name__}, not a function")
    return fn


def import_callable(spec: str, what: str = "reward source", error: type = RewardSourceError,
                    key: str = "reward.function") -> Callable:
    """`path/to/file.py:function` or `module.path:function`, optionally called as a factory. `what` and
    `key` name the setting in the one-line `error` (the tools and environments of a run load through here)."""
    where, _, attr = spec.rpartition(":")
    attr, args, kwargs = _literal_call(attr.strip(), spec, what, error)
    if where.endswith(".py") or "/" in where:
        try:
            fn = load_function(f"{where}:{attr}", key, error)
        except error as err:
            raise error(f"{what} {spec!r}: {err}") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as err:  # noqa: BLE001 - any import failure is the user's to fix
            raise error(f"{what} {spec!r}: cannot import module {where}: {type(err).__name__}: {err}") from None
        fn = getattr(module, attr, None)
        if fn is None or not callable(fn):
            raise error(f"{what} {spec!r}: module {where} has no function {attr!r}")
    if args is not None:
        try:
            fn = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the factory rejected its arguments
            raise error(f"{what} {spec!r}: {attr}(...) failed: {type(err).__name__}: {err}") from None
        if not callable(fn):
            raise error(f"{what} {spec!r}: {attr}(...) returned a {type(fn).__name__}, not a {what.split()[0]} function")
    return fn


def required_params(fn: Callable) -> tuple[list[str], bool]:
    """(names a call must give, whether it takes **kwargs); raises when TRL's keyword call cannot work."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return [], True
    params = list(sig.parameters.values())
    positional_only = [p.name for p in params if p.kind == p.POSITIONAL_ONLY and p.default is p.empty]
    if positional_only:
        raise RewardSourceError(f"takes positional-only {', '.join(positional_only)}: reward functions are "
                                "called with keywords (prompts=, completions=, ...)")
    varkw = any(p.kind == p.VAR_KEYWORD for p in params)
    if not varkw:
        raise RewardSourceError(f"its signature {sig} takes no **kwargs: every reward function gets "
                                f"{', '.join(CONTRACT)} and the dataset columns, so add **kwargs")
    required = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return required, varkw


def _name_of(fn: Callable) -> str:
    """TRL's display name: the function's __name__, else its class name (callable instances)."""
    return getattr(fn, "__name__", type(fn).__name__)


def resolve(cfg) -> list[Source]:
    """The reward sources of `cfg.reward`, imported and checked; raises RewardSourceError."""
    rc = cfg.reward
    specs = list(rc.funcs) if rc.funcs else [rc.name]
    sources, seen = [], {}
    for spec in specs:
        spec = str(spec).strip()
        legacy = spec == "python"
        if legacy:  # the single-reward form: reward.name=python reward.function=file.py:fn
            if not rc.function:
                raise RewardSourceError(f"reward.name=python needs the function to call: {FORMAT}")
            spec = rc.function
        if spec in BUILTINS:
            if spec == "sentiment" and not rc.model:
                raise RewardSourceError("reward sentiment needs reward.model=<Hub id, folder or asset:imdb-sentiment>")
            source = Source(spec, spec, "builtin")
        elif ":" in spec and not spec.startswith("asset:"):
            fn = import_callable(spec)
            try:
                required_params(fn)
            except RewardSourceError as err:
                raise RewardSourceError(f"reward source {spec!r}: {err}") from None
            source = Source(spec, "python" if legacy else _name_of(fn), "function", fn)
        else:
            parts = spec.rstrip("/").split("/")  # a run's final/ or checkpoint-N/ goes by its run's name (rm/final: rm)
            run = len(parts) > 1 and re.fullmatch(r"final|checkpoint-\d+", parts[-1])
            source = Source(spec, (parts[-2] if run else parts[-1]).removeprefix("asset:"), "model")
        count = seen[source.name] = seen.get(source.name, 0) + 1
        if count > 1:  # two sources named alike keep apart in the metrics
            source.name = f"{source.name}_{count}"
        sources.append(source)
    return sources


def check_columns(sources: list[Source], columns: list[str]) -> None:
    """Every argument a reward function requires is in TRL's contract or a dataset column."""
    for source in sources:
        if source.kind != "function":
            continue
        missing = [p for p in required_params(source.fn)[0] if p not in CONTRACT and p not in columns]
        if missing:
            raise RewardSourceError(f"reward {source.name!r} ({source.spec}) needs the dataset column(s) "
                                    f"{', '.join(missing)}; the dataset's columns are {', '.join(columns)}")
