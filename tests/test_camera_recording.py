"""Record the virtual RealSense with the driver (rs.recorder, .db3), play it back through the same driver."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from firmware_bridge.realsense import CameraSettingError, RealSenseCamera, RealSenseSettings
from firmware_bridge.realsense.virtual import VirtualRealSense
from firmware_bridge.sim import Scene

W, H, FPS = 80, 60, 60


def record(tmp_path: Path, depth: bool, n: int = 30):
    """Stream a moving arm for n frames while recording; returns (live frames, file, intrinsics)."""
    start = time.monotonic()
    scene = Scene(lambda: np.array([2.0 * (time.monotonic() - start), 0.8]), width=W, height=H,
                  workspace=0.5, task="reach_multimodal")
    out = tmp_path / "virtual.db3"
    live: list = []
    with VirtualRealSense(scene.render, scene.intrinsics, fps=FPS, depth=depth) as v:
        cam = RealSenseCamera(RealSenseSettings(serial=v.serial, width=W, height=H, fps=FPS, depth=depth,
                                                record_to=str(out), queue_size=16))
        cam.subscribe(live.append)
        with cam:
            deadline = time.monotonic() + 5
            while len(live) < n and time.monotonic() < deadline:
                time.sleep(0.01)
            intr = cam.intrinsics
    assert len(live) >= n
    return live, out, intr


def play(path: Path, depth: bool, slow: float = 0.0):
    frames: list = []
    cam = RealSenseCamera(RealSenseSettings(file=str(path), depth=depth, realtime=False))
    cam.subscribe(lambda f: (frames.append(f), time.sleep(slow)))
    with cam:
        deadline = time.monotonic() + 20
        while not cam.ended and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cam.ended
        assert cam.wait_for_frame(0.1) is None  # an ended file gives no more frames, and no error
        return frames, cam


def test_recording_plays_back_frame_for_frame(tmp_path):
    live, path, intr = record(tmp_path, depth=False)
    assert path.is_file() and not list(tmp_path.glob(".*partial*"))  # finished file in place, no temp left
    # a slow consumer: non-real-time playback waits for the driver instead of dropping frames
    frames, cam = play(path, depth=False, slow=0.005)
    assert cam.intrinsics == intr
    assert cam.counters()["drops"] == 0 and cam.counters()["reconnects"] == 0
    # the recorder may catch a frame after the driver's last one, never fewer
    assert len(live) <= len(frames) <= len(live) + 2
    for a, b in zip(live, frames):
        assert a.frame_number == b.frame_number
        assert a.device_ms == pytest.approx(b.device_ms, abs=1e-3)
        assert np.array_equal(a.image, b.image)
    # host times keep the recorded spacing even though playback ran faster or slower than real time
    np.testing.assert_allclose(np.diff([f.t for f in frames]), np.diff([f.device_ms for f in frames]) / 1000, atol=1e-6)
    assert len({f.image.tobytes() for f in frames}) > len(frames) // 2  # the arm really moved


def test_recorded_depth_plays_back_aligned(tmp_path):
    live, path, _ = record(tmp_path, depth=True, n=10)
    frames, cam = play(path, depth=True)
    assert cam.depth_scale == pytest.approx(0.001)
    by_number = {f.frame_number: f for f in frames}
    common = [f for f in live if f.frame_number in by_number]
    assert len(common) >= len(live) - 2
    for a in common:
        b = by_number[a.frame_number]
        assert np.array_equal(a.image, b.image)
        np.testing.assert_allclose(a.depth, b.depth, atol=1e-6)


def test_bad_recording_paths_are_refused(tmp_path):
    with pytest.raises(CameraSettingError, match="records only .db3 files, got 'x.bag'"):
        RealSenseCamera(RealSenseSettings(serial="X", record_to=str(tmp_path / "x.bag"))).start()
    with pytest.raises(CameraSettingError, match="folder .* does not exist"):
        RealSenseCamera(RealSenseSettings(serial="X", record_to=str(tmp_path / "no" / "x.db3"))).start()
    with pytest.raises(CameraSettingError, match="does not exist"):
        RealSenseCamera(RealSenseSettings(file=str(tmp_path / "missing.bag"))).start()
    with pytest.raises(CameraSettingError, match="must be a .bag or .db3 file"):
        RealSenseCamera(RealSenseSettings(file=str(tmp_path / "clip.mp4"))).start()
    junk = tmp_path / "junk.db3"
    junk.write_bytes(b"not a recording")
    with pytest.raises(CameraSettingError, match="cannot read recording"):
        RealSenseCamera(RealSenseSettings(file=str(junk))).start()


def test_failed_start_leaves_no_recording_behind(tmp_path):
    img = np.zeros((H, W, 3), np.uint8)
    scene_intr = Scene(lambda: np.zeros(2), width=W, height=H).intrinsics
    with VirtualRealSense(lambda t: (img, None), scene_intr, fps=FPS) as v:
        cam = RealSenseCamera(RealSenseSettings(serial=v.serial, width=W, height=H, fps=FPS, exposure=1e6,
                                                record_to=str(tmp_path / "r.db3")))
        with pytest.raises(CameraSettingError, match="exposure"):
            cam.start()
    assert list(tmp_path.iterdir()) == []


def test_discarded_recording_is_removed(tmp_path):
    img = np.zeros((H, W, 3), np.uint8)
    scene_intr = Scene(lambda: np.zeros(2), width=W, height=H).intrinsics
    with VirtualRealSense(lambda t: (img, None), scene_intr, fps=FPS) as v:
        cam = RealSenseCamera(RealSenseSettings(serial=v.serial, width=W, height=H, fps=FPS,
                                                record_to=str(tmp_path / "r.db3")))
        cam.start()
        assert cam.wait_for_frame(2.0) is not None
        cam.stop(keep_recording=False)
    assert list(tmp_path.iterdir()) == []
