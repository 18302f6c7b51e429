"""Typed reads of config values from a foreign checkpoint (original cfg, LeRobot config.json).

A config from a file is untrusted: a horizon may be NaN, a string, a 5000-digit integer or a
list that contains itself. `int(x)` on those raises TypeError/ValueError (a traceback) or
succeeds with absurd values that allocate gigabytes later (10**9 diffusion timesteps). Each
reader here checks the type and a plausible range and raises one CheckpointError naming the file
and the field: `<file>: <where>.<key>: got <value> (<what is allowed>)`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from .errors import CheckpointError, short_repr

_REQUIRED = object()

# Plausible ranges for a Diffusion Policy (generous: 10-100x the largest published models).
MAX_STEPS = 1024          # horizon, n_obs_steps, n_action_steps
MAX_DIM = 65536           # state / action / feature widths, channels
MAX_IMAGE_SIDE = 4096
MAX_TRAIN_TIMESTEPS = 100_000


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _fail(source: str, where: str, key: str, value: Any, allowed: str) -> CheckpointError:
    return CheckpointError(f"{source}: {_at(where, key)}: got {short_repr(value)} ({allowed})")


def section(d: Mapping, key: str, source: str, where: str, required: bool = False) -> dict:
    """A nested mapping (missing or null -> {} unless required)."""
    value = d.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise _fail(source, where, key, value, "a mapping")
    return value


def _value(d: Mapping, key: str, source: str, where: str, default: Any) -> Any:
    """The stored value; null counts as absent (the default applies, or it is missing)."""
    value = d.get(key)
    if value is not None:
        return value
    if default is _REQUIRED:
        raise CheckpointError(f"{source}: {_at(where, key)} is missing")
    return default


def get_int(d: Mapping, key: str, source: str, where: str, lo: int, hi: int, default: Any = _REQUIRED) -> int:
    value = _value(d, key, source, where, default)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # 16.0 written by a JSON tool is 16
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _fail(source, where, key, value, f"an integer from {lo} to {hi}")
    return value


def get_opt_int(d: Mapping, key: str, source: str, where: str, lo: int, hi: int) -> int | None:
    return None if d.get(key) is None else get_int(d, key, source, where, lo, hi)


def get_float(d: Mapping, key: str, source: str, where: str, default: Any = _REQUIRED,
              lo: float = -math.inf, hi: float = math.inf) -> float:
    value = _value(d, key, source, where, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float
            ok = False
    if not ok or not math.isfinite(value) or not lo <= value <= hi:
        bounds = "" if (lo, hi) == (-math.inf, math.inf) else f" from {lo:g} to {hi:g}"
        raise _fail(source, where, key, value, f"a finite number{bounds}")
    return value


def get_bool(d: Mapping, key: str, source: str, where: str, default: bool) -> bool:
    value = d.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _fail(source, where, key, value, "true or false")
    return value


def get_str(d: Mapping, key: str, source: str, where: str, default: Any = _REQUIRED,
            allowed: tuple[str, ...] | None = None) -> str:
    value = _value(d, key, source, where, default)
    if not isinstance(value, str) or len(value) > 256 or (allowed is not None and value not in allowed):
        raise _fail(source, where, key, value, f"one of {', '.join(allowed)}" if allowed else "a short string")
    return value


def int_list(value: Any, source: str, where: str, lo: int, hi: int, min_len: int = 1, max_len: int = 8) -> list[int]:
    """A list of integers in range, e.g. a shape or down_dims; `where` names the whole field."""
    ok = isinstance(value, (list, tuple)) and min_len <= len(value) <= max_len and all(
        isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi for x in value)
    if not ok:
        raise CheckpointError(f"{source}: {where}: got {short_repr(value)} "
                              f"({min_len} to {max_len} integers from {lo} to {hi})")
    return [int(x) for x in value]


def get_int_list(d: Mapping, key: str, source: str, where: str, lo: int, hi: int, default: Any = _REQUIRED,
                 min_len: int = 1, max_len: int = 8) -> list[int]:
    value = _value(d, key, source, where, default)
    return int_list(value, source, _at(where, key), lo, hi, min_len, max_len)
