"""The shape of an explicit timestep list (policy.timesteps), checked the same way by the config and the scheduler.

Torch-free on purpose: edgedp/config.py validates a config file without importing torch, and models/schedulers.py
adds what needs the checkpoint (the range [0, N-1] and the sampler kind)."""
from __future__ import annotations

from numbers import Integral
from typing import Any, Callable


def descending_timesteps(values: Any, show: Callable[[Any], str] = repr) -> list[int]:
    """``values`` as a list of ints; ValueError ("must be ...", one line; ``show`` renders the offending value)
    unless it is a non-empty, strictly descending sequence of integers (booleans and floats refused)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"must be a descending list of train timesteps or 'logsnr', got {show(values)}")
    out = list(values)
    if not out or any(isinstance(v, bool) or not isinstance(v, Integral) for v in out):
        raise ValueError(f"must be a non-empty list of integers, got {show(out)}")
    out = [int(v) for v in out]
    if any(b >= a for a, b in zip(out, out[1:])):
        raise ValueError(f"must be strictly descending (no repeats), got {show(out)}")
    return out

