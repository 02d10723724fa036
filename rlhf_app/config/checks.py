"""What every config section's validation shares: the error type and the range and choice checks."""

from __future__ import annotations

import math
from typing import Any

from rlhf_app.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad recipe or override; the message is one line that names the fix."""


TRACKERS = ("none", "wandb", "tensorboard", "trackio")
# transformers' schedulers that need no extra arguments (transformers.SchedulerType).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")


# Ranges per field: (low, high, low_inclusive, high_inclusive); None = unbounded. Checked for None-able
# fields only when set. One table, so every numeric field is covered and the messages read the same.
_GE0, _GT0, _GE1, _UNIT, _PROB = (0, None, True, False), (0, None, False, False), (1, None, True, False), \
    (0, 1, True, True), (0, 1, False, True)


def finite(key: str, value: Any) -> None:
    """A float (or each float of a list) must be a finite number: NaN compares false with every bound
    and inf passes an open one, so a range alone lets both through."""
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(v, float) and not math.isfinite(v):
            what = f"holds {v}: each entry must be" if isinstance(value, (list, tuple)) else "is not"
            raise ConfigError(f"{key}={value} {what} a finite number: set a finite value")


def _ranges(section: str, obj, spec: dict) -> None:
    for name, (low, high, low_in, high_in) in spec.items():
        value = getattr(obj, name)
        if value is None:
            continue
        finite(f"{section}.{name}" if section else name, value)
        ok = (low is None or (value >= low if low_in else value > low)) and \
             (high is None or (value <= high if high_in else value < high))
        if not ok:
            key = f"{section}.{name}" if section else name
            if low is not None and high is not None:
                want = f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
            else:
                want = f"{'>=' if low_in else '>'} {low}" if low is not None else f"{'<=' if high_in else '<'} {high}"
            raise ConfigError(f"{key}={value} is out of range: set {key} {want}")


def _choice(section: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        key = f"{section}.{name}" if section else name
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, allowed))}")
