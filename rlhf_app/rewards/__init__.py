"""Reward sources. Every one is called with TRL's reward contract:

    reward_fn(prompts=..., completions=..., completion_ids=..., trainer_state=..., log_extra=...,
              log_metric=..., **columns) -> list[float | None]

where dataset columns (e.g. `answer`) arrive by name. `reward.funcs` lists several sources
(`rlhf_app.rewards.sources`), summed with `reward.weights` (`rlhf_app.rewards.combine`); a plain
dict maps the built-in names to builders `build(cfg, device) -> callable`. A callable may carry
`extra_metrics(prompts, completions, **columns) -> dict[str, float]`, which evaluation reports.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import signal
import threading
from types import SimpleNamespace
from typing import Callable

from rlhf_app.data.columns import CONVERSATION_COLUMN
from rlhf_app.errors import UserError
from rlhf_app.rewards import gsm8k, sentiment, toy, variety
from rlhf_app.rewards.combine import combine
from rlhf_app.rewards.sources import RewardSourceError, check_columns, resolve

RewardFn = Callable[..., list[float]]

BUILDERS = {"toy": toy.build, "sentiment": sentiment.build, "gsm8k": gsm8k.build, "variety": variety.build}
HINT = "return a list of one float (or None) per completion"
FLOAT32_MAX = 3.4028234663852886e38  # the scores train as float32 tensors (rl/rollout.score)


class RewardError(UserError, RuntimeError):
    """A reward function failed or returned something unusable; the message names it and the input."""


def resolve_sources(cfg, columns: list[str] | None = None):
    """Import and check the reward sources (before any model loads); with the dataset's `columns`,
    check that each function's required arguments exist. Raises RewardSourceError (one line)."""
    sources = resolve(cfg)
    if columns is not None:
        check_columns(sources, [c for c in columns if c not in ("prompt", "input_ids", CONVERSATION_COLUMN)])
    return sources


def gold_config(cfg):
    """The config the gold scorer is built from: reward.funcs = [reward.gold] alone, unweighted; every other
    reward setting (a built-in's reward.model, reward.target, ...) as the run has it."""
    return SimpleNamespace(reward=dataclasses.replace(cfg.reward, funcs=[cfg.reward.gold], weights=None, gold=None))


def resolve_gold(cfg, columns: list[str] | None = None):
    """The sources of `reward.gold` (None when it is not set), checked as resolve_sources checks reward.funcs."""
    if not cfg.reward.gold:
        return None
    try:
        return resolve_sources(gold_config(cfg), columns)
    except RewardSourceError as err:
        raise RewardSourceError(f"reward.gold: {err}") from None


def _keywords(fn):
    """A user function called as TRL calls it: every argument by keyword."""
    def call(prompts, completions, **kwargs):
        return fn(prompts=prompts, completions=completions, **kwargs)

    if callable(getattr(fn, "extra_metrics", None)):
        call.extra_metrics = fn.extra_metrics
    return call


def build_reward(cfg, device=None, sources=None) -> RewardFn:
    """The checked reward callable of `cfg.reward` (reward.funcs, or reward.name alone)."""
    sources = sources if sources is not None else resolve(cfg)
    fns, text_only = [], []
    for source in sources:
        if source.kind == "builtin":
            fn = BUILDERS[source.spec](cfg, device)
        elif source.kind == "model":  # a reward model with its own tokenizer scores prompt + completion, as TRL's
            rc = dataclasses.replace(cfg.reward, model=source.spec, score_prompt=True)
            fn = sentiment.build(SimpleNamespace(reward=rc), device)
        else:
            fn = _keywords(source.fn)
        # built-ins read text; a reward model trained on conversations reads TRL's messages, as functions do
        text_only.append(source.kind != "function" and not getattr(fn, "conversational", False))
        fns.append(checked(source.name, fn))
    weights = cfg.reward.weights
    if weights is not None and len(weights) < len(sources):  # an environment's get_reward: weight 1, as TRL's
        weights = list(weights) + [1.0] * (len(sources) - len(weights))
    return combine([s.name for s in sources], fns, text_only, weights)


def _short(text, limit: int = 200) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _row(columns: dict, i: int, n: int) -> dict:
    """Row `i` of the per-completion columns, as one-element lists; other values unchanged."""
    return {k: [v[i]] if isinstance(v, (list, tuple)) and len(v) == n else v for k, v in columns.items()}


def _own(value):
    """A reward's own copy of an argument (lists, conversations, trainer_state), so that what it changes
    reaches neither the next reward nor the logs; the logging hooks stay the caller's."""
    return value if callable(value) else copy.deepcopy(value)


def _call(fn: RewardFn, prompts, completions, columns: dict):
    # The episodes' environments (TRL's `environments`) are passed as they are: they may hold what cannot be copied.
    return fn(_own(prompts), _own(completions), **{k: v if k == "environments" else _own(v)
                                                   for k, v in columns.items()})


