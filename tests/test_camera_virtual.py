"""The RealSense driver against the virtual RealSense (rs.software_device fed by the simulated scene)."""
from __future__ import annotations

import time

import numpy as np
import pyrealsense2 as rs
import pytest

from firmware_bridge.realsense import (
    CameraDisconnected, CameraError, CameraNotFound, CameraSettingError, RealSenseCamera, RealSenseSettings,
)
from firmware_bridge.realsense.sim_camera import VirtualCamera
from firmware_bridge.realsense.virtual import VirtualRealSense
from firmware_bridge.sim import Scene
from firmware_bridge.types import Camera, Intrinsics

W, H, FPS = 96, 72, 60


class Joints:
    def __init__(self, q):
        self.q = np.asarray(q, float)

    def __call__(self):
        return self.q


@pytest.fixture
def scene():
    return Scene(Joints([0.5, 0.7]), width=W, height=H, workspace=0.5, seed=1)


@pytest.fixture
def virtual(scene):
    v = VirtualRealSense(scene.render, scene.intrinsics, fps=FPS, depth=True).start()
    yield v
    v.close()


def settings(v: VirtualRealSense, **kw) -> RealSenseSettings:
    base = dict(serial=v.serial, width=W, height=H, fps=FPS, timeout_s=0.5, reconnect_backoff_s=0.05,
                reconnect_attempts=2, queue_size=16, name="top")
    base.update(kw)
    return RealSenseSettings(**base)


def collect(cam: RealSenseCamera, n: int, timeout: float = 3.0) -> list:
    got = []
    cam.subscribe(got.append)
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(got) >= n, f"only {len(got)} frames in {timeout} s"
    return got[:n]


def test_frames_timestamps_and_intrinsics(virtual, scene):
    cam = RealSenseCamera(settings(virtual))
    assert isinstance(cam, Camera)
    with cam:
        frames = collect(cam, 20)
        assert cam.intrinsics == scene.intrinsics
        latest = cam.latest()
    assert [f.seq for f in frames] == list(range(frames[0].seq, frames[0].seq + 20))
    numbers = [f.frame_number for f in frames]
    assert numbers == list(range(numbers[0], numbers[0] + 20))
    ts = np.array([f.t for f in frames])
    assert np.all(np.diff(ts) > 0)
    best = float("inf")  # the smallest transport latency (arrival - capture) seen so far
    for f in frames:
        assert f.domain == "hardware_clock"
        assert f.t <= f.arrival
        # the driver's host time matches the virtual device's known capture time up to the smallest transport
        # latency it has seen (its estimate is the minimum offset): never before the capture, never worse than
        # that minimum, however slow the machine is
        best = min(best, f.arrival - virtual.sent_at[f.frame_number])
        assert 0 <= f.t - virtual.sent_at[f.frame_number] <= best + 1e-6
        # and the device clock conversion is exact up to the offset estimate
        assert f.device_ms / 1000 + virtual.host_offset_s == pytest.approx(virtual.sent_at[f.frame_number], abs=1e-6)
    # the frame period survives the conversion (device spacing is exactly 1/FPS)
    assert np.median(np.diff(ts)) == pytest.approx(1 / FPS, abs=0.004)
    assert latest is not None and latest.seq >= frames[-1].seq
    assert frames[-1].image.shape == (H, W, 3) and frames[-1].image.dtype == np.uint8
    # the picture is the scene's, bit for bit (uncompressed RGB8 through librealsense)
    assert np.array_equal(frames[-1].image, scene.render()[0])
    assert frames[-1].depth is None
    assert cam.counters()["drops"] == 0


def test_drops_are_counted_from_frame_number_gaps(virtual):
    got: list = []
    with RealSenseCamera(settings(virtual)) as cam:
        cam.subscribe(got.append)
        assert cam.wait_for_frame(2.0) is not None
        before = cam.counters()["drops"]
        virtual.skip(3)
        deadline = time.monotonic() + 3
        while len(got) < 15 and time.monotonic() < deadline:
            time.sleep(0.01)
        numbers = [f.frame_number for f in got]
    assert cam.counters()["drops"] - before == 3
    assert any(b - a == 4 for a, b in zip(numbers, numbers[1:]))


