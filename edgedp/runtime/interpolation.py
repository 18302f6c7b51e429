"""Timed trajectories the servo loop evaluates at its own rate.

A chunk arrives as actions at absolute times t0 + j*dt (host monotonic seconds). The servo loop samples it
every servo period (2 ms at 500 Hz) between those knots: linearly, or with a C1 cubic (Catmull-Rom tangents,
one-sided at the ends unless lookahead rows follow the executed ones, see TimedChunk) when velocity continuity
at the knots matters more than staying inside the segment hull. Every trajectory answers
`evaluate(t, out) -> covered`: the position at t is written to `out`, and `covered` says whether t lies inside
the data (outside it the nearest end value is held and the caller decides to decelerate).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

_NONE = np.empty((0, 0))


@njit(nogil=True, cache=True)
def _evaluate(values, tangents, t0, dt, t, out) -> bool:
    """Position at time t (linear, or cubic Hermite when tangents are given); True when t is inside the data."""
    n = values.shape[0]
    d = values.shape[1]
    s = (t - t0) / dt
    if s <= 0.0 or n == 1:
        row = 0 if s <= 0.0 else n - 1
        for k in range(d):
            out[k] = values[row, k]
        return s >= 0.0 and (n > 1 or s == 0.0)
    last = n - 1
    if s >= last:
        for k in range(d):
            out[k] = values[last, k]
        return s == last
    i = int(s)
    u = s - i
    if tangents.shape[0] == 0:
        for k in range(d):
            out[k] = values[i, k] + u * (values[i + 1, k] - values[i, k])
        return True
    u2 = u * u
    u3 = u2 * u
    h00 = 2 * u3 - 3 * u2 + 1
    h10 = u3 - 2 * u2 + u
    h01 = -2 * u3 + 3 * u2
    h11 = u3 - u2
    for k in range(d):
        out[k] = h00 * values[i, k] + h10 * tangents[i, k] + h01 * values[i + 1, k] + h11 * tangents[i + 1, k]
    return True


@njit(nogil=True, cache=True)
def blend_into(out, other, w) -> None:
    """out = w * out + (1 - w) * other, in place."""
    for k in range(out.shape[0]):
        out[k] = w * out[k] + (1.0 - w) * other[k]


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
    """Actions at t0 + j*dt, interpolated linearly or with a C1 cubic.

    ``lookahead``: the last rows of ``values`` are predicted actions past the executed slice (real-time
    inpainting publishes them, edgedp/runtime/conditioning.py). They only shape the cubic tangents: the
    tangents are computed over all rows, then ``values``, ``tangents``, ``n`` and ``end_time`` keep the
    executed rows alone. Why: without them the last executed knot has a one-sided tangent, so the plan's
    last segment differs from the one a later chunk (which has knots there) draws through the same knots;
    with them the trajectory up to the last executed knot is exactly the full chunk's, and it still ends
    (covered=False, the servo decelerates to a hold) at the last executed knot."""

    def __init__(self, values: np.ndarray, t0: float, dt: float, kind: str = "linear", seq: int = 0,
                 lookahead: int = 0):
        if kind not in ("linear", "cubic"):
            raise ValueError(f"unknown interpolation '{kind}' (allowed: linear, cubic)")
        if not dt > 0:
            raise ValueError(f"action period must be > 0, got {dt}")
        rows = np.array(values, dtype=np.float64, copy=True)
        if rows.ndim != 2 or rows.shape[0] < 1:
            raise ValueError(f"chunk must be (steps, dim), got shape {rows.shape}")
        if not 0 <= lookahead < rows.shape[0]:
            raise ValueError(f"lookahead must be 0..{rows.shape[0] - 1} (one row executed), got {lookahead}")
        executed = rows.shape[0] - int(lookahead)
        self.values = np.ascontiguousarray(rows[:executed])
        self.n, self.dim = self.values.shape
        self.t0 = float(t0)
        self.dt = float(dt)
        self.kind = kind
        self.seq = seq
        if kind == "cubic" and self.n >= 2:
            # per knot, in units per step
            self.tangents = np.ascontiguousarray(_catmull_rom_tangents(rows)[:executed])
        else:
            self.tangents = None
        self._tangents = _NONE if self.tangents is None else self.tangents

    def end_time(self) -> float:
        return self.t0 + (self.n - 1) * self.dt

    def evaluate(self, t: float, out: np.ndarray) -> bool:
        return _evaluate(self.values, self._tangents, self.t0, self.dt, t, out)

    def times(self) -> np.ndarray:
        return self.t0 + self.dt * np.arange(self.n)


def _catmull_rom_tangents(v: np.ndarray) -> np.ndarray:
    m = np.empty_like(v)
    m[1:-1] = 0.5 * (v[2:] - v[:-2])
    m[0] = v[1] - v[0]
    m[-1] = v[-1] - v[-2]
    return m


def warm_up() -> None:
    """Compile (or load from the cache) the kernels now, not inside the first servo tick."""
    out = np.empty(2)
    for kind in ("linear", "cubic"):
        TimedChunk(np.zeros((3, 2)), 0.0, 0.1, kind).evaluate(0.05, out)
    blend_into(out, np.zeros(2), 0.5)
