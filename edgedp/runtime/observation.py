"""Observations assembled by time from camera frames and joint states.

The policy was trained on `n_obs_steps` samples spaced by its action period, the newest being "now". Here
"now" is the newest time every source has reached (t_last = min over sources of their newest sample); the
sample for time t_last - i*dt is, per source, the newest one taken at or before that time. An observation
whose t_last is older than `max_age` is refused (StaleObservation): the planner would otherwise plan for a
world that has moved on.

Joint states come from the servo loop through a second ChunkRing (snapshots of its recent history), so the
same code works when the servo loop lives in another process. Frames come from collector threads that keep
each camera's recent frames with their capture times.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from edgedp.runtime.ring import ChunkRing


class StaleObservation(Exception):
    """The newest complete observation is older than the allowed maximum age."""

    def __init__(self, age: float, max_age: float, source: str):
        super().__init__(f"observation is {age * 1000:.0f} ms old (max {max_age * 1000:.0f} ms; oldest source: {source})")
        self.age = age
        self.source = source


class NotReady(Exception):
    """Not enough history yet (just started, or a source has produced nothing)."""


class StateHistory:
    """Consumer side of the servo loop's joint-state ring: the newest snapshot of (t, q) samples."""

    def __init__(self, ring: ChunkRing):
        self.ring = ring
        self._buf = np.zeros((ring.spec.capacity, ring.spec.dim))
        self._seq = 0
        self._n = 0

    def refresh(self) -> None:
        h = self.ring.read_newest(self._buf, after_seq=self._seq)
        if h is not None:
            self._seq = h.seq
            self._n = h.length

    @property
    def times(self) -> np.ndarray:
        return self._buf[: self._n, 0]

    @property
    def positions(self) -> np.ndarray:
        return self._buf[: self._n, 1:]

    def newest(self) -> Optional[tuple[float, np.ndarray]]:
        self.refresh()
        if self._n == 0:
            return None
        return float(self._buf[self._n - 1, 0]), self._buf[self._n - 1, 1:].copy()


class FrameHistory:
    """Polls one camera's `latest()` on a thread and keeps its recent frames by capture time.

    `camera_delay` (s, from `edgedp calibrate time-offset`) is how much later the camera's timestamps show
    the world than the joint stream does; frames are stored at t_true = t_camera - camera_delay, so images
    and joint states of one observation step show the same instant.
    """

    def __init__(self, name: str, camera, keep_seconds: float, poll_period: float = 0.004,
                 camera_delay: float = 0.0):
        self.name = name
        self.camera = camera
        self.camera_delay = float(camera_delay)
        self.keep = keep_seconds
        self.poll = poll_period
        self._frames: deque = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_seq = None
        self.frames_seen = 0
        self.errors = 0
        self.started_at: Optional[float] = None  # host monotonic time the collector started
        self.last_new_at: Optional[float] = None  # host monotonic time the newest frame was collected
        self.last_error: Optional[str] = None  # the driver's last complaint, for the "camera lost" message

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"frames-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                f = self.camera.latest()
            except Exception as exc:  # a hiccup must not kill the collector; it shows as staleness, then loss
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                f = None
            if f is not None and f.seq != self._last_seq:
                self._last_seq = f.seq
                self.last_new_at = time.monotonic()
                self.add(f.t, f.image)
            self._stop.wait(self.poll)

    def silent_for(self, now: float) -> Optional[float]:
        """Seconds since the newest frame arrived (or since start, before the first); None when not started."""
        last = self.last_new_at if self.last_new_at is not None else self.started_at
        return None if last is None else now - last

    def add(self, t: float, image: np.ndarray) -> None:
        """Keep a frame the camera stamped `t`; it is stored at t - camera_delay (the instant it shows)."""
        t = t - self.camera_delay
        with self._lock:
            self._frames.append((t, image))
            self.frames_seen += 1
            while self._frames and self._frames[0][0] < t - self.keep:
                self._frames.popleft()

    def snapshot(self) -> list[tuple[float, np.ndarray]]:
        with self._lock:
            return list(self._frames)

    def stop(self, timeout: float = 0.5) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def pick_at_or_before(times: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Index of the newest sample at or before each wanted time (-1 where there is none)."""
    return np.searchsorted(times, wanted, side="right") - 1


@dataclass
class Observation:
    data: dict  # feature name -> array with a leading n_obs_steps axis
    t: float  # time of the newest sample (what the chunk's action n_obs_steps-1 is for)
    age: float  # seconds between t and assembly
    sample_times: dict  # source -> the capture times actually used


class ObservationWindow:
    """Builds the policy's observation dict for `n_obs_steps` times spaced by `dt`."""

    def __init__(self, n_obs_steps: int, dt: float, max_age: float, states: StateHistory, state_key: str,
                 cameras: dict[str, FrameHistory], image_shapes: dict[str, tuple[int, int, int]],
                 clock: Callable[[], float] = time.monotonic):
        self.n = n_obs_steps
        self.dt = dt
        self.max_age = max_age
        self.states = states
        self.state_key = state_key
        self.cameras = cameras  # policy image key -> frame history
        self.image_shapes = image_shapes  # policy image key -> (3, H, W)
        self.clock = clock

    def assemble(self, now: float | None = None) -> Observation:
        now = self.clock() if now is None else now
        self.states.refresh()
        st, sq = self.states.times, self.states.positions
        if st.shape[0] == 0:
            raise NotReady("no joint states yet")
        frames = {k: h.snapshot() for k, h in self.cameras.items()}
        newest = {"joints": float(st[-1])}
        for k, fr in frames.items():
            if not fr:
                raise NotReady(f"no frames yet from camera feeding {k}")
            newest[k] = fr[-1][0]
        oldest_source = min(newest, key=newest.get)
        t_last = newest[oldest_source]
        age = now - t_last
        if age > self.max_age:
            raise StaleObservation(age, self.max_age, oldest_source)
        wanted = t_last - self.dt * np.arange(self.n - 1, -1, -1)
        idx = pick_at_or_before(st, wanted)
        if idx[0] < 0:
            raise NotReady("joint-state history shorter than the observation window")
        data = {self.state_key: sq[idx].astype(np.float32)}
        used = {"joints": st[idx].copy()}
        for k, fr in frames.items():
            ft = np.array([f[0] for f in fr])
            fi = pick_at_or_before(ft, wanted)
            if fi[0] < 0:
                raise NotReady(f"camera history for {k} shorter than the observation window")
            # Sources without an image shape (Push-T's keypoint sensor) pass their vectors through as they are.
            data[k] = np.stack([_fit(fr[i][1], self.image_shapes[k]) if k in self.image_shapes else fr[i][1]
                                for i in fi])
            used[k] = ft[fi]
        return Observation(data, t_last, age, used)


def _fit(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Resize an RGB uint8 HxWx3 frame to the policy's (3, H, W) feature size (kept HxWx3 uint8)."""
    _, h, w = shape
    if image.shape[0] == h and image.shape[1] == w:
        return image
    import cv2

    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