def test_depth_is_aligned_to_color_in_metres(virtual, scene):
    with RealSenseCamera(settings(virtual, depth=True)) as cam:
        f = collect(cam, 5)[-1]
        assert cam.depth_scale == pytest.approx(0.001)
    assert f.depth is not None and f.depth.dtype == np.float32 and f.depth.shape == (H, W)
    expected = scene.render()[1]
    # identical intrinsics and identity extrinsics: the aligned depth is the scene's depth (to the mm
    # quantisation of Z16), apart from a rim of pixels that the reprojection leaves empty
    close = np.abs(f.depth - expected) <= 0.0011
    assert close.mean() > 0.95
    u, v = np.round(scene.view.to_pixel(scene.end_effector())).astype(int)
    assert f.depth[v, u] == pytest.approx(0.5 - scene.renderer.arm_height, abs=0.0011)
    assert f.depth[H // 2, 2] == pytest.approx(0.5, abs=0.0011)


def test_exposure_and_white_balance_reach_the_sensor(virtual):
    with RealSenseCamera(settings(virtual, exposure=250.0, white_balance=3500.0)):
        color = virtual.color_sensor
        assert color.get_option(rs.option.enable_auto_exposure) == 0
        assert color.get_option(rs.option.exposure) == 250
        assert color.get_option(rs.option.enable_auto_white_balance) == 0
        assert color.get_option(rs.option.white_balance) == 3500
    with pytest.raises(CameraSettingError, match=r"exposure 20000 outside the device's range 1\.\.10000"):
        RealSenseCamera(settings(virtual, exposure=20000.0)).start()


def test_bad_resolution_and_unknown_serial_are_clear_errors(virtual):
    with pytest.raises(CameraSettingError, match=r"no RGB8 color stream at 640x480@30 \(available: 96x72@60\)"):
        RealSenseCamera(settings(virtual, width=640, height=480, fps=30)).start()
    with pytest.raises(CameraNotFound, match=r"serial 'NOPE123' not found .*" + virtual.serial):
        RealSenseCamera(settings(virtual, serial="NOPE123")).start()


def test_stalled_stream_is_restarted_and_counted(virtual):
    with RealSenseCamera(settings(virtual)) as cam:
        collect(cam, 3)
        virtual.pause()
        time.sleep(0.7)  # > timeout_s: the driver restarts the device
        virtual.resume()
        deadline = time.monotonic() + 5
        while cam.counters()["reconnects"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        seq = cam.latest().seq
        assert cam.wait_for_frame(2.0, after_seq=seq) is not None
        c = cam.counters()
    assert c["reconnects"] == 1 and c["timeouts"] >= 1 and cam.error is None


def test_vanished_camera_gives_up_with_an_error_naming_it(virtual):
    cam = RealSenseCamera(settings(virtual))
    cam.start()
    try:
        collect(cam, 3)
        virtual.unplug()
        with pytest.raises(CameraDisconnected, match=f"serial {virtual.serial}.*2 reconnect attempts failed"):
            cam.wait_for_frame(timeout=10.0)
        with pytest.raises(CameraDisconnected):
            cam.latest()
        c = cam.counters()
        assert c["reconnect_attempts"] == 2 and c["reconnects"] == 0
    finally:
        cam.stop()


def test_virtual_camera_owns_its_device(scene):
    cam = VirtualCamera(scene.render, scene.intrinsics, RealSenseSettings(width=W, height=H, fps=30, depth=False))
    with cam:
        f = cam.wait_for_frame(2.0)
        assert f is not None and np.array_equal(f.image, scene.render()[0])
        serial = cam.virtual.serial
    assert not cam.virtual.plugged
    with pytest.raises(CameraNotFound, match=serial):
        RealSenseCamera(RealSenseSettings(serial=serial, width=W, height=H, fps=30)).start()
    with pytest.raises(ValueError, match="renders 96x72"):
        VirtualCamera(scene.render, scene.intrinsics, RealSenseSettings(width=64, height=64))


def test_distortion_model_and_coefficients_are_reported():
    intr = Intrinsics(64, 48, 70.0, 71.0, 31.0, 24.5, "brown_conrady", (0.1, -0.05, 0.001, 0.002, 0.01))
    img = np.zeros((48, 64, 3), np.uint8)
    with VirtualRealSense(lambda t: (img, None), intr, fps=30) as v:
        with RealSenseCamera(RealSenseSettings(serial=v.serial, width=64, height=48, fps=30)) as cam:
            got = cam.intrinsics
    assert got.model == "brown_conrady"
    assert (got.width, got.height) == (64, 48)
    assert got.fx == pytest.approx(70.0) and got.fy == pytest.approx(71.0) and got.cy == pytest.approx(24.5)
    np.testing.assert_allclose(got.coeffs, intr.coeffs, rtol=1e-6)


def test_a_failing_driver_thread_is_reported_not_silent(virtual):
    def broken(frame):
        raise ValueError("subscriber bug")

    with RealSenseCamera(settings(virtual)) as cam:
        cam.subscribe(broken)
        with pytest.raises(CameraError, match="driver thread failed: ValueError: subscriber bug"):
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # the first frame may be handed out before the failure
                cam.wait_for_frame(0.5)
        with pytest.raises(CameraError):
            cam.latest()


def test_a_camera_already_streaming_elsewhere_is_a_clear_error(virtual):
    with RealSenseCamera(settings(virtual, name="first")):
        second = RealSenseCamera(settings(virtual, name="second"))
        with pytest.raises(CameraError, match=f"camera 'second' \\(serial {virtual.serial}\\): cannot start streaming"):
            second.start()
