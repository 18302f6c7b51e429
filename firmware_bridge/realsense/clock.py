"""Device timestamps → host monotonic seconds, done once per frame inside the driver.

RealSense frames carry a timestamp in one of three domains:

* ``hardware_clock``: the camera's own clock (ms), unrelated to the host's. We estimate
  ``offset = host_arrival - device_time`` per frame and keep the *minimum* over a sliding
  window: arrival is always later than capture by some transport latency, and the minimum
  is the frame that was delayed least, so it is the tightest estimate. Using a window (not
  the minimum since start) lets the estimate follow the drift between the two clocks.
* ``system_time`` / ``global_time``: already host wall-clock ms (librealsense maps the
  hardware clock onto it for ``global_time``); we only move it from the wall clock to the
  monotonic clock.

Recorded files are different: host arrival during a non-real-time playback says nothing
about capture time, so :class:`AnchoredClock` pins the first frame to "now" and keeps the
recorded spacing.
"""
from __future__ import annotations

import collections
import time
from typing import Deque, Optional, Tuple

HARDWARE = "hardware_clock"
SYSTEM = "system_time"
GLOBAL = "global_time"


class DeviceClock:
    """Sliding-window minimum offset estimator from a device clock to ``time.monotonic()``.

    ``window_s`` bounds how old an offset sample may be; ``jump_s`` is the size of a change
    in offset that we treat as a clock reset (device reboot, 32-bit wrap, reconnect) rather
    than latency, which restarts the estimate.
    """

    def __init__(self, window_s: float = 2.0, jump_s: float = 0.5):
        self.window_s = float(window_s)
        self.jump_s = float(jump_s)
        # Monotonic deque of (arrival, offset) with increasing offsets: the front is the window minimum.
        self._mins: Deque[Tuple[float, float]] = collections.deque()
        self.resets = 0

    @property
    def offset(self) -> Optional[float]:
        """Current estimate of host_monotonic - device_seconds (None before the first frame)."""
        return self._mins[0][1] if self._mins else None

    def reset(self) -> None:
        self._mins.clear()

    def to_host(self, device_ms: float, domain: str, arrival: float) -> float:
        """Host monotonic capture time of a frame stamped ``device_ms`` that arrived at ``arrival``."""
        if domain in (SYSTEM, GLOBAL):
            # Both are host wall-clock milliseconds; re-read the wall/monotonic gap each frame so an
            # NTP step between frames is picked up.
            t = device_ms / 1000.0 - (time.time() - time.monotonic())
            return min(t, arrival)
        dev_s = device_ms / 1000.0
        off = arrival - dev_s
        current = self.offset
        if current is not None and abs(off - current) > self.jump_s:
            self._mins.clear()
            self.resets += 1
        while self._mins and self._mins[-1][1] >= off:
            self._mins.pop()
        self._mins.append((arrival, off))
        while self._mins[0][0] < arrival - self.window_s:
            self._mins.popleft()
        return min(dev_s + self._mins[0][1], arrival)


class AnchoredClock:
    """For recorded files: the first frame maps to the host time it was read, later frames keep
    their recorded spacing (so a playback at any speed still has the original frame intervals)."""

    def __init__(self) -> None:
        self._offset: Optional[float] = None
        self._last_ms: Optional[float] = None

    @property
    def offset(self) -> Optional[float]:
        return self._offset

    def reset(self) -> None:
        self._offset = None
        self._last_ms = None

    def to_host(self, device_ms: float, domain: str, arrival: float) -> float:
        dev_s = device_ms / 1000.0
        if self._offset is None or (self._last_ms is not None and device_ms < self._last_ms):
            self._offset = arrival - dev_s
        self._last_ms = device_ms
        return dev_s + self._offset
