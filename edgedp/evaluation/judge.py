"""Success detection, kept apart from the runtime so it judges the world, not the runtime's belief.

The scene reads the emulator's true servo angles (shared memory written by the emulator process every
millisecond), so success means the emulated arm's tip really is within the scene's success radius of a
target, whatever the planner or the servo loop think they commanded.

Success also needs the tip to stay there for `dwell` seconds (0.2 s, two action periods, by default): a
reach is done when the arm is at the target, not when it sweeps across it on the way elsewhere. The time
to success is the moment the tip entered the radius for the stay that succeeded.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

import numpy as np


class SuccessJudge:
    """Polls the scene on its own thread and calls ``on_success`` once, when the tip has stayed within the
    success radius for ``dwell`` seconds.

    The scene is checked every ``period`` seconds (10 ms by default, much shorter than the 100 ms action
    period, so the reported time is accurate to about one poll).
    """

    def __init__(self, scene: Any, on_success: Callable[[], None] = lambda: None, period: float = 0.01,
                 dwell: float = 0.2, clock: Callable[[], float] = time.monotonic):
        self.scene = scene
        self.on_success = on_success
        self.period = float(period)
        self.dwell = float(dwell)
        self.clock = clock
        self._t_enter: Optional[float] = None
        self.t_begin: Optional[float] = None
        self.t_success: Optional[float] = None
        self.min_distance = float("inf")
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def check(self) -> bool:
        """One look at the scene: True when the tip is within the success radius now. Success (and the
        callback, once) when it has been inside since at least ``dwell`` seconds ago."""
        now = self.clock()
        d = self.scene.distance_to_target()
        if d < self.min_distance:
            self.min_distance = d
        if d > self.scene.success_radius:
            self._t_enter = None
            return False
        if self._t_enter is None:
            self._t_enter = now
        if self.t_success is None and now - self._t_enter >= self.dwell:
            self.t_success = self._t_enter
            self.on_success()
        return True

    @property
    def time_to_success(self) -> Optional[float]:
        if self.t_success is None or self.t_begin is None:
            return None
        return self.t_success - self.t_begin

    def start(self, t_begin: Optional[float] = None) -> "SuccessJudge":
        self.t_begin = self.clock() if t_begin is None else t_begin
        self._thread = threading.Thread(target=self._run, name="success-judge", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            if self.t_success is not None:
                return
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)


def nearest_target(scene: Any) -> Optional[int]:
    """Index of the target nearest to the tip (which of the two targets a multimodal episode went for)."""
    targets = np.asarray(scene.targets)
    if len(targets) == 0:
        return None
    return int(np.argmin(np.linalg.norm(targets - scene.end_effector(), axis=1)))


class CoverageJudge:
    """Push-T's judge: gym-pusht's own criterion, coverage > 0.95 at one of its 10 Hz control steps.

    The scene measures coverage on its physics thread (the T as the physics has it, whatever the runtime
    believes) and stamps the first step above 0.95; this judge polls that stamp and stops the run. The time to
    success is that stamp minus the run's start, so it is exact to one physics step, not one poll.
    """

    def __init__(self, scene: Any, on_success: Callable[[], None] = lambda: None, period: float = 0.02,
                 clock: Callable[[], float] = time.monotonic):
        self.scene = scene
        self.on_success = on_success
        self.period = float(period)
        self.clock = clock
        self.t_begin: Optional[float] = None
        self.t_success: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def check(self) -> bool:
        self.scene.coverage()  # raises once the physics thread failed
        if self.t_success is None and self.scene.success_time is not None:
            self.t_success = self.scene.success_time
            self.on_success()
        return self.t_success is not None

    @property
    def time_to_success(self) -> Optional[float]:
        if self.t_success is None or self.t_begin is None:
            return None
        return max(0.0, self.t_success - self.t_begin)

    @property
    def max_coverage(self) -> float:
        return float(self.scene.max_coverage)

    def start(self, t_begin: Optional[float] = None) -> "CoverageJudge":
        self.t_begin = self.clock() if t_begin is None else t_begin
        self._thread = threading.Thread(target=self._run, name="coverage-judge", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.check():
                    return
            except RuntimeError:
                return  # the scene's error shows in the episode result (no coverage); the run ends at its timeout
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
