"""Servo ticks <-> joint radians, vectorised over all joints of a bus.

Conventions (the same in the driver, the emulator accessors and the simulated scene):
- servo angle (rad) = (Present_Position - 2048) * 2*pi/4096: tick 2048, the horn mark, is 0 rad. The value
  already contains the servo's Homing_Offset (Present_Position = actual + Homing_Offset).
- joint angle q = direction * (servo angle - zero_offset): `zero_offset` is the servo angle where the joint
  reads zero, `direction` (+1/-1) flips the sense in software (Drive_Mode stays 0 on the servo).
Extended-position mode values are signed 32-bit ticks; the formulas are the same, with no wrap.
"""
from __future__ import annotations

import math

import numpy as np

TICKS_PER_REV = 4096
CENTER_TICK = 2048
RAD_PER_TICK = 2.0 * math.pi / TICKS_PER_REV
TICK_PER_RAD = TICKS_PER_REV / (2.0 * math.pi)


def ticks_to_servo_rad(ticks):
    """Servo angle in radians for (signed) Present_Position ticks."""
    return (np.asarray(ticks, dtype=np.float64) - CENTER_TICK) * RAD_PER_TICK


def servo_rad_to_ticks(angle):
    """Nearest tick for a servo angle in radians."""
    return np.rint(np.asarray(angle, dtype=np.float64) * TICK_PER_RAD + CENTER_TICK).astype(np.int64)


def servo_to_joint(angle, direction, zero_offset):
    """Joint radians from servo radians (direction +-1, zero_offset in servo radians)."""
    return np.asarray(direction) * (np.asarray(angle) - np.asarray(zero_offset))


def joint_to_servo(q, direction, zero_offset):
    """Servo radians for joint radians (inverse of servo_to_joint, since direction is +-1)."""
    return np.asarray(direction) * np.asarray(q) + np.asarray(zero_offset)


class TickConverter:
    """Preallocated, vectorised conversion for one bus: a few numpy ops per tick, no allocation on the hot path."""

    def __init__(self, direction, zero_offset, tick_lo, tick_hi):
        d = np.asarray(direction, dtype=np.float64)
        z = np.asarray(zero_offset, dtype=np.float64)
        n = d.shape[0]
        # q = scale * ticks + bias ;  ticks = (q - bias) / scale
        self.scale = d * RAD_PER_TICK
        self.bias = -d * (CENTER_TICK * RAD_PER_TICK + z)
        self.inv_scale = 1.0 / self.scale
        self.tick_lo = np.asarray(tick_lo, dtype=np.float64)
        self.tick_hi = np.asarray(tick_hi, dtype=np.float64)
        self._f = np.empty(n, dtype=np.float64)
        self.ticks_out = np.empty(n, dtype=np.int32)
        self.clipped = 0

    def to_rad(self, ticks: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.multiply(ticks, self.scale, out=out)
        out += self.bias
        return out

    def to_ticks(self, q: np.ndarray) -> np.ndarray:
        """Goal ticks for joint radians, clipped to the servo's limits (the clip is counted, not silent)."""
        f = self._f
        np.subtract(q, self.bias, out=f)
        f *= self.inv_scale
        np.rint(f, out=f)
        lo, hi = self.tick_lo, self.tick_hi
        if (f < lo).any() or (f > hi).any():
            self.clipped += 1
            np.clip(f, lo, hi, out=f)
        self.ticks_out[:] = f
        return self.ticks_out