def _culprit(name: str, fn: RewardFn, prompts, completions, columns, err: Exception) -> RewardError:
    """Re-score one completion at a time to name the one that makes `fn` fail."""
    n = len(completions)
    for i in range(n):
        try:
            _call(fn, prompts[i:i + 1], completions[i:i + 1], _row(columns, i, n))
        except Exception as single:  # noqa: BLE001 - any failure is reported with its input
            return RewardError(f"reward {name!r} failed on completion {i} {_short(completions[i])}: "
                               f"{type(single).__name__}: {single}")
    return RewardError(f"reward {name!r} failed on a batch of {n} completions (each alone scores fine): "
                       f"{type(err).__name__}: {err}")


def as_scores(name: str, out, completions) -> list:
    """A reward's output as a list of floats and Nones, or a RewardError naming what it returned."""
    if out is None or isinstance(out, (dict, str, bytes)) or not hasattr(out, "__len__"):
        kind = f"a dict (keys {', '.join(map(str, list(out)[:4]))})" if isinstance(out, dict) else \
            f"a {type(out).__name__}"
        raise RewardError(f"reward {name!r} returned {kind}: {HINT}")
    ndim = getattr(out, "ndim", 1)
    if ndim != 1:
        raise RewardError(f"reward {name!r} returned a {ndim}-D {type(out).__name__} of shape "
                          f"{tuple(out.shape)}: {HINT}")
    scores = out.tolist() if hasattr(out, "tolist") else list(out)
    if len(scores) != len(completions):
        raise RewardError(f"reward {name!r} returned {len(scores)} scores for {len(completions)} completions")
    nested = next((s for s in scores if isinstance(s, (list, tuple))), None)
    if nested is not None:
        raise RewardError(f"reward {name!r} returned a 2-D {type(out).__name__} (an entry is a "
                          f"{type(nested).__name__} of {len(nested)}): {HINT}")
    for i, s in enumerate(scores):
        if s is None:
            continue
        if isinstance(s, (str, bytes, list, tuple, dict)) or not isinstance(s, numbers.Real):
            raise RewardError(f"reward {name!r} returned a {type(s).__name__} ({_short(s, 40)}) for completion "
                              f"{i}: {HINT}")
        if not math.isfinite(float(s)):
            raise RewardError(f"reward {name!r} returned {s} for completion {i} {_short(completions[i])}")
        if abs(float(s)) > FLOAT32_MAX:  # inf once it is a training tensor
            raise RewardError(f"reward {name!r} returned {s} for completion {i} {_short(completions[i])}, beyond "
                              f"float32's range (±{FLOAT32_MAX:.3g}), in which the update trains: return smaller scores")
    return [None if s is None else float(s) for s in scores]


class _SigintSeen:
    """Around a reward call: whether a real SIGINT (the user's Ctrl-C) arrived, so that a
    KeyboardInterrupt the reward raises itself is not taken for one. The handler in place still runs."""

    def __enter__(self):
        self.seen, self._old = False, None
        old = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
        if callable(old):  # else SIGINT raises nothing here: a KeyboardInterrupt is the code's own

            def note(signum, frame):
                self.seen = True
                old(signum, frame)

            self._old = old
            signal.signal(signal.SIGINT, note)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def checked(name: str, fn: RewardFn) -> RewardFn:
    """Wrap a reward so that an exception (sys.exit and a KeyboardInterrupt of its own too), a wrong length
    or type, NaN or inf fails with a message naming the reward and the completion (None stays: "does not
    apply"); it gets its own copies of its arguments; `extra_metrics` stays reachable on the wrapper."""

    def reward_fn(prompts: list[str], completions: list[str], **columns) -> list:
        with _SigintSeen() as sigint:
            try:
                out = _call(fn, prompts, completions, columns)
            except KeyboardInterrupt:
                if sigint.seen:
                    raise  # the user's Ctrl-C
                raise RewardError(f"reward {name!r} raised KeyboardInterrupt itself (no Ctrl-C was pressed): {HINT}, "
                                  "or raise an ordinary exception to stop the run") from None
            except SystemExit as err:
                raise RewardError(f"reward {name!r} called sys.exit({err.code!r}): {HINT}, or raise an ordinary "
                                  "exception to stop the run") from None
            except Exception as err:  # noqa: BLE001 - re-raised with the offending completion
                raise _culprit(name, fn, prompts, completions, columns, err) from err
        return as_scores(name, out, completions)

    reward_fn.__wrapped__ = fn
    if callable(getattr(fn, "extra_metrics", None)):
        reward_fn.extra_metrics = lambda prompts, completions, **columns: _call(
            fn.extra_metrics, prompts, completions, columns)
    return reward_fn


__all__ = ["BUILDERS", "RewardError", "RewardSourceError", "build_reward", "checked", "gold_config", "resolve_gold",
           "resolve_sources"]
