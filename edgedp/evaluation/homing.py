"""Return the arm to its home pose between episodes, through the bus like a real robot's reset.

The devices stay up for a whole evaluation (see episodes.py), so the next episode would start wherever the
last one ended. A real evaluation moves the robot back to a fixed start pose; so does this, over the same
Dynamixel protocol the servo loop uses: it opens the bus, ramps the goal at a bounded joint speed to the
home pose, waits until the measured pose is there, and closes the port.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np


def home_pose(joints: Sequence[Any]) -> np.ndarray:
    """The pose `edgedp run` starts the emulated arm in: the middle of every joint's range."""
    return np.array([0.5 * (j.min + j.max) for j in joints], dtype=np.float64)


def move_home(make_bus: Callable[[], Any], home: np.ndarray, max_velocity: Sequence[float], rate_hz: float = 100.0,
              tolerance: float = 0.01, settle_timeout: float = 3.0) -> float:
    """Drive the arm to ``home``; returns the final largest joint error (rad). Raises if it does not get there."""
    home = np.asarray(home, dtype=np.float64)
    vmax = 0.5 * np.asarray(max_velocity, dtype=np.float64)  # half speed: a reset has no hurry
    bus = make_bus()
    bus.connect()
    try:
        q = np.asarray(bus.read().q, dtype=np.float64)
        bus.write_goal(q)  # the goal register may hold anything: make it the present pose before torque on
        bus.set_torque(True)
        period = 1.0 / rate_hz
        span = np.abs(home - q)
        duration = float(np.max(span / vmax)) if span.size else 0.0
        t0 = time.monotonic()
        while True:
            s = min(1.0, (time.monotonic() - t0) / duration) if duration > 0 else 1.0
            bus.write_goal(q + s * (home - q))
            if s >= 1.0:
                break
            time.sleep(period)
        deadline = time.monotonic() + settle_timeout
        err = float("inf")
        while time.monotonic() < deadline:
            err = float(np.max(np.abs(np.asarray(bus.read().q) - home)))
            if err <= tolerance:
                break
            time.sleep(period)
        if err > tolerance:
            raise RuntimeError(f"the arm did not return home (largest joint error {err:.3f} rad)")
        return err
    finally:
        bus.close()
