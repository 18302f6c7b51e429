"""Geometry building blocks of calibration: SE(3) helpers, forward kinematics, ChArUco pose."""
from __future__ import annotations

import math

import numpy as np
import pytest

from calibration.charuco import BoardDetector, BoardSpec, board_from_dict, board_pose
from calibration.errors import CalibrationError
from calibration.kinematics import DHChain, URDFChain
from calibration.se3 import R_to_quat, R_to_rotvec, T_error, inv_T, make_T, quat_to_R, rotvec_to_R, rpy_to_R
from calibration.synthetic import render_view

SPEC = BoardSpec(7, 5, 0.04, 0.03, "DICT_5X5_100")
K = np.array([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]])


def test_quaternion_and_rotvec_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        w = rng.normal(0, 1.5, 3)
        R = rotvec_to_R(w)
        assert np.allclose(quat_to_R(R_to_quat(R)), R, atol=1e-12)
        assert np.allclose(rotvec_to_R(R_to_rotvec(R)), R, atol=1e-10)
    # 90 deg about z in scalar-last order
    assert np.allclose(R_to_quat(rotvec_to_R([0, 0, math.pi / 2])), [0, 0, math.sqrt(0.5), math.sqrt(0.5)])
    T = make_T(rotvec_to_R([0.3, -0.2, 1.0]), [0.1, 0.2, 0.3])
    assert np.allclose(T @ inv_T(T), np.eye(4), atol=1e-12)


def test_dh_two_link_planar_hand_computed():
    # Planar arm, links 0.3 and 0.2: tip at (0.3 cos a + 0.2 cos(a+b), 0.3 sin a + 0.2 sin(a+b)).
    chain = DHChain([[0.3, 0, 0, 0], [0.2, 0, 0, 0]])
    a, b = 0.4, -1.1
    T = chain.fk([a, b])
    assert np.allclose(T[:3, 3], [0.3 * math.cos(a) + 0.2 * math.cos(a + b), 0.3 * math.sin(a) + 0.2 * math.sin(a + b), 0])
    assert np.allclose(T[:3, :3], rotvec_to_R([0, 0, a + b]))


def test_dh_alpha_and_d_hand_computed():
    # One joint with d=0.1, a=0, alpha=+90 deg: at q=0 the z axis turns into -y, origin lifted by d.
    T = DHChain([[0.0, math.pi / 2, 0.1, 0.0]]).fk([0.0])
    assert np.allclose(T[:3, 3], [0, 0, 0.1])
    assert np.allclose(T[:3, 2], [0, -1, 0], atol=1e-12)
    with pytest.raises(CalibrationError, match="2-joint"):
        DHChain([[0.3, 0, 0, 0], [0.2, 0, 0, 0]]).fk([0.1])


URDF = """<robot name="planar">
  <link name="base"/><link name="l1"/><link name="l2"/><link name="tool"/>
  <joint name="j1" type="revolute"><parent link="base"/><child link="l1"/><origin xyz="0 0 0"/><axis xyz="0 0 1"/></joint>
  <joint name="j2" type="revolute"><parent link="l1"/><child link="l2"/><origin xyz="0.3 0 0"/><axis xyz="0 0 1"/></joint>
  <joint name="tool_fixed" type="fixed"><parent link="l2"/><child link="tool"/><origin xyz="0.2 0 0" rpy="0 0 0"/></joint>
</robot>"""


def test_urdf_matches_dh(tmp_path):
    p = tmp_path / "arm.urdf"
    p.write_text(URDF)
    chain = URDFChain(p)
    assert chain.joint_names == ["j1", "j2"] and chain.tip_link == "tool"
    dh = DHChain([[0.3, 0, 0, 0], [0.2, 0, 0, 0]])
    for q in ([0, 0], [0.5, -0.3], [2.0, 1.0]):
        assert np.allclose(chain.fk(q), dh.fk(q), atol=1e-12)


def test_urdf_rpy_is_fixed_axis_xyz():
    # URDF rpy: R = Rz(yaw) Ry(pitch) Rx(roll)
    R = rpy_to_R(0.1, 0.2, 0.3)
    expect = rotvec_to_R([0, 0, 0.3]) @ rotvec_to_R([0, 0.2, 0]) @ rotvec_to_R([0.1, 0, 0])
    assert np.allclose(R, expect)


