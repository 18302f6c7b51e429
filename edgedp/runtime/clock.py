"""Absolute-deadline rate loop: tick k is due at t0 + k*period, so sleeping late never accumulates drift.

A tick that wakes more than one period late is an overrun: it is counted and the schedule skips ahead to
the next deadline still in the future, instead of firing a burst of catch-up ticks (which would hammer the
bus and make the lag permanent). The clock and sleep are injectable so the schedule can be tested with a
fake clock rather than with timing asserts.
"""
from __future__ import annotations

import math
import time
from typing import Callable


class RateLoop:
    """Sleep until absolute deadlines; count overruns; record the wake error of every tick."""

    def __init__(
        self,
        period: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        spin: float = 0.0,
        t0: float | None = None,
    ):
        if not period > 0 or not math.isfinite(period):
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        self.period = float(period)
        self._clock = clock
        self._sleep = sleep
        # Seconds before the deadline at which sleeping stops and a busy-wait begins (0 = sleep only).
        # Busy-waiting trades a CPU core for lower jitter; useful only in the servo process.
        self.spin = float(spin)
        self.t0 = clock() if t0 is None else float(t0)
        self.tick = 0  # index of the next deadline
        self.overruns = 0
        self.skipped = 0  # deadlines skipped over because of overruns
        self.last_error = 0.0  # seconds the last wake-up came after its deadline
        self.slept = True

    @property
    def next_deadline(self) -> float:
        return self.t0 + self.tick * self.period

    def wait(self) -> float:
        """Block until the next deadline; return the deadline this tick was scheduled for.

        If the caller is already past the deadline by more than one period, the tick counts as an
        overrun and the schedule jumps forward to the first future deadline (still on the t0 grid).
        """
        deadline = self.next_deadline
        now = self._clock()
        late = now - deadline
        if late > self.period:
            missed = int(late // self.period) + 1  # land on the first deadline still ahead
            self.overruns += 1
            self.skipped += missed
            self.tick += missed
            deadline = self.next_deadline
        remaining = deadline - self._clock()
        # Whether this tick waited at all: if not, its lateness comes from the previous tick's work (bus I/O),
        # not from the wake-up, and the two are reported apart.
        self.slept = remaining > 0
        if remaining > self.spin:
            self._sleep(remaining - self.spin)
        if self.spin > 0:
            while self._clock() < deadline:
                pass
        woke = self._clock()
        self.last_error = woke - deadline
        self.tick += 1
        return deadline

    def reset(self, t0: float | None = None) -> None:
        self.t0 = self._clock() if t0 is None else float(t0)
        self.tick = 0
