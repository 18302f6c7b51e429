"""`edgedp cameras`: listing and recording (the virtual RealSense stands in for a camera)."""
from __future__ import annotations

import time

import numpy as np

from edgedp.cli import main
from firmware_bridge.realsense import RealSenseCamera, RealSenseSettings
from firmware_bridge.realsense.discovery import list_devices
from firmware_bridge.realsense.virtual import VirtualRealSense
from firmware_bridge.types import Intrinsics


def test_listing_matches_what_librealsense_sees(capsys):
    code = main(["cameras"])
    out = capsys.readouterr().out
    devices = list_devices()
    if devices:
        assert code == 0 and all(d.serial in out for d in devices)
    else:
        assert code == 1 and "no RealSense cameras connected" in out


def test_record_the_virtual_scene_and_play_it_back(tmp_path, capsys):
    out = tmp_path / "sim.db3"
    code = main(["cameras", "--record", str(out), "--virtual", "--seconds", "0.6",
                 "--width", "96", "--height", "96", "--fps", "30", "--depth"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["sim.db3"]
    assert "recorded" in printed and "96x96" in printed
    frames = []
    cam = RealSenseCamera(RealSenseSettings(file=str(out), depth=True, realtime=False))
    cam.subscribe(frames.append)
    with cam:
        deadline = time.monotonic() + 10
        while not cam.ended and time.monotonic() < deadline:
            time.sleep(0.02)
    assert 8 <= len(frames) <= 30
    assert frames[0].image.shape == (96, 96, 3) and frames[0].depth.shape == (96, 96)
    assert cam.intrinsics.width == 96 and cam.intrinsics.model == "none"


def test_user_mistakes_are_one_line_and_leave_nothing(tmp_path, capsys):
    assert main(["cameras", "--record", str(tmp_path / "a.bag"), "--virtual"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["edgedp cameras: --record: pyrealsense2 records only .db3 files, got 'a.bag'"]

    assert main(["cameras", "--record", str(tmp_path / "b.db3"), "--serial", "NOSUCH1", "--seconds", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "serial 'NOSUCH1' not found" in err[0]

    assert main(["cameras", "--record", str(tmp_path / "c.db3"), "--virtual", "--seconds", "0"]) == 2
    assert "--seconds must be positive" in capsys.readouterr().err

    assert main(["cameras", "--virtual"]) == 2
    assert "use it with --record" in capsys.readouterr().err
    assert main(["cameras", "--serial", "NOSUCH2"]) == 2
    assert "serial 'NOSUCH2' not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_modes_of_one_camera(capsys):
    intr = Intrinsics(64, 48, 50.0, 50.0, 31.5, 23.5)
    img = np.zeros((48, 64, 3), np.uint8)
    # a virtual device registered in this process is found by serial like a USB one
    with VirtualRealSense(lambda t: (img, None), intr, fps=15, depth=True) as v:
        assert main(["cameras", "--serial", v.serial]) == 0
    out = capsys.readouterr().out
    assert v.serial in out
    assert "RGB Camera" in out and "color" in out and "rgb8" in out and "64x48" in out and "15" in out
    assert "Stereo Module" in out and "z16" in out