def test_board_yaml_errors_name_the_problem():
    with pytest.raises(CalibrationError, match="unknown dictionary 'DICT_9X9_1'"):
        board_from_dict({"squares_x": 5, "squares_y": 7, "square_length": 0.04, "marker_length": 0.03, "dictionary": "DICT_9X9_1"})
    with pytest.raises(CalibrationError, match="marker_length"):
        board_from_dict({"squares_x": 5, "squares_y": 7, "square_length": 0.04, "marker_length": 0.05})
    with pytest.raises(CalibrationError, match="only 50"):
        board_from_dict({"squares_x": 12, "squares_y": 12, "square_length": 0.02, "marker_length": 0.015, "dictionary": "DICT_4X4_50"})
    assert board_from_dict({"squares_x": 5, "squares_y": 4, "square_length": 0.04, "marker_length": 0.03,
                            "dictionary": "5x5_100", "legacy_pattern": True}).build().getLegacyPattern()


def test_board_pose_from_render_is_accurate():
    """Rendered board → detection → PnP recovers the pose: sub-mm and ~0.1 deg at 0.45 m, 640x480."""
    det = BoardDetector(SPEC)
    T = make_T(rotvec_to_R([0.3, -0.2, 0.4]), [-0.12, -0.09, 0.45])
    d = det.detect(render_view(SPEC, K, T))
    assert d is not None and len(d.ids) >= 20
    Te, rms = board_pose(d, K, np.zeros(5))
    dr, dt = T_error(T, Te)
    assert rms < 0.2 and dr < 0.15 and dt < 0.001
    # The board's z points away from a camera seeing its printed face.
    assert Te[2, 2] > 0.8


def test_no_board_no_detection():
    img = np.full((480, 640), 128, np.uint8)
    assert BoardDetector(SPEC).detect(img) is None


def test_samples_yaml_validation(tmp_path):
    import yaml

    from calibration.samples import load_samples

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "board.yaml").write_text(yaml.safe_dump(SPEC.to_dict()))
    (tmp_path / "camera.yaml").write_text(yaml.safe_dump({"fx": 600, "fy": 600, "cx": 320, "cy": 240, "dist": [0] * 5,
                                                          "width": 640, "height": 480}))

    def check(samples, match, fk=None):
        (tmp_path / "samples.yaml").write_text(yaml.safe_dump({"samples": samples}))
        with pytest.raises(CalibrationError, match=match):
            load_samples(tmp_path, fk=fk, n_joints=2 if fk else None)

    pose = {"translation": [0, 0, 0.1], "quaternion": [0, 0, 0, 1]}
    check([{"image": "a.png", "joints": [0, 0], "gripper_pose": pose}], "exactly one")
    check([{"image": "a.png", "gripper_pose": {"translation": [0, 0], "quaternion": [0, 0, 0, 1]}}], "3 translation")
    check([{"image": "a.png", "gripper_pose": {"translation": [0, 0, 0], "quaternion": [0, 0, 0, 0]}}], "zero length")
    check([{"image": "a.png", "joints": [0, 0]}], "--robot")
    check([{"image": "a.png", "joints": [0, 0, 0]}], "3 joint values", fk=DHChain([[0.1, 0, 0, 0]] * 2).fk)
    check([{"image": "missing.png", "gripper_pose": pose}], r"samples\[0\]: image not found")
    (tmp_path / "samples.yaml").write_text(yaml.safe_dump({"samples": [{"image": "a.png", "gripper_pose": pose}]}))
    s, cam, board = load_samples(tmp_path)
    assert np.allclose(s[0].T_base_gripper[:3, 3], [0, 0, 0.1]) and cam.K[0, 0] == 600 and board == SPEC
    (tmp_path / "camera.yaml").write_text(yaml.safe_dump({"fx": 600, "fy": 600, "cx": 320, "cy": 240, "dist": [0] * 3,
                                                          "width": 640, "height": 480}))
    with pytest.raises(CalibrationError, match="dist has 3 values"):
        load_samples(tmp_path)
