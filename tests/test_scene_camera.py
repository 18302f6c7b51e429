"""The pure-Python scene camera, and the runtime falling back to it when pyrealsense2 cannot be imported.

A missing pyrealsense2 (or libusb-1.0) cannot be produced on this machine, which has both; the tests block
the import through sys.modules (then `import pyrealsense2` raises ImportError exactly as on a machine
without the wheel). Everything else is real: the scene, the emulated servos, the policy, the runtime.
"""
from __future__ import annotations

from example_configs import load_example
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from firmware_bridge.sim import Scene
from firmware_bridge.sim.scene_camera import SceneCamera, SceneCameraError
from firmware_bridge.types import Camera

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sim.yaml"


def _scene(angles=(0.3, -0.5), **kw) -> Scene:
    q = np.array(angles, dtype=float)
    return Scene(lambda: q, width=kw.pop("width", 64), height=kw.pop("height", 48), **kw)


def test_scene_camera_delivers_frames_with_host_times_and_counters():
    scene = _scene(depth=True)
    cam = SceneCamera(scene.render, scene.intrinsics, fps=50, depth=True, name="top")
    assert isinstance(cam, Camera)
    assert cam.latest() is None
    import time

    t_before = time.monotonic()
    with cam:
        first = cam.latest()  # start() renders one frame synchronously
        assert first is not None and first.seq == 1
        frames = [first]
        for _ in range(5):
            f = cam.wait_for_frame(timeout=2.0, after_seq=frames[-1].seq)
            assert f is not None
            frames.append(f)
    t_after = time.monotonic()
    assert [f.seq for f in frames] == sorted({f.seq for f in frames})
    times = np.array([f.t for f in frames])
    assert np.all(np.diff(times) > 0) and t_before <= times[0] and times[-1] <= t_after
    rgb, depth = scene.render()
    assert frames[-1].image.shape == (48, 64, 3) and frames[-1].image.dtype == np.uint8
    np.testing.assert_array_equal(frames[-1].image, rgb)  # the arm did not move: same picture
    assert frames[-1].depth is not None and frames[-1].depth.dtype == np.float32
    np.testing.assert_allclose(frames[-1].depth, depth)
    c = cam.counters()
    assert c["frames"] >= 6 and c["reconnects"] == 0 and c["render_ms_mean"] > 0
    n = c["frames"]
    threading.Event().wait(0.1)
    assert cam.counters()["frames"] == n  # stopped means stopped


def test_scene_camera_without_depth_and_a_failing_render():
    scene = _scene(depth=False)
    cam = SceneCamera(scene.render, scene.intrinsics, fps=30)
    with cam:
        assert cam.latest().depth is None

    calls = {"n": 0}

    def flaky(t):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("scene broke")
        return scene.render(t)

    cam = SceneCamera(flaky, scene.intrinsics, fps=100, name="flaky")
    cam.start()
    try:
        with pytest.raises(SceneCameraError, match="flaky.*scene broke"):
            for _ in range(50):
                cam.wait_for_frame(timeout=0.5)
    finally:
        cam.stop()
    with pytest.raises(SceneCameraError):
        cam.latest()

    wrong = SceneCamera(lambda t: (np.zeros((5, 5, 3), np.uint8), None), scene.intrinsics, name="wrong")
    with pytest.raises(SceneCameraError, match="expected"):
        wrong.start()
    with pytest.raises(ValueError, match="fps"):
        SceneCamera(scene.render, scene.intrinsics, fps=0)


@pytest.fixture
def no_realsense(monkeypatch):
    """pyrealsense2 not importable, as on a machine without the wheel or without libusb-1.0."""
    monkeypatch.setitem(sys.modules, "pyrealsense2", None)


def _cfg(**changes):
    from edgedp.config import parse_config

    data = load_example()
    data["rates"]["servo_hz"] = 250
    data["safety"]["start_ramp_time"] = 0.5
    data["telemetry"]["live"] = False
    for key, value in changes.items():
        data[key] = value
    return parse_config(data, base=EXAMPLE.parent)


def test_app_falls_back_to_the_scene_camera_and_the_sim_runs(no_realsense, tmp_path, capsys):
    from edgedp.app import build
    from edgedp.runtime.lifecycle import Runtime

    parts = build(_cfg())
    err = capsys.readouterr().err.strip().splitlines()
    notices = [line for line in err if "virtual RealSense unavailable" in line]
    assert len(notices) == 1, err
    assert "edgedp[realsense]" in notices[0] and "libusb-1.0" in notices[0]
    cam = parts.cameras["observation.image"]
    assert isinstance(cam, SceneCamera)
    rt = Runtime(parts, 2.5, tmp_path / "tel.json", plot=False, live=False, console=None)
    assert rt.run() == 0, rt.tel.notes
    tel = json.loads((tmp_path / "tel.json").read_text())
    assert tel["chunks"] >= 1, tel["notes"]
    assert tel["cameras"]["top"]["frames"] > 10


def test_app_without_realsense_still_refuses_a_realsense_camera(no_realsense):
    from edgedp.app import build
    from edgedp.errors import UserError

    cams = [{"name": "wrist", "kind": "realsense", "serial": "123", "width": 640, "height": 480, "fps": 30,
             "policy_key": "observation.image"}]
    with pytest.raises(UserError, match=r"pyrealsense2 is not importable.*'wrist'.*edgedp\[realsense\].*libusb") as e:
        build(_cfg(cameras=cams))
    assert "\n" not in str(e.value)
