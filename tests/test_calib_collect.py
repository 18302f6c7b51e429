"""Guided hand-eye collection end to end on real parts: the dynamixel-sdk bus driver on the pty emulator moves
a 6-joint arm, a virtual RealSense (rs.software_device, through the RealSense driver) renders the ChArUco board
as the camera on the gripper sees it from the emulator's actual joint angles; the collected directory is then
calibrated and must give back the camera mounting."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from calibration.collect import HandEyeCollector
from calibration.handeye_run import calibrate_handeye
from calibration.kinematics import DHChain
from calibration.samples import CameraModel, load_samples
from calibration.se3 import T_error, inv_T
from calibration.synthetic import render_view
from firmware_bridge.dynamixel.bus import BusSpec, DynamixelBus, JointSpec
from firmware_bridge.realsense import RealSenseCamera, RealSenseSettings
from firmware_bridge.realsense.virtual import VirtualRealSense
from firmware_bridge.types import Intrinsics
from test_calib_handeye import DH, K, SPEC, _joint_samples

W_PX, H_PX = 640, 480


@pytest.fixture
def rig():
    chain, X, W, qs, _ = _joint_samples(n=8, seed=11)
    bus = DynamixelBus(BusSpec("emulator", tick_budget_s=0.05), [JointSpec(f"j{k}", k + 1, "xm430-w350") for k in range(6)])
    bus.connect()
    ids = list(range(1, 7))
    emulator = bus.emulator  # kept: bus.close() drops its reference

    def render(t):
        pos = emulator.present_positions_rad()
        q = np.array([pos[i] for i in ids])
        C = inv_T(X) @ inv_T(chain.fk(q)) @ W
        grey = render_view(SPEC, K, C, (W_PX, H_PX), supersample=2, noise_sigma=1.5, rng=np.random.default_rng(int(t * 1e3)))
        return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), None

    intr = Intrinsics(W_PX, H_PX, K[0, 0], K[1, 1], K[0, 2], K[1, 2], "inverse_brown_conrady", (0.0,) * 5)
    dev = VirtualRealSense(render, intr, fps=15).start()
    cam = RealSenseCamera(RealSenseSettings(serial=dev.serial, width=W_PX, height=H_PX, fps=15, name="wrist"))
    cam.start()
    yield bus, cam, chain, X, qs
    cam.stop()
    dev.close()
    bus.close()


def test_collect_poses_then_calibrate(rig, tmp_path):
    bus, cam, chain, X, qs = rig
    intr = cam.intrinsics
    model = CameraModel(intr.width, intr.height, intr.matrix(), np.asarray(intr.coeffs, float))
    away = qs[0].copy()
    away[0] += 1.2  # the base turns the camera away from the board
    poses = list(qs[:4]) + [qs[3], away] + list(qs[4:])  # a duplicate and a blind pose among them
    said = []
    col = HandEyeCollector(bus, cam, SPEC, model, tmp_path / "samples", settle_s=0.15)
    entries = col.run_poses(poses, say=said.append)
    bus.set_torque(False)
    assert len(entries) == 8, said
    assert any("too close to sample 3" in s for s in said)
    assert any("board not seen" in s for s in said)
    samples, camera, board = load_samples(tmp_path / "samples", fk=DHChain(DH).fk, n_joints=6)
    res = calibrate_handeye(samples, camera, board, "eye_in_hand", "park", leave_one_out=False)
    dr, dt = T_error(X, res.X)
    print(f"\ncollected on emulator + virtual RealSense: {dr:.4f} deg, {dt * 1000:.3f} mm, reprojection {res.reproj_rms_total:.3f} px")
    # Joint angles are read with 4096-tick resolution (0.09 deg per joint), so allow a little more than on exact poses.
    assert dr < 0.3 and dt < 0.003


def test_cli_manual_collection(rig, tmp_path, monkeypatch):
    """`edgedp calibrate collect-handeye` by hand: torque off, the user poses the arm and presses Enter."""
    import yaml

    import edgedp.commands.calibrate as cmd
    from edgedp import cli

    bus, cam, chain, X, qs = rig
    emulator = bus.emulator
    cfg = {"robot": {"bus": {"port": "emulator"}, "joints": [
        {"name": f"j{k}", "id": k + 1, "model": "xm430-w350", "min": -3.1, "max": 3.1, "max_velocity": 2,
         "max_acceleration": 10} for k in range(6)]},
        "cameras": [{"name": "wrist", "kind": "realsense", "serial": "0", "width": 640, "height": 480, "fps": 15}],
        "policy": {"checkpoint": "preset:small"}}
    (tmp_path / "robot.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "board.yaml").write_text(yaml.safe_dump(SPEC.to_dict()))
    monkeypatch.setattr(cmd, "_open_robot", lambda c: bus)
    monkeypatch.setattr(cmd, "_open_camera", lambda c, name: cam)
    answers = []
    for q in qs[:5]:
        answers.append((q, ""))
    answers.append((None, "q"))
    it = iter(answers)

    def user(text=""):
        q, ans = next(it)
        if q is not None:
            for k in range(6):
                emulator.servo(k + 1).set_external_position(angle_rad=float(q[k]))
            import time

            time.sleep(0.15)  # hold still until a newer frame exists
        return ans

    monkeypatch.setattr("builtins.input", user)
    out = tmp_path / "manual"
    assert cli.main(["calibrate", "collect-handeye", str(tmp_path / "robot.yaml"), "--out", str(out),
                     "--board", str(tmp_path / "board.yaml")]) == 0
    data = yaml.safe_load((out / "samples.yaml").read_text())
    assert len(data["samples"]) == 5
    for entry, q in zip(data["samples"], qs):
        assert np.allclose(entry["joints"], q, atol=0.003)
        assert (out / entry["image"]).is_file()
    assert (out / "camera.yaml").is_file() and (out / "board.yaml").is_file()
