"""What the servo loop measures about itself, kept apart from what it controls (ros2_control keeps its
statistics in the controller manager, not in the controllers).

Per tick: the period error (wake-up time minus the absolute deadline) as a 5 µs histogram plus its exact
maximum, the same for ticks that actually slept (wake-up error, separate from lateness inherited from the
previous tick's bus I/O), and the tick's own work time. A decimated timeline (command, measurement, plan
target, error) for the plot, and every chunk adoption. Preallocated arrays: recording costs a few array
stores per tick and never allocates.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

# Period-error histogram: 5 µs bins up to 20 ms (the last bin collects everything later).
HIST_BIN_US = 5.0
HIST_BINS = 4000
MAX_ADOPTIONS = 100_000


def _bin(us: float) -> int:
    b = int(us / HIST_BIN_US) if us > 0 else 0
    return b if b < HIST_BINS else HIST_BINS


class TickInstruments:
    def __init__(self, n_joints: int, max_timeline: int):
        self.period_hist = np.zeros(HIST_BINS + 1, dtype=np.int64)
        self.wake_hist = np.zeros(HIST_BINS + 1, dtype=np.int64)
        self.work_hist = np.zeros(HIST_BINS + 1, dtype=np.int64)
        self.max_period_us = 0.0
        self.max_wake_us = 0.0
        self.max_work_us = 0.0
        self.last_error_us = 0.0
        self.tl_t = np.zeros(max_timeline)
        self.tl_cmd = np.zeros((max_timeline, n_joints))
        self.tl_meas = np.zeros((max_timeline, n_joints))
        self.tl_target = np.full((max_timeline, n_joints), np.nan)
        self.tl_err = np.zeros(max_timeline)
        self.tl_n = 0
        self.adoptions: list[tuple[int, float, int]] = []  # (seq, servo time it took over, steps already past)

    def woke(self, error_s: float, slept: bool) -> float:
        """Record one tick's wake-up (seconds after its deadline); returns it in µs."""
        us = error_s * 1e6
        b = _bin(us)
        self.period_hist[b] += 1
        if us > self.max_period_us:
            self.max_period_us = us
        if slept:
            self.wake_hist[b] += 1
            if us > self.max_wake_us:
                self.max_wake_us = us
        self.last_error_us = us
        return us

    def worked(self, seconds: float) -> None:
        us = seconds * 1e6
        self.work_hist[_bin(us)] += 1
        if us > self.max_work_us:
            self.max_work_us = us

    def sample(self, t: float, cmd: np.ndarray, meas: np.ndarray, target: Optional[np.ndarray]) -> None:
        i = self.tl_n
        if i >= self.tl_t.shape[0]:
            return
        self.tl_t[i] = t
        self.tl_cmd[i] = cmd
        self.tl_meas[i] = meas
        if target is not None:
            self.tl_target[i] = target
        self.tl_err[i] = self.last_error_us
        self.tl_n = i + 1

    def adopted(self, seq: int, t: float, dropped_steps: int) -> None:
        if len(self.adoptions) < MAX_ADOPTIONS:
            self.adoptions.append((seq, t, dropped_steps))

    def report(self) -> dict[str, Any]:
        n = self.tl_n
        return {
            "adoptions": [{"seq": a, "t": b, "dropped_steps": c} for a, b, c in self.adoptions],
            "period_error_hist": self.period_hist,
            "period_error_max_us": self.max_period_us,
            "wake_error_hist": self.wake_hist,
            "wake_error_max_us": self.max_wake_us,
            "tick_work_hist": self.work_hist,
            "tick_work_max_us": self.max_work_us,
            "timeline": {"t": self.tl_t[:n].copy(), "cmd": self.tl_cmd[:n].copy(), "meas": self.tl_meas[:n].copy(),
                         "target": self.tl_target[:n].copy(), "err_us": self.tl_err[:n].copy()},
        }
