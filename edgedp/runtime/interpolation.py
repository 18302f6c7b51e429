"""Timed trajectories the servo loop evaluates at its own rate.

A chunk arrives as actions at absolute times t0 + j*dt (host monotonic seconds). The servo loop samples it
every servo period (2 ms at 500 Hz) between those knots: linearly, or with a C1 cubic (Catmull-Rom tangents,
one-sided at the ends) when velocity continuity at the knots matters more than staying inside the segment
hull. Every trajectory answers `evaluate(t, out) -> covered`: the position at t is written to `out`, and
`covered` says whether t lies inside the data (outside it the nearest end value is held and the caller
decides to decelerate).
"""
from __future__ import annotations

import math

import numpy as np


class Trajectory:
    """Something that gives a joint-space position for an absolute time."""

    dim: int

    def evaluate(self, t: float, out: np.ndarray) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def end_time(self) -> float:
        return math.inf

    def simplify(self, t: float) -> "Trajectory":
        """Drop blending layers that no longer influence times >= t (keeps nesting shallow)."""
        return self


class Constant(Trajectory):
    """A fixed pose: used to hold and as the start of the ramp from the pose read at connect time."""

    def __init__(self, q: np.ndarray):
        self.q = np.array(q, dtype=np.float64)
        self.dim = self.q.shape[0]

    def evaluate(self, t: float, out: np.ndarray) -> bool:
        out[:] = self.q
        return True


class TimedChunk(Trajectory):
    """Actions at t0 + j*dt, interpolated linearly or with a C1 cubic."""

    def __init__(self, values: np.ndarray, t0: float, dt: float, kind: str = "linear", seq: int = 0):
        if kind not in ("linear", "cubic"):
            raise ValueError(f"unknown interpolation '{kind}' (allowed: linear, cubic)")
        if not dt > 0:
            raise ValueError(f"action period must be > 0, got {dt}")
        self.values = np.array(values, dtype=np.float64, copy=True)
        if self.values.ndim != 2 or self.values.shape[0] < 1:
            raise ValueError(f"chunk must be (steps, dim), got shape {self.values.shape}")
        self.n, self.dim = self.values.shape
        self.t0 = float(t0)
        self.dt = float(dt)
        self.kind = kind
        self.seq = seq
        if kind == "cubic" and self.n >= 2:
            self.tangents = _catmull_rom_tangents(self.values)  # per knot, in units per step
        else:
            self.tangents = None

    def end_time(self) -> float:
        return self.t0 + (self.n - 1) * self.dt

    def evaluate(self, t: float, out: np.ndarray) -> bool:
        s = (t - self.t0) / self.dt
        if s <= 0.0 or self.n == 1:
            out[:] = self.values[0] if s <= 0.0 else self.values[-1]
            return s >= 0.0 and (self.n > 1 or s == 0.0)
        last = self.n - 1
        if s >= last:
            out[:] = self.values[last]
            return s == last
        i = int(s)
        u = s - i
        p0 = self.values[i]
        p1 = self.values[i + 1]
        if self.tangents is None:
            np.multiply(p1 - p0, u, out=out)
            out += p0
            return True
        m0 = self.tangents[i]
        m1 = self.tangents[i + 1]
        u2 = u * u
        u3 = u2 * u
        h00 = 2 * u3 - 3 * u2 + 1
        h10 = u3 - 2 * u2 + u
        h01 = -2 * u3 + 3 * u2
        h11 = u3 - u2
        out[:] = h00 * p0 + h10 * m0 + h01 * p1 + h11 * m1
        return True

    def times(self) -> np.ndarray:
        return self.t0 + self.dt * np.arange(self.n)


def _catmull_rom_tangents(v: np.ndarray) -> np.ndarray:
    m = np.empty_like(v)
    m[1:-1] = 0.5 * (v[2:] - v[:-2])
    m[0] = v[1] - v[0]
    m[-1] = v[-1] - v[-2]
    return m
