"""A camera that renders the simulated scene directly, without librealsense.

Why it exists: the virtual RealSense (firmware_bridge/realsense/virtual.py) needs pyrealsense2, and
pyrealsense2 needs libusb-1.0 at import. Neither is always there (a Jetson without a librealsense build,
a Mac, a slim container), yet a simulated run should still work right after a plain install. This class
is the fallback the runtime picks for ``kind: virtual`` cameras when pyrealsense2 cannot be imported.

It implements the Camera protocol of firmware_bridge/types.py with the same semantics as the RealSense
driver: a thread produces frames at ``fps`` on an absolute schedule, ``latest()`` returns the newest one,
times are host monotonic seconds taken when the scene was sampled (so there is no device clock to convert),
and ``counters()`` reports the same keys as RealSenseCamera.counters() for telemetry. What it does not
exercise is the librealsense path itself (software device, syncer, clock conversion, alignment): a run on
the fallback tests the runtime, not the camera driver.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional, Tuple

import numpy as np

from firmware_bridge.newest_frame import NewestFrameWaiter
from firmware_bridge.types import Frame, Intrinsics

RenderFn = Callable[[float], Tuple[np.ndarray, Optional[np.ndarray]]]


class SceneCameraError(RuntimeError):
    """The render callable failed; the camera stopped producing frames."""


class SceneCamera(NewestFrameWaiter):
    """Camera protocol over a render callable (normally ``Scene.render``), no pyrealsense2 needed."""

    def __init__(self, render: RenderFn, intrinsics: Intrinsics, fps: int = 30, depth: bool = False,
                 name: str = "camera", clock: Callable[[], float] = time.monotonic):
        if fps <= 0:
            raise ValueError(f"camera '{name}': fps must be positive, got {fps}")
        self.render = render
        self.intrinsics = intrinsics
        self.fps = int(fps)
        self.depth = bool(depth)
        self.name = name
        self.clock = clock
        self.frames = 0
        self.drops = 0  # frame slots missed because rendering (or the scheduler) fell more than a period behind
        self.render_s_total = 0.0
        self.error: Optional[SceneCameraError] = None
        self._latest: Optional[Frame] = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- Camera protocol --------------------------------------------------------------------------
    def start(self) -> None:
        """Render the first frame synchronously (a broken scene fails here, not later), then start the thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self.error = None
        self._produce(self.clock())
        if self.error is not None:
            raise self.error
        self._thread = threading.Thread(target=self._run, name=f"scene-camera-{self.name}", daemon=True)
        self._thread.start()

    def latest(self) -> Optional[Frame]:
        """The newest frame (None before the first); raises SceneCameraError once rendering failed."""
        if self.error is not None:
            raise self.error
        return self._latest

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        with self._cond:
            self._cond.notify_all()

    # -- extras (same names as the RealSense driver) ------------------------------------------------
    def _no_more_frames(self) -> bool:
        return self._stop.is_set()

    def counters(self) -> dict:
        """For telemetry: the RealSense driver's keys (nothing here can reconnect or time out) plus render time."""
        return {
            "frames": self.frames,
            "drops": self.drops,
            "reconnects": 0,
            "reconnect_attempts": 0,
            "timeouts": 0,
            "unmatched": 0,
            "render_ms_mean": round(1e3 * self.render_s_total / self.frames, 3) if self.frames else None,
            "source": "scene (no pyrealsense2)",
        }

    def __enter__(self) -> "SceneCamera":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        period = 1.0 / self.fps
        next_t = self.clock() + period
        while not self._stop.is_set():
            delay = next_t - self.clock()
            if delay > 0 and self._stop.wait(delay):
                break
            now = self.clock()
            late_slots = int((now - next_t) // period)
            if late_slots > 0:  # never render catch-up frames: skip the missed slots and count them
                self.drops += late_slots
                next_t += late_slots * period
            next_t += period
            if not self._produce(now):
                return

    def _produce(self, t: float) -> bool:
        """Render the scene as it is at host time ``t`` and publish the frame; False after a render failure."""
        t0 = time.perf_counter()
        try:
            rgb, depth = self.render(t)
            h, w = self.intrinsics.height, self.intrinsics.width
            if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
                raise ValueError(f"render returned {rgb.shape} {rgb.dtype}, expected ({h}, {w}, 3) uint8")
        except Exception as exc:
            with self._cond:
                self.error = SceneCameraError(f"camera '{self.name}': scene render failed: {type(exc).__name__}: {exc}")
                self._cond.notify_all()
            return False
        self.render_s_total += time.perf_counter() - t0
        image = np.array(rgb, dtype=np.uint8, copy=True)  # the renderer may reuse its buffer
        depth_m = np.array(depth, dtype=np.float32, copy=True) if (self.depth and depth is not None) else None
        with self._cond:
            self.frames += 1
            self._latest = Frame(image=image, depth=depth_m, t=t, seq=self.frames)
            self._cond.notify_all()
        return True
