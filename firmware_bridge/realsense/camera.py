"""The RealSense camera driver: one class for a USB camera, a recorded file and the virtual device.

Why not ``rs.pipeline``: in pyrealsense2 2.59, ``software_device.add_to(context)`` stores
only a weak reference to a device-info object nobody else holds, so a context (and hence a
pipeline) never lists a software device (see librealsense ``src/context.cpp``:
``_user_devices`` holds ``weak_ptr``; ``rs2_context_add_software_device`` creates the info
as a temporary). The pipeline is a thin layer over sensors and a syncer anyway, so the
driver drives that layer itself — ``device → sensors.open(profiles) → sensor.start(syncer)
→ syncer.try_wait_for_frames`` — and the exact same code runs for all three sources:

* USB camera: the device is found by serial in ``rs.context()``;
* recorded ``.bag`` / ``.db3``: ``context.load_device(path)`` gives a playback device (real-time
  playback can be switched off so tests read every frame as fast as they can);
* virtual RealSense: the ``rs.software_device`` of :mod:`firmware_bridge.realsense.virtual`.

The driver thread keeps only the newest frame. Per frame, and only here, it converts the
device timestamp to host monotonic seconds (clock.py), counts drops from frame-number gaps,
aligns depth to color when asked, and copies the pixels out of librealsense's pool.
When frames stop it restarts the device with backoff and, if that fails, stores a
:class:`CameraDisconnected` that ``latest()`` / ``wait_for_frame()`` raise.
"""
from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyrealsense2 as rs

from firmware_bridge.atomic_file import replace_file
from firmware_bridge.realsense.clock import AnchoredClock, DeviceClock
from firmware_bridge.realsense.discovery import find_device
from firmware_bridge.realsense.errors import CameraDisconnected, CameraError, CameraNotFound, CameraSettingError
from firmware_bridge.newest_frame import NewestFrameWaiter
from firmware_bridge.types import Frame, Intrinsics

RECORDING_SUFFIXES = (".bag", ".db3")


@dataclass
class RealSenseSettings:
    """What the driver needs; the runtime maps the run config's CameraConfig onto it.

    ``file`` selects playback (then width/height/fps come from the file). ``record_to`` (a
    ``.db3`` path) records everything the device streams while the driver runs.
    """

    serial: Optional[str] = None
    width: int = 640
    height: int = 480
    fps: int = 30
    depth: bool = False
    exposure: Optional[float] = None  # µs; None keeps auto exposure
    white_balance: Optional[float] = None  # K; None keeps auto white balance
    file: Optional[str] = None
    realtime: bool = True  # playback speed for files; False = as fast as the driver reads
    record_to: Optional[str] = None
    timeout_s: float = 1.0  # no frame for this long counts as "frames stopped"
    reconnect_attempts: int = 3
    reconnect_backoff_s: float = 0.2  # doubled after each failed attempt
    queue_size: int = 2  # frames librealsense may hold for us before dropping the oldest
    name: str = "camera"

    def describe(self) -> str:
        if self.file:
            return f"camera '{self.name}' (file {self.file})"
        return f"camera '{self.name}' (serial {self.serial or 'any'})"


@dataclass(frozen=True)
class RealSenseFrame(Frame):
    """A Frame plus what the device said about it (kept for checks, recordings and telemetry)."""

    frame_number: int = 0
    device_ms: float = 0.0
    domain: str = ""
    arrival: float = 0.0


def intrinsics_of(profile: rs.video_stream_profile) -> Intrinsics:
    i = profile.get_intrinsics()
    return Intrinsics(
        width=i.width, height=i.height, fx=i.fx, fy=i.fy, cx=i.ppx, cy=i.ppy,
        model=i.model.name, coeffs=tuple(float(c) for c in i.coeffs),
    )


@dataclass
class _Open:
    """Everything that belongs to one open session of the device (dropped whole on reconnect)."""

    device: rs.device
    sensors: list
    syncer: rs.syncer
    color_profile: rs.video_stream_profile
    depth_scale: Optional[float]
    playback: Optional[rs.playback] = None
    recorder: Optional[rs.recorder] = None
    keep: list = field(default_factory=list)  # objects that must outlive the sensors (context)


