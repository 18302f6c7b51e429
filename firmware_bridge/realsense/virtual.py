"""A virtual RealSense: an ``rs.software_device`` fed by a render callable.

Frames enter librealsense exactly like a camera's: through a sensor, with a frame number,
a device timestamp in the hardware-clock domain and the stream profile's intrinsics. The
driver (camera.py) therefore runs its own code — sensor open/start, syncer, align, clock
conversion, drop counting, recording — against it, without a camera.

The device clock is host monotonic time shifted by a known ``host_offset_s`` (set when a
driver first starts streaming), so tests can check the driver's conversion:
``host_t = device_ms / 1000 + host_offset_s``. Frames are produced only while a driver has
the color sensor started, as on a camera.

Fault hooks for tests: :meth:`skip` (the next n frame numbers are never delivered, as when
USB bandwidth runs out), :meth:`pause` / :meth:`resume` (frames stop, the device stays
present), :meth:`unplug` / :meth:`plug` (frames stop and the device can no longer be found).
"""
from __future__ import annotations

import collections
import itertools
import threading
import time
import weakref
from typing import Callable, Optional, Tuple

import numpy as np
import pyrealsense2 as rs

from firmware_bridge.types import Intrinsics

RenderFn = Callable[[float], Tuple[np.ndarray, Optional[np.ndarray]]]

# Virtual devices that are "plugged in", by serial; discovery.find_device looks here after the USB ones.
_REGISTRY: "weakref.WeakValueDictionary[str, VirtualRealSense]" = weakref.WeakValueDictionary()
_serials = itertools.count(1)

_DISTORTIONS = {
    "none": rs.distortion.none,
    "brown_conrady": rs.distortion.brown_conrady,
    "inverse_brown_conrady": rs.distortion.inverse_brown_conrady,
    "modified_brown_conrady": rs.distortion.modified_brown_conrady,
    "kannala_brandt4": rs.distortion.kannala_brandt4,
    "ftheta": rs.distortion.ftheta,
}


def registered(serial: str) -> Optional["VirtualRealSense"]:
    """The plugged-in virtual device with this serial, if any."""
    return _REGISTRY.get(serial)


def registered_devices() -> list["VirtualRealSense"]:
    return list(_REGISTRY.values())


def _range(lo: float, hi: float, step: float, default: float) -> rs.option_range:
    # Set fields by name: the positional constructor of pyrealsense2 2.59 does not take (min, max, step, default) in that order.
    r = rs.option_range()
    r.min, r.max, r.step, r.default = float(lo), float(hi), float(step), float(default)
    return r


def _rs_intrinsics(intr: Intrinsics) -> rs.intrinsics:
    out = rs.intrinsics()
    out.width, out.height = int(intr.width), int(intr.height)
    out.fx, out.fy, out.ppx, out.ppy = float(intr.fx), float(intr.fy), float(intr.cx), float(intr.cy)
    if intr.model not in _DISTORTIONS:
        raise ValueError(f"unknown distortion model '{intr.model}' (known: {', '.join(_DISTORTIONS)})")
    out.model = _DISTORTIONS[intr.model]
    coeffs = list(intr.coeffs) + [0.0] * (5 - len(intr.coeffs))
    out.coeffs = [float(c) for c in coeffs[:5]]
    return out


