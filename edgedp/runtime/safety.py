"""The safety filter every servo target passes through: position limits, max velocity, max acceleration.

The filter owns the commanded state (q, v) and moves it one servo period h toward the target:

1. a target that is NaN or infinite in any joint is replaced by "hold" (the current command), so a broken
   chunk decelerates the arm instead of reaching the bus;
2. the target is clipped into [min, max];
3. the velocity that would reach the target this tick is limited to: max_velocity; the speed from which the
   arm can still stop at the target (plus the target's own speed, so moving targets are tracked without
   lag); the speed from which it can still stop before the joint limit; and the acceleration window
   v_prev +- max_acceleration*h.

The stopping speeds use the discrete-time braking bound (v <= -a h/2 + sqrt((a h/2)^2 + 2 a d)), so braking
fits inside the acceleration limit exactly at servo rate. A command that starts outside its limits (the
arm was left there) is walked back in at limited speed rather than snapped.
"""
from __future__ import annotations

import numpy as np


class SafetyFilter:
    """Per-joint limits applied to every target, with counters for telemetry."""

    def __init__(self, lower, upper, max_velocity, max_acceleration, period: float):
        self.lo = np.asarray(lower, dtype=np.float64).copy()
        self.hi = np.asarray(upper, dtype=np.float64).copy()
        self.vmax = np.asarray(max_velocity, dtype=np.float64).copy()
        self.amax = np.asarray(max_acceleration, dtype=np.float64).copy()
        n = self.lo.shape[0]
        if not (self.hi.shape[0] == self.vmax.shape[0] == self.amax.shape[0] == n):
            raise ValueError("safety limits must all have one value per joint")
        if np.any(self.lo >= self.hi) or np.any(self.vmax <= 0) or np.any(self.amax <= 0):
            raise ValueError("safety limits need min < max and positive velocity/acceleration limits")
        self.h = float(period)
        self.q = np.zeros(n)
        self.v = np.zeros(n)
        self._prev_target = np.zeros(n)
        self._has_prev_target = False
        self._ah2 = 0.5 * self.amax * self.h
        self.clamps = 0  # ticks where the command differs from the requested target
        self.nonfinite = 0  # targets rejected because they held NaN or inf
        self._tol = 1e-12

    def reset(self, q: np.ndarray) -> None:
        """Start from a measured pose at rest."""
        self.q[:] = q
        self.v[:] = 0.0
        self._has_prev_target = False

    def _brake(self, d: np.ndarray) -> np.ndarray:
        return -self._ah2 + np.sqrt(self._ah2 * self._ah2 + 2.0 * self.amax * np.maximum(d, 0.0))

    def apply(self, target: np.ndarray | None, out: np.ndarray) -> bool:
        """Advance the command one period toward `target` (None = hold); write it to `out`; return clamped."""
        h = self.h
        hold = target is None or not np.all(np.isfinite(target))
        if hold:
            if target is not None:
                self.nonfinite += 1
            tgt = self.q.copy()
            vt = np.zeros_like(self.q)
            self._has_prev_target = False
        else:
            tgt = np.clip(target, self.lo, self.hi)
            vt = (tgt - self._prev_target) / h if self._has_prev_target else np.zeros_like(self.q)
            self._prev_target[:] = tgt
            self._has_prev_target = True
        e = tgt - self.q
        v = e / h
        wanted = target is not None and not hold
        # Approach the target no faster than lets it stop there (plus the target's own speed that way).
        toward = np.sign(e)
        along = np.maximum(vt * toward, 0.0)
        vcap = np.minimum(self.vmax, along + self._brake(np.abs(e)))
        v = np.clip(v, -vcap, vcap)
        # Never be faster than lets the arm stop before a limit.
        v = np.minimum(v, np.maximum(self._brake(self.hi - self.q), 0.0))
        v = np.maximum(v, -np.maximum(self._brake(self.q - self.lo), 0.0))
        # Acceleration window around the current velocity.
        dv = self.amax * h
        v = np.clip(v, self.v - dv, self.v + dv)
        v = np.clip(v, -self.vmax, self.vmax)
        q = self.q + v * h
        # Never leave the limits; an arm already outside them is not snapped back.
        q = np.clip(q, np.minimum(self.lo, self.q), np.maximum(self.hi, self.q))
        self.v[:] = (q - self.q) / h
        self.q[:] = q
        out[:] = q
        clamped = hold or not np.allclose(q, target if wanted else q, rtol=0.0, atol=1e-9)
        if wanted and clamped:
            self.clamps += 1
        elif hold and target is not None:
            self.clamps += 1
        return bool(clamped)
