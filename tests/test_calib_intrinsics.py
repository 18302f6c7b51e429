"""Camera intrinsics from rendered ChArUco views (known K), bad-view rejection, RealSense factory values."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from calibration.charuco import BoardSpec
from calibration.errors import CalibrationError
from calibration.intrinsics import calibrate_charuco, from_realsense, list_images
from calibration.synthetic import random_views, render_view
from firmware_bridge.types import Intrinsics

SPEC = BoardSpec(7, 5, 0.04, 0.03, "DICT_5X5_100")
K = np.array([[610.0, 0, 318.0], [0, 605.0, 243.0], [0, 0, 1]])


def _images(folder, n=12, seed=0, noise=2.0, bad=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k, C in enumerate(random_views(SPEC, n, rng, tilt_rad=0.6, offset=0.08)):
        Kk = K.copy()
        if bad is not None and k == bad:
            Kk[1, 1] *= 1.08  # this view comes from a different camera: no pose explains it
        img = render_view(SPEC, Kk, C, noise_sigma=noise, blur_sigma=0.6, rng=rng)
        cv2.imwrite(str(folder / f"v{k:02d}.png"), img)
    return folder


def test_recovers_known_intrinsics_and_rejects_a_bad_view(tmp_path):
    folder = _images(tmp_path / "imgs", bad=5)
    res = calibrate_charuco(list_images(folder), SPEC)
    Ke = res.camera.K
    print(f"\nfx {Ke[0, 0]:.2f} fy {Ke[1, 1]:.2f} cx {Ke[0, 2]:.2f} cy {Ke[1, 2]:.2f} rms {res.rms:.3f} px; "
          f"rejected {[n for n, r in zip(res.names, res.rejected) if r]}; coverage {res.coverage_fraction:.2f}")
    assert res.rejected[res.names.index("v05")]
    assert sum(res.rejected) == 1
    assert abs(Ke[0, 0] - 610) < 3 and abs(Ke[1, 1] - 605) < 3
    assert abs(Ke[0, 2] - 318) < 3 and abs(Ke[1, 2] - 243) < 3
    assert res.rms < 0.3
    assert 0 < res.coverage_fraction <= 1
    assert res.per_view_rms[res.names.index("v05")] > 3 * np.median(res.per_view_rms)


def test_cli_intrinsics_writes_camera_yaml_and_png(tmp_path):
    folder = _images(tmp_path / "imgs", n=8, seed=3)
    board = tmp_path / "board.yaml"
    board.write_text(yaml.safe_dump(SPEC.to_dict()))
    out = tmp_path / "camera.yaml"
    r = subprocess.run([sys.executable, "-m", "edgedp.cli", "calibrate", "intrinsics", str(folder), "--board", str(board),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = yaml.safe_load(out.read_text())
    for key in ("fx", "fy", "cx", "cy", "dist", "width", "height", "rms_px", "per_view_rms_px", "coverage"):
        assert key in d
    assert (d["width"], d["height"]) == (640, 480)
    assert out.with_suffix(".png").is_file()
    # The output is a valid camera.yaml for hand-eye.
    from calibration.samples import load_camera

    assert abs(load_camera(out).K[0, 0] - 610) < 5

    empty = tmp_path / "empty"
    empty.mkdir()
    cv2.imwrite(str(empty / "grey.png"), np.full((480, 640), 128, np.uint8))
    r = subprocess.run([sys.executable, "-m", "edgedp.cli", "calibrate", "intrinsics", str(empty), "--board", str(board),
                        "--out", str(tmp_path / "c2.yaml")], capture_output=True, text=True)
    assert r.returncode == 2 and "not detected in any" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c2.yaml").exists()


def test_too_few_views_is_an_error(tmp_path):
    folder = _images(tmp_path / "imgs", n=2)
    with pytest.raises(CalibrationError, match="only 2 images"):
        calibrate_charuco(list_images(folder), SPEC)


def test_realsense_factory_intrinsics_to_camera_yaml():
    d400 = Intrinsics(640, 480, 615.2, 615.9, 322.1, 240.4, "inverse_brown_conrady", (0.0,) * 5)
    d = from_realsense(d400)
    assert d["dist"] == [0.0] * 5 and d["fx"] == pytest.approx(615.2) and "warnings" not in d
    d455 = Intrinsics(1280, 720, 640.0, 640.0, 640.0, 360.0, "inverse_brown_conrady", (-0.05, 0.06, 0.0, 0.001, -0.02))
    d = from_realsense(d455)
    assert d["dist"] == pytest.approx([-0.05, 0.06, 0.0, 0.001, -0.02]) and d["warnings"]


def test_cli_realsense_factory_intrinsics_from_virtual_device(tmp_path):
    """`--realsense SERIAL` through the real RealSense driver against a virtual rs.software_device."""
    from edgedp import cli
    from firmware_bridge.realsense.virtual import VirtualRealSense

    intr = Intrinsics(640, 480, 615.2, 615.9, 322.1, 240.4, "inverse_brown_conrady", (0.0,) * 5)
    img = np.zeros((480, 640, 3), np.uint8)
    with VirtualRealSense(lambda t: (img, None), intr, fps=15) as dev:
        out = tmp_path / "camera.yaml"
        assert cli.main(["calibrate", "intrinsics", "--realsense", dev.serial, "--fps", "15", "--out", str(out)]) == 0
        d = yaml.safe_load(out.read_text())
        assert d["fx"] == pytest.approx(615.2, abs=1e-3) and d["cy"] == pytest.approx(240.4, abs=1e-3)
        assert d["distortion_model"] == "inverse_brown_conrady" and d["dist"] == [0.0] * 5
    assert cli.main(["calibrate", "intrinsics", "--realsense", "NO-SUCH-SERIAL", "--out", str(tmp_path / "x.yaml")]) == 2
    assert not (tmp_path / "x.yaml").exists()


def test_cli_render_board_is_detectable(tmp_path):
    from edgedp import cli
    from calibration.charuco import BoardDetector

    board = tmp_path / "board.yaml"
    board.write_text(yaml.safe_dump(SPEC.to_dict()))
    out = tmp_path / "board.png"
    assert cli.main(["calibrate", "render-board", str(board), "--out", str(out), "--px-per-square", "60"]) == 0
    img = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    d = BoardDetector(SPEC).detect(img)
    assert d is not None and len(d.ids) == SPEC.n_corners