class VirtualRealSense:
    """A software RealSense with a color sensor (RGB8) and, optionally, a depth sensor (Z16)."""

    def __init__(
        self,
        render: RenderFn,
        intrinsics: Intrinsics,
        fps: int = 30,
        depth: bool = False,
        serial: Optional[str] = None,
        name: str = "Intel RealSense Virtual D435 (edgedp)",
        firmware: str = "5.16.0.1-virtual",
        depth_units: float = 0.001,
        boot_age_s: float = 0.001,
    ):
        if fps <= 0:
            raise ValueError(f"virtual camera fps must be positive, got {fps}")
        self.render = render
        self.intrinsics = intrinsics
        self.fps = int(fps)
        self.depth = bool(depth)
        self.serial = serial or f"VIRT{next(_serials):08d}"
        self.name = name
        self.depth_units = float(depth_units)
        # device_seconds = host_monotonic - host_offset_s; fixed when a driver first starts the stream
        # (the clock then reads boot_age_s), unchanged by later restarts.
        self._boot_age_s = float(boot_age_s)
        self._clock_started = False
        self.host_offset_s = time.monotonic() - self._boot_age_s
        self.frame_number = 0
        self.frames_sent = 0
        # frame number -> host capture time of the frames actually sent (bounded), for tests and checks
        self.sent_at: "collections.OrderedDict[int, float]" = collections.OrderedDict()
        self._skip = 0
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

        dev = rs.software_device()
        for key, value in (
            (rs.camera_info.name, name),
            (rs.camera_info.serial_number, self.serial),
            (rs.camera_info.firmware_version, firmware),
            (rs.camera_info.usb_type_descriptor, "virtual"),
            (rs.camera_info.product_line, "D400"),
            (rs.camera_info.physical_port, f"virtual://{self.serial}"),
        ):
            dev.register_info(key, value)
        rs_intr = _rs_intrinsics(intrinsics)
        self._color = dev.add_sensor("RGB Camera")
        self._color_profile = self._color.add_video_stream(
            self._video_stream(rs.stream.color, rs.format.rgb8, 3, 0, rs_intr), True
        ).as_video_stream_profile()
        self._color.add_option(rs.option.enable_auto_exposure, _range(0, 1, 1, 1), True)
        self._color.add_option(rs.option.exposure, _range(1, 10000, 1, 156), True)
        self._color.add_option(rs.option.enable_auto_white_balance, _range(0, 1, 1, 1), True)
        self._color.add_option(rs.option.white_balance, _range(2800, 6500, 10, 4600), True)
        self._depth = None
        self._depth_profile = None
        if self.depth:
            self._depth = dev.add_sensor("Stereo Module")
            self._depth_profile = self._depth.add_video_stream(
                self._video_stream(rs.stream.depth, rs.format.z16, 2, 1, rs_intr), True
            ).as_video_stream_profile()
            self._depth.add_read_only_option(rs.option.depth_units, self.depth_units)
            same_place = rs.extrinsics()
            same_place.rotation = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
            same_place.translation = [0.0, 0.0, 0.0]
            self._depth_profile.register_extrinsics_to(self._color_profile, same_place)
            self._color_profile.register_extrinsics_to(self._depth_profile, same_place)
        dev.create_matcher(rs.matchers.default)
        self.device = dev
        _REGISTRY[self.serial] = self

    def _video_stream(self, kind, fmt, bpp: int, uid: int, intr: rs.intrinsics) -> rs.video_stream:
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid = kind, 0, uid
        vs.width, vs.height, vs.fps = intr.width, intr.height, self.fps
        vs.bpp, vs.fmt, vs.intrinsics = bpp, fmt, intr
        return vs

    @property
    def color_sensor(self) -> rs.software_sensor:
        """The software color sensor (a software sensor is not a ``color_sensor`` to pyrealsense2)."""
        return self._color

    # -- life cycle -------------------------------------------------------------------------------
    def start(self) -> "VirtualRealSense":
        """Start the feeder thread (frames are pushed whether or not a driver listens, like a camera)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._feed, name=f"virtual-realsense-{self.serial}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop feeding and disappear from discovery."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self.unplug()

    def __enter__(self) -> "VirtualRealSense":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- fault hooks ------------------------------------------------------------------------------
    def skip(self, n: int) -> None:
        """Never deliver the next ``n`` frame numbers (their numbers are still used up)."""
        with self._lock:
            self._skip += int(n)

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def unplug(self) -> None:
        self.pause()
        if _REGISTRY.get(self.serial) is self:
            del _REGISTRY[self.serial]

    def plug(self) -> None:
        _REGISTRY[self.serial] = self
        self.resume()

    @property
    def plugged(self) -> bool:
        return _REGISTRY.get(self.serial) is self

    # -- clock ------------------------------------------------------------------------------------
    def _streaming(self, capture_t: float) -> bool:
        """True once a driver started the color sensor. The device clock starts at the first frame a
        driver can see: librealsense's timestamp matcher (syncer) stops pairing color with depth for good
        when the first frame it sees is stamped later than 7 frame periods after zero (pyrealsense2 2.59)."""
        try:
            active = len(self._color.get_active_streams()) > 0
        except RuntimeError:
            return False
        if active and not self._clock_started:
            self.host_offset_s = capture_t - self._boot_age_s
            self._clock_started = True
        return active

    def device_ms(self, host_t: float) -> float:
        return (host_t - self.host_offset_s) * 1000.0

    # -- feeder -----------------------------------------------------------------------------------
    def _feed(self) -> None:
        period = 1.0 / self.fps
        next_t = time.monotonic()
        while not self._stop.is_set():
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            if self._stop.is_set():
                break
            capture = next_t
            # A late feeder does not invent drops: only skip() makes gaps, so tests can count them exactly.
            next_t = max(next_t + period, time.monotonic() - period)
            if self._paused.is_set() or not self._streaming(capture):
                continue
            with self._lock:
                self.frame_number += 1
                if self._skip > 0:
                    self._skip -= 1
                    continue
            try:
                self.push(capture)
            except RuntimeError:
                # The sensor is not streaming (driver reconnecting): a camera would drop the frame too.
                pass

    def push(self, capture_t: float) -> None:
        """Render the scene at ``capture_t`` and hand one frame per sensor to librealsense."""
        rgb, depth = self.render(capture_t)
        h, w = self.intrinsics.height, self.intrinsics.width
        if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
            raise ValueError(f"render returned {rgb.shape} {rgb.dtype}, expected ({h}, {w}, 3) uint8")
        stamp = self.device_ms(capture_t)
        number = self.frame_number
        color = rs.software_video_frame()
        color.pixels = np.ascontiguousarray(rgb)
        color.bpp, color.stride = 3, 3 * w
        color.timestamp, color.domain, color.frame_number = stamp, rs.timestamp_domain.hardware_clock, number
        color.profile = self._color_profile
        self._color.on_video_frame(color)
        if self._depth is not None:
            if depth is None:
                z16 = np.zeros((h, w), np.uint16)
            else:
                z16 = np.clip(np.round(np.asarray(depth, np.float32) / self.depth_units), 0, 65535).astype(np.uint16)
            d = rs.software_video_frame()
            d.pixels = z16
            d.bpp, d.stride = 2, 2 * w
            d.timestamp, d.domain, d.frame_number = stamp, rs.timestamp_domain.hardware_clock, number
            d.profile, d.depth_units = self._depth_profile, self.depth_units
            self._depth.on_video_frame(d)
        self.frames_sent += 1
        self.sent_at[number] = capture_t
        if len(self.sent_at) > 10000:
            self.sent_at.popitem(last=False)
