"""A run's tools and environments (TRL GRPOTrainer's `tools` and `environment_factory`), imported and
checked before the policy loads; each fault is one line that names the fix.

- `rollout.tools`: functions, `module:function` or `path/file.py:function` (the loader of reward
  functions, rewards/sources.py). Each needs type hints and a docstring with an `Args:` section: the chat
  template shows the model their JSON schema (transformers' `get_json_schema`).
- `rollout.environment_factory`: `module:Class` (any callable returning an environment), or
  `{name: module:Class}` chosen per row by an `environment` column. An environment defines `reset(**row)
  -> str | None` (its text is appended to the last user message), public methods that are its tools, and
  optionally `get_reward() -> float`, which then scores each episode as a reward named after its class
  (weight 1), as in TRL.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

from rlhf_app.errors import UserError
from rlhf_app.rewards.sources import Source, import_callable

RESERVED = ("reset", "get_reward")  # environment methods that are not tools


class ToolSpecError(UserError, ValueError):
    """A tool or environment that cannot be imported, described to the model or called; one line."""


@dataclass
class ToolSet:
    """What `resolve_tools` found. `factories` maps an environment name (None: the single factory) to its
    factory; `probes` holds one instance of each, whose bound methods describe the tools to the template."""

    tools: list[Callable] = field(default_factory=list)
    factories: dict = field(default_factory=dict)
    probes: dict = field(default_factory=dict)
    multi: bool = False  # environment_factory is a mapping: rows choose by their `environment` column
    rewarded: dict = field(default_factory=dict)  # environment name -> class name, when it has get_reward
    _schemas: dict = field(default_factory=dict, repr=False)

    def methods(self, name) -> list[str]:
        """The tool method names of environment `name`."""
        return env_methods(type(self.probes[name])) if name in self.probes else []

    def schemas(self, name=None) -> list[dict]:
        """The JSON schemas the chat template shows an episode of environment `name` (None: no environment),
        computed once: the parser types each call's arguments with them too."""
        if name not in self._schemas:
            from transformers.utils import get_json_schema

            probe = self.probes.get(name)
            fns = self.tools + ([getattr(probe, m) for m in self.methods(name)] if probe is not None else [])
            self._schemas[name] = [get_json_schema(fn) for fn in fns]
        return self._schemas[name]


def env_methods(cls) -> list[str]:
    """Public functions of an environment class other than reset / get_reward (TRL lists them on the class,
    so that properties are not evaluated)."""
    return [n for n, _ in inspect.getmembers(cls, predicate=inspect.isfunction)
            if n not in RESERVED and not n.startswith("_")]


def _described(fn: Callable, what: str) -> None:
    """The JSON schema the chat template renders: type hints and a docstring with Args, else one line."""
    from transformers.utils import get_json_schema

    try:
        get_json_schema(fn)
    except Exception as err:  # noqa: BLE001 - DocstringParsingException, TypeHintParsingException, ...
        first = (str(err).splitlines() or [""])[0]
        raise ToolSpecError(f"{what} cannot be shown to the model ({type(err).__name__}: {first}): give every "
                            "argument a type hint and write a docstring with an Args: section describing "
                            "each") from None


def _load(spec: str, what: str, key: str) -> Callable:
    return import_callable(str(spec).strip(), what, ToolSpecError, key)


_CACHE: dict = {}


def resolve_tools(r) -> ToolSet | None:
    """The tools and environments of rollout settings `r`, imported and checked (once per settings: the
    engines and the evaluation share them); None when the run has neither."""
    if not r.uses_tools:
        return None
    key = (tuple(r.tools), repr(r.environment_factory))
    if key not in _CACHE:
        _CACHE[key] = _resolve(r)
    return _CACHE[key]


def _resolve(r) -> ToolSet:
    found = ToolSet()
    for spec in r.tools:
        fn = _load(spec, "tool", "rollout.tools")
        _described(fn, f"tool {spec!r}")
        found.tools.append(fn)
    names = [getattr(fn, "__name__", type(fn).__name__) for fn in found.tools]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ToolSpecError(f"rollout.tools names {', '.join(twice)} more than once: the model calls tools by "
                            "name, so give each a distinct function name")
    factory = r.environment_factory
    if factory is None:
        return found
    found.multi = isinstance(factory, dict)
    specs = dict(factory) if found.multi else {None: factory}
    for name, spec in specs.items():
        key = "rollout.environment_factory" + (f".{name}" if name is not None else "")
        made = _load(spec, "environment factory", key)
        try:
            probe = made()
        except Exception as err:  # noqa: BLE001 - the user's constructor
            raise ToolSpecError(f"{key}={spec!r}: calling it with no arguments failed ({type(err).__name__}: "
                                f"{err}): an environment factory takes none (TRL builds one per episode)") from None
        cls = type(probe)
        if not callable(getattr(probe, "reset", None)):
            raise ToolSpecError(f"{key}={spec!r}: {cls.__name__} has no reset method: define "
                                "reset(self, **row) -> str | None (TRL's environment contract)")
        methods = env_methods(cls)
        for method in methods:
            _described(getattr(probe, method), f"{key}: method {cls.__name__}.{method}")
        clash = sorted(set(methods) & set(names))
        if clash:
            raise ToolSpecError(f"{key}: {cls.__name__}.{clash[0]} has the name of a tool in rollout.tools: "
                                "rename one of them")
        found.factories[name], found.probes[name] = made, probe
        if callable(getattr(probe, "get_reward", None)):
            found.rewarded[name] = cls.__name__
    return found


def reward_sources(found: ToolSet | None) -> list[Source]:
    """One reward per environment class that defines get_reward, named after the class (TRL's names): it reads
    the score each episode's environment gave (the `environment_rewards` column the engines fill)."""
    if found is None:
        return []
    sources = []
    for cls_name in dict.fromkeys(found.rewarded.values()):
        def read(environment_rewards=None, _cls=cls_name, **kwargs) -> list:
            return [(r or {}).get(_cls) for r in environment_rewards or []]

        read.__name__ = cls_name
        sources.append(Source(f"environment_factory ({cls_name}.get_reward)", cls_name, "function", read))
    return sources