class RealSenseCamera(NewestFrameWaiter):
    """Implements firmware_bridge.types.Camera for RealSense sources (see module docstring)."""

    def __init__(self, settings: RealSenseSettings, find: Callable[[Optional[str]], rs.device] = find_device):
        self.settings = settings
        self._find = find
        self.intrinsics: Optional[Intrinsics] = None
        self.depth_scale: Optional[float] = None
        self.frames = 0
        self.drops = 0
        self.reconnects = 0
        self.reconnect_attempts = 0
        self.timeouts = 0
        self.unmatched = 0  # framesets without the color (or, when asked, depth) frame
        self.ended = False  # a recorded file has played to its end
        self.error: Optional[CameraError] = None
        self._clock = AnchoredClock() if settings.file else DeviceClock()
        self._align = rs.align(rs.stream.color) if settings.depth else None
        self._open: Optional[_Open] = None
        self._latest: Optional[RealSenseFrame] = None
        self._last_number: Optional[int] = None
        self._last_t = -float("inf")
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._record_tmp: Optional[str] = None
        self._subscribers: list[Callable[[RealSenseFrame], None]] = []
        self._keep_recording = True

    # -- Camera protocol --------------------------------------------------------------------------
    def start(self) -> None:
        """Open the source (errors raise here, synchronously) and start the driver thread."""
        if self._thread is not None:
            return
        self._check_paths()
        self._stop.clear()
        try:
            self._open = self._open_device(recording=True)
        except CameraError:  # already names the camera (CameraError is itself a RuntimeError)
            raise
        except RuntimeError as err:  # librealsense's own errors (device busy, USB trouble) are RuntimeError
            raise CameraError(f"{self.settings.describe()}: cannot start streaming: {err}") from None
        self._thread = threading.Thread(target=self._run, name=f"realsense-{self.settings.name}", daemon=True)
        self._thread.start()

    def latest(self) -> Optional[RealSenseFrame]:
        """The newest frame (None before the first); raises CameraDisconnected once the driver gave up."""
        if self.error is not None:
            raise self.error
        return self._latest

    def stop(self, keep_recording: bool = True) -> None:
        """Stop streaming; a recording is moved into place, or deleted with ``keep_recording=False``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._keep_recording = keep_recording
        self._close_device()
        with self._cond:
            self._cond.notify_all()

    # -- extras -----------------------------------------------------------------------------------
    def _no_more_frames(self) -> bool:
        return self.ended or self._stop.is_set()

    def subscribe(self, fn: Callable[[RealSenseFrame], None]) -> None:
        """Call ``fn(frame)`` in the driver thread for every frame (recording tools, tests); keep it short."""
        self._subscribers.append(fn)

    def counters(self) -> dict:
        """For telemetry: plain numbers, cheap to read from any thread."""
        return {
            "frames": self.frames,
            "drops": self.drops,
            "reconnects": self.reconnects,
            "reconnect_attempts": self.reconnect_attempts,
            "timeouts": self.timeouts,
            "unmatched": self.unmatched,
        }

    def __enter__(self) -> "RealSenseCamera":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- opening ----------------------------------------------------------------------------------
    def _check_paths(self) -> None:
        s = self.settings
        if s.file is not None:
            p = Path(s.file)
            if p.suffix.lower() not in RECORDING_SUFFIXES:
                raise CameraSettingError(f"{s.describe()}: a recording must be a .bag or .db3 file, got '{p.name}'")
            if not p.is_file():
                raise CameraSettingError(f"{s.describe()}: recording '{p}' does not exist")
        if s.record_to is not None:
            out = Path(s.record_to)
            if out.suffix.lower() != ".db3":
                raise CameraSettingError(f"{s.describe()}: pyrealsense2 records only .db3 files, got '{out.name}'")
            if not out.parent.is_dir():
                raise CameraSettingError(f"{s.describe()}: folder '{out.parent}' for the recording does not exist")

    def _source_device(self) -> tuple[rs.device, Optional[rs.playback], list]:
        s = self.settings
        if s.file is None:
            return self._find(s.serial), None, []
        ctx = rs.context()
        try:
            dev = ctx.load_device(str(s.file))
        except RuntimeError as err:
            raise CameraSettingError(f"{s.describe()}: cannot read recording: {err}") from None
        playback = dev.as_playback()
        playback.set_real_time(bool(s.realtime))
        return dev, playback, [ctx]

    def _open_device(self, recording: bool) -> _Open:
        s = self.settings
        dev, playback, keep = self._source_device()
        recorder = None
        if recording and s.record_to is not None:
            # librealsense picks the format from the suffix, so the temporary name keeps ".db3".
            self._record_tmp = str(Path(s.record_to).with_name(f".{Path(s.record_to).stem}.partial.db3"))
            if os.path.exists(self._record_tmp):
                os.remove(self._record_tmp)
            recorder = rs.recorder(self._record_tmp, dev)
            keep.append(dev)
            dev = recorder
        opened: list = []
        plan: list = []
        color_sensor = None
        try:
            plan = self._choose_profiles(dev, from_file=playback is not None)
            for sensor, profiles in plan:
                sensor.open(profiles if len(profiles) > 1 else profiles[0])
                opened.append(sensor)
            color_sensor = next(sen for sen, profs in plan if any(p.stream_type() == rs.stream.color for p in profs))
            if playback is None:
                self._apply_options(color_sensor)
            syncer = rs.syncer(max(1, int(s.queue_size)))
            for sensor in opened:
                sensor.start(syncer)
        except Exception:
            for sensor in opened:
                _quietly(sensor.stop)
                _quietly(sensor.close)
            if recorder is not None:
                plan = opened = color_sensor = dev = recorder = None  # type: ignore[assignment]
                gc.collect()  # the recorder closes its file only when destroyed
                self._keep_recording = False
                self._finish_recording()
            raise
        color_profile = next(p for _, profs in plan for p in profs if p.stream_type() == rs.stream.color)
        self.intrinsics = intrinsics_of(color_profile.as_video_stream_profile())
        depth_scale = None
        if s.depth:
            depth_sensor = next(sen for sen, profs in plan if any(p.stream_type() == rs.stream.depth for p in profs))
            if depth_sensor.supports(rs.option.depth_units):
                depth_scale = float(depth_sensor.get_option(rs.option.depth_units))
        self.depth_scale = depth_scale
        return _Open(dev, opened, syncer, color_profile.as_video_stream_profile(), depth_scale, playback, recorder, keep)

    def _choose_profiles(self, dev: rs.device, from_file: bool) -> list[tuple[rs.sensor, list]]:
        """(sensor, [profiles]) to open: RGB8 color at the asked size/fps (a file's own size), Z16 depth if asked."""
        s = self.settings
        color = depth = None
        color_seen: list[str] = []
        depth_candidates = []
        for sensor in dev.query_sensors():
            for p in sensor.get_stream_profiles():
                if p.stream_type() == rs.stream.color and p.format() == rs.format.rgb8:
                    v = p.as_video_stream_profile()
                    color_seen.append(f"{v.width()}x{v.height()}@{v.fps()}")
                    if color is None and (from_file or (v.width(), v.height(), v.fps()) == (s.width, s.height, s.fps)):
                        color = (sensor, p)
                elif s.depth and p.stream_type() == rs.stream.depth and p.format() == rs.format.z16:
                    depth_candidates.append((sensor, p))
        if color is None:
            if not color_seen:
                raise CameraSettingError(f"{s.describe()}: the device has no RGB8 color stream")
            raise CameraSettingError(
                f"{s.describe()}: no RGB8 color stream at {s.width}x{s.height}@{s.fps} "
                f"(available: {', '.join(sorted(set(color_seen)))})"
            )
        if s.depth:
            fps = color[1].fps()
            same_rate = [c for c in depth_candidates if c[1].fps() == fps]
            if not same_rate:
                raise CameraSettingError(f"{s.describe()}: depth was asked but the device has no Z16 depth stream at {fps} fps")
            cw, ch = color[1].as_video_stream_profile().width(), color[1].as_video_stream_profile().height()

            def distance(c):
                v = c[1].as_video_stream_profile()
                return abs(v.width() - cw) + abs(v.height() - ch)

            depth = min(same_rate, key=distance)
        plan: list[tuple[rs.sensor, list]] = []
        for sensor, profile in [color] + ([depth] if depth else []):
            for entry in plan:
                if entry[0] == sensor:
                    entry[1].append(profile)
                    break
            else:
                plan.append((sensor, [profile]))
        return plan

    def _apply_options(self, sensor: rs.sensor) -> None:
        s = self.settings
        for value, auto, option, what in (
            (s.exposure, rs.option.enable_auto_exposure, rs.option.exposure, "exposure"),
            (s.white_balance, rs.option.enable_auto_white_balance, rs.option.white_balance, "white_balance"),
        ):
            if value is None:
                continue
            if not sensor.supports(option):
                raise CameraSettingError(f"{s.describe()}: the color sensor has no manual {what}")
            if sensor.supports(auto):
                sensor.set_option(auto, 0)
            r = sensor.get_option_range(option)
            if not r.min <= value <= r.max:
                raise CameraSettingError(f"{s.describe()}: {what} {value:g} outside the device's range {r.min:g}..{r.max:g}")
            try:
                sensor.set_option(option, float(value))
            except RuntimeError as err:
                raise CameraSettingError(f"{s.describe()}: cannot set {what} to {value:g}: {err}") from None

    def _close_device(self) -> None:
        o, self._open = self._open, None
        if o is None:
            return
        for sensor in o.sensors:
            _quietly(sensor.stop)
        for sensor in o.sensors:
            _quietly(sensor.close)
        if o.recorder is not None:
            o.recorder.pause()
            del o.recorder  # the recorder writes the file out when it is destroyed
            o.recorder = None
            o.sensors.clear()
            o.device = None  # type: ignore[assignment]
            gc.collect()
            self._finish_recording()

    def _finish_recording(self) -> None:
        tmp, self._record_tmp = self._record_tmp, None
        if tmp and os.path.exists(tmp):
            if self._keep_recording:
                replace_file(tmp, self.settings.record_to)  # fsynced, renamed, folder fsynced
            else:
                os.remove(tmp)

    # -- driver thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        """Never dies silently: whatever stops the thread is stored and raised to the frame readers."""
        try:
            self._loop()
        except CameraError as err:
            self._fail(err)
        except Exception as err:  # a bug or a subscriber's error: readers must not get stale frames forever
            self._fail(CameraError(f"{self.settings.describe()}: driver thread failed: {type(err).__name__}: {err}"))

    def _fail(self, err: CameraError) -> None:
        with self._cond:
            self.error = err
            self._cond.notify_all()

    def _loop(self) -> None:
        timeout_ms = max(1, int(self.settings.timeout_s * 1000))
        # A file's end shows only as "no more frames": poll in short slices so the end is seen quickly.
        slice_ms = min(timeout_ms, 100) if self.settings.file else timeout_ms
        waited_ms = 0
        while not self._stop.is_set():
            o = self._open
            try:
                ok, fs = o.syncer.try_wait_for_frames(slice_ms) if o is not None else (False, None)
            except RuntimeError:
                ok, fs = False, None
            if self._stop.is_set():
                break
            if ok:
                waited_ms = 0
                self._handle(fs, time.monotonic())
                continue
            if o is not None and o.playback is not None and o.playback.current_status() == rs.playback_status.stopped:
                self._set_ended()
                break
            waited_ms += slice_ms
            if waited_ms < timeout_ms:
                continue
            waited_ms = 0
            self.timeouts += 1
            self._reconnect()

    def _set_ended(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify_all()

    def _reconnect(self) -> None:
        s = self.settings
        self._close_device()
        last: Exception = CameraNotFound("no frames")
        delay = s.reconnect_backoff_s
        for _ in range(max(0, s.reconnect_attempts)):
            if self._stop.wait(delay):
                return
            delay *= 2
            self.reconnect_attempts += 1
            try:
                self._open = self._open_device(recording=False)
                ok, fs = self._open.syncer.try_wait_for_frames(max(1, int(s.timeout_s * 1000)))
            except (CameraError, RuntimeError) as err:
                last = err
                self._close_device()
                continue
            if ok:
                self.reconnects += 1
                self._clock.reset()
                self._handle(fs, time.monotonic())
                return
            last = CameraError(f"no frames within {s.timeout_s:g} s after restarting")
            self._close_device()
        raise CameraDisconnected(
            f"{s.describe()}: frames stopped and {s.reconnect_attempts} reconnect attempts failed (last: {last})"
        )

    def _handle(self, fs: rs.composite_frame, arrival: float) -> None:
        color = fs.get_color_frame()
        depth_m = None
        if not color:
            self.unmatched += 1
            return
        if self._align is not None:
            if not fs.get_depth_frame():
                self.unmatched += 1
                return
            aligned = self._align.process(fs)
            color = aligned.get_color_frame()
            depth = aligned.get_depth_frame()
            scale = self.depth_scale or depth.get_units()
            depth_m = np.asanyarray(depth.get_data()).astype(np.float32) * np.float32(scale)
        number = int(color.get_frame_number())
        if self._last_number is not None and number > self._last_number + 1:
            self.drops += number - self._last_number - 1
        self._last_number = number  # a smaller number means the device restarted: new baseline
        device_ms = float(color.get_timestamp())
        domain = color.get_frame_timestamp_domain().name
        t = self._clock.to_host(device_ms, domain, arrival)
        if t <= self._last_t:
            t = self._last_t + 1e-6  # keep time strictly increasing across clock re-estimates
        self._last_t = t
        image = np.array(np.asanyarray(color.get_data()), dtype=np.uint8, copy=True)
        with self._cond:
            self.frames += 1
            frame = RealSenseFrame(
                image=image, depth=depth_m, t=t, seq=self.frames,
                frame_number=number, device_ms=device_ms, domain=domain, arrival=arrival,
            )
            self._latest = frame
            self._cond.notify_all()
        for fn in self._subscribers:
            fn(frame)


def _quietly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except RuntimeError:
        pass
