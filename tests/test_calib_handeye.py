"""Hand-eye calibration against ground truth: rendered ChArUco views at known poses, both setups.

Measured (printed with -s): see docs/calibration.md for the table these produce.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from calibration.charuco import BoardSpec
from calibration.errors import CalibrationError
from calibration.handeye import METHODS, opencv_has_handeye, solve_closed_form
from calibration.handeye_run import calibrate_handeye, observe
from calibration.kinematics import DHChain
from calibration.samples import load_samples
from calibration.se3 import T_error, inv_T, make_T, rotvec_to_R
from calibration.synthetic import random_views, robot_poses_for_views, write_handeye_dataset

SPEC = BoardSpec(7, 5, 0.04, 0.03, "DICT_5X5_100")
K = np.array([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]])
SIZE = (640, 480)
# Ground truth: camera on the gripper (eye_in_hand, gripper←camera) / fixed camera (eye_to_hand, base←camera).
TRUTH = {
    "eye_in_hand": (make_T(rotvec_to_R([0.1, -0.2, 1.2]), [0.03, -0.05, 0.08]),  # X = gripper←camera
                    make_T(rotvec_to_R([3.0, 0.1, 0.2]), [0.5, 0.0, 0.05])),  # W = base←board
    "eye_to_hand": (make_T(rotvec_to_R([2.5, 0.3, 0.2]), [0.6, 0.1, 0.5]),  # X = base←camera
                    make_T(rotvec_to_R([0.2, 0.1, 0.3]), [0.0, -0.1, 0.12])),  # W = gripper←board
}


def _dataset(tmp_path, mode, n=10, noise=0.0, blur=0.0, seed=1, views=None):
    X, W = TRUTH[mode]
    views = views if views is not None else random_views(SPEC, n, np.random.default_rng(seed))
    folder = tmp_path / f"{mode}_{seed}_{noise}"
    write_handeye_dataset(folder, SPEC, K, SIZE, X, W, mode, views=views, noise_sigma=noise, blur_sigma=blur, seed=seed)
    return folder, X


@pytest.mark.parametrize("mode", ["eye_in_hand", "eye_to_hand"])
def test_recovers_ground_truth_clean_and_noisy(tmp_path, mode):
    errors = {}
    for noise, blur in ((0.0, 0.0), (6.0, 1.0)):
        folder, X = _dataset(tmp_path, mode, noise=noise, blur=blur)
        samples, cam, board = load_samples(folder)
        res = calibrate_handeye(samples, cam, board, mode, "park", leave_one_out=(noise == 0))
        dr, dt = T_error(X, res.X)
        dr0, dt0 = T_error(X, res.X_closed_form)
        errors[noise] = (dr, dt * 1000, dr0, dt0 * 1000, res.reproj_rms_total)
        print(f"\n{mode} noise={noise} blur={blur}: refined {dr:.4f} deg {dt * 1000:.3f} mm; "
              f"closed-form {dr0:.4f} deg {dt0 * 1000:.3f} mm; reprojection {res.reproj_rms_total:.3f} px")
        assert len(res.names) == 10 and not res.skipped
        assert dr < 0.2 and dt < 0.002
        assert res.reproj_rms_total < 0.5
        assert res.warnings == []
    # The clean run also reports a tight leave-one-out spread.
    assert errors[0.0][1] < 1.0


def test_robot_pose_noise_degrades_gracefully_and_is_reported(tmp_path):
    """Jitter the robot poses (as joint encoder error would): error grows with it, residuals say so."""
    mode = "eye_in_hand"
    folder, X = _dataset(tmp_path, mode, seed=2)
    samples, cam, board = load_samples(folder)
    rng = np.random.default_rng(7)
    rows = []
    for sigma_deg, sigma_mm in ((0.0, 0.0), (0.2, 1.0), (0.5, 3.0)):
        noisy = []
        for s in samples:
            dT = make_T(rotvec_to_R(rng.normal(0, math.radians(sigma_deg), 3)), rng.normal(0, sigma_mm / 1000, 3))
            noisy.append(type(s)(s.name, s.image, s.T_base_gripper @ dT))
        res = calibrate_handeye(noisy, cam, board, mode, "park", leave_one_out=True)
        dr, dt = T_error(X, res.X)
        rows.append((sigma_deg, dr, dt * 1000, float(np.mean(res.pair_trans_mm)), float(np.max(res.loo_trans_mm))))
        if sigma_deg > 0:
            # Robot error dominates: refining on pixels would bend X, so the closed form is kept and said so.
            assert any("refinement rejected" in w for w in res.warnings)
        print(f"\nrobot noise {sigma_deg} deg/{sigma_mm} mm: error {dr:.3f} deg {dt * 1000:.2f} mm; "
              f"AX=XB residual {np.mean(res.pair_rot_deg):.3f} deg {np.mean(res.pair_trans_mm):.2f} mm; LOO max {np.max(res.loo_trans_mm):.2f} mm")
    assert rows[0][2] < 1.0
    assert rows[1][1] < 0.5 and rows[1][2] < 5.0  # degrades, does not explode
    assert rows[2][1] < 1.5 and rows[2][2] < 15.0
    # The reported residual and leave-one-out spread grow with the noise: bad data does not look good.
    assert rows[0][3] < rows[1][3] < rows[2][3]
    assert rows[0][4] < rows[2][4]


def _exact_poses(mode, n=8, seed=0):
    X, W = TRUTH[mode]
    views = random_views(SPEC, n, np.random.default_rng(seed))
    return robot_poses_for_views(views, X, W, mode), views, X


@pytest.mark.parametrize("mode", ["eye_in_hand", "eye_to_hand"])
def test_own_solvers_match_opencv_and_truth(mode):
    G, C, X = _exact_poses(mode)
    for method in ("park", "tsai"):
        Xo, label = solve_closed_form(G, C, mode, method, backend="own")
        assert label == f"{method} (own)"
        dr, dt = T_error(X, Xo)
        assert dr < 1e-5 and dt < 1e-9
    if not opencv_has_handeye():
        pytest.skip("this OpenCV has no calibrateHandEye")
    for method in METHODS:
        Xc, _ = solve_closed_form(G, C, mode, method, backend="opencv")
        dr, dt = T_error(X, Xc)
        assert dr < 1e-4 and dt < 1e-6, method


def test_methods_agree_on_rendered_views(tmp_path):
    """On PnP poses from images (not exact), every method lands within a fraction of a mm of the others."""
    folder, X = _dataset(tmp_path, "eye_to_hand", seed=4)
    samples, cam, board = load_samples(folder)
    res = calibrate_handeye(samples, cam, board, "eye_to_hand", "all", leave_one_out=False)
    assert set(res.methods_compared) == set(METHODS)
    for m, e in res.methods_compared.items():
        assert e["vs_result_deg"] < 0.1 and e["vs_result_mm"] < 2.0, (m, e)
    # Our own Park on the same PnP poses matches the closed-form answer the result started from.
    obs, _ = observe(samples, cam, board)
    own, _ = solve_closed_form([o.G for o in obs], [o.C for o in obs], "eye_to_hand", "park", backend="own")
    dr, dt = T_error(own, res.X_closed_form)
    assert dr < 0.01 and dt < 1e-4


def test_fallback_when_opencv_lacks_calibrate_handeye(monkeypatch):
    """opencv-python-headless 5.0.0.93 has no calibrateHandEye: 'auto' must still solve (own Park)."""
    import calibration.handeye as he

    monkeypatch.setattr(he, "opencv_has_handeye", lambda: False)
    G, C, X = _exact_poses("eye_in_hand")
    Xa, label = he.solve_closed_form(G, C, "eye_in_hand", "daniilidis", backend="auto")
    assert label.startswith("park (own")
    assert T_error(X, Xa)[1] < 1e-9
    with pytest.raises(CalibrationError, match="no calibrateHandEye"):
        he.solve_closed_form(G, C, "eye_in_hand", "park", backend="opencv")


def _views_about(axis_gen, n, seed=0):
    """camera←board views whose rotations come from axis_gen(rng) (relative motions controlled)."""
    rng = np.random.default_rng(seed)
    center = np.array([0.14, 0.10, 0.0])
    out = []
    for _ in range(n):
        R = rotvec_to_R(axis_gen(rng))
        p = np.array([rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), rng.uniform(0.35, 0.55)])
        out.append(make_T(R, p - R @ center))
    return out


@pytest.mark.parametrize(
    "name,gen,n,match",
    [
        ("pure translation", lambda r: np.zeros(3), 8, "barely rotates"),
        ("one rotation axis", lambda r: np.array([r.uniform(-0.5, 0.5), 0.0, 0.0]), 8, "one axis"),
        ("two samples", lambda r: r.uniform(-0.4, 0.4, 3), 2, "at least 3"),
    ],
)
def test_degenerate_motion_is_an_error(tmp_path, name, gen, n, match):
    views = _views_about(gen, n)
    folder, _ = _dataset(tmp_path, "eye_in_hand", views=views)
    samples, cam, board = load_samples(folder)
    with pytest.raises(CalibrationError, match=match):
        calibrate_handeye(samples, cam, board, "eye_in_hand", "park")


def test_small_rotations_warn(tmp_path):
    views = _views_about(lambda r: r.uniform(-0.05, 0.05, 3), 6)
    folder, _ = _dataset(tmp_path, "eye_in_hand", views=views)
    samples, cam, board = load_samples(folder)
    res = calibrate_handeye(samples, cam, board, "eye_in_hand", "park", leave_one_out=False)
    assert any("small rotations" in w for w in res.warnings)
    assert any("only 6 samples" in w for w in res.warnings)


# A 6-DOF arm in standard DH (UR5-like numbers) for samples given as joint angles.
DH = [[0.0, math.pi / 2, 0.0892, 0.0], [-0.425, 0.0, 0.0, 0.0], [-0.392, 0.0, 0.0, 0.0],
      [0.0, math.pi / 2, 0.1092, 0.0], [0.0, -math.pi / 2, 0.0947, 0.0], [0.0, 0.0, 0.0823, 0.0]]


def _joint_samples(n=10, seed=3):
    """Joint configurations around a pose from which the gripper camera sees the board."""
    chain = DHChain(DH)
    X = make_T(rotvec_to_R([0.0, 0.0, 0.3]), [0.0, 0.04, 0.03])  # gripper←camera
    q0 = np.array([0.3, -1.2, 1.5, -1.9, -1.57, 0.2])
    C0 = make_T(np.eye(3), [-0.14, -0.10, 0.45])  # board centred 0.45 m in front of the camera
    W = chain.fk(q0) @ X @ C0  # base←board
    rng = np.random.default_rng(seed)
    qs, views = [], []
    spread = np.array([0.05, 0.05, 0.05, 0.35, 0.35, 0.5])
    while len(qs) < n:
        q = q0 + rng.uniform(-1, 1, 6) * spread
        C = inv_T(X) @ inv_T(chain.fk(q)) @ W
        corners = np.array([[0, 0, 0], [0.28, 0, 0], [0, 0.2, 0], [0.28, 0.2, 0]])
        pc = (C[:3, :3] @ corners.T).T + C[:3, 3]
        uv = (K @ pc.T).T
        uv = uv[:, :2] / uv[:, 2:]
        if np.all(pc[:, 2] > 0.25) and C[2, 2] > 0.6 and np.all((uv > 10) & (uv < [630, 470])):
            qs.append(q)
            views.append(C)
    return chain, X, W, qs, views


def _robot_config(tmp_path, dh=DH):
    joints = [{"name": f"j{k}", "id": k + 1, "model": "xm430-w350", "min": -3.0, "max": 3.0,
               "max_velocity": 2.0, "max_acceleration": 10.0} for k in range(len(dh))]
    cfg = {"robot": {"bus": {"port": "emulator"}, "joints": joints, "dh": dh},
           "policy": {"checkpoint": "preset:small"}}
    p = tmp_path / "robot.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _cli(*args):
    """Run the edgedp CLI in this process (a subprocess per call costs seconds of imports)."""
    import contextlib
    import io
    import types

    from edgedp import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_cli_joint_samples_with_dh_config_writes_yaml_and_png(tmp_path):
    chain, X, W, qs, views = _joint_samples()
    folder = tmp_path / "samples"
    write_handeye_dataset(folder, SPEC, K, SIZE, X, W, "eye_in_hand", views=views,
                          robot_poses=[chain.fk(q) for q in qs], joints=qs, noise_sigma=2.0, blur_sigma=0.6)
    assert "joints" in yaml.safe_load((folder / "samples.yaml").read_text())["samples"][0]
    out = tmp_path / "handeye.yaml"
    r = _cli("calibrate", "handeye", folder, "--mode", "eye_in_hand", "--out", out, "--robot", _robot_config(tmp_path))
    assert r.returncode == 0, r.stderr
    data = yaml.safe_load(out.read_text())
    for key in ("transform", "translation", "quaternion", "method", "residuals", "samples_used", "date", "warnings"):
        assert key in data
    for key in ("rotation_deg_mean", "translation_mm_mean", "reprojection_rms_px", "leave_one_out_translation_mm_max", "per_sample"):
        assert key in data["residuals"]
    T = np.array(data["transform"])
    assert T.shape == (4, 4) and np.allclose(T[3], [0, 0, 0, 1])
    dr, dt = T_error(X, T)
    print(f"\nDH joints samples (noise 2): {dr:.4f} deg {dt * 1000:.3f} mm")
    assert dr < 0.2 and dt < 0.002
    assert data["samples_used"] == 10
    png = out.with_suffix(".png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_inputs_one_line_exit_2(tmp_path):
    out = tmp_path / "x.yaml"
    r = _cli("calibrate", "handeye", tmp_path / "nope", "--mode", "eye_in_hand", "--out", out)
    assert r.returncode == 2 and "samples directory not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    folder, _ = _dataset(tmp_path, "eye_in_hand", n=4, seed=5)
    (folder / "view_01.png").unlink()
    r = _cli("calibrate", "handeye", folder, "--mode", "eye_in_hand", "--out", out)
    assert r.returncode == 2 and "image not found" in r.stderr and "view_01.png" in r.stderr

    folder, _ = _dataset(tmp_path, "eye_in_hand", n=4, seed=6)
    (folder / "samples.yaml").unlink()
    r = _cli("calibrate", "handeye", folder, "--mode", "eye_in_hand", "--out", out)
    assert r.returncode == 2 and "samples.yaml not found" in r.stderr

    folder, _ = _dataset(tmp_path, "eye_in_hand", n=4, seed=7)
    board = yaml.safe_load((folder / "board.yaml").read_text())
    board["dictionary"] = "DICT_6X6_250"  # wrong dictionary: nothing is detected
    (folder / "board.yaml").write_text(yaml.safe_dump(board))
    r = _cli("calibrate", "handeye", folder, "--mode", "eye_in_hand", "--out", out)
    assert r.returncode == 2 and "not detected in any" in r.stderr
    board["dictionary"] = "DICT_NOPE"
    (folder / "board.yaml").write_text(yaml.safe_dump(board))
    r = _cli("calibrate", "handeye", folder, "--mode", "eye_in_hand", "--out", out)
    assert r.returncode == 2 and "unknown dictionary" in r.stderr

    # joints without a robot model
    folder = tmp_path / "j"
    chain, X, W, qs, views = _joint_samples(n=3)
    write_handeye_dataset(folder, SPEC, K, SIZE, X, W, "eye_in_hand", views=views,
                          robot_poses=[chain.fk(q) for q in qs], joints=qs)
    r = _cli("calibrate", "handeye", folder, "--mode", "eye_in_hand", "--out", out)
    assert r.returncode == 2 and "--robot" in r.stderr
    assert not out.exists()


def _urdf_from_dh(dh) -> str:
    """The same arm as a URDF: link k = Tz(d) Rz(q) Tx(a) Rx(alpha), so joint k's origin carries the previous
    row's Tx(a) Rx(alpha) and this row's Tz(d)."""
    parts = ['<robot name="arm">'] + [f'<link name="l{k}"/>' for k in range(len(dh) + 2)]
    a_prev, al_prev = 0.0, 0.0
    for k, (a, alpha, d, _) in enumerate(dh):
        xyz = (a_prev, -math.sin(al_prev) * d, math.cos(al_prev) * d)
        parts.append(f'<joint name="q{k}" type="revolute"><parent link="l{k}"/><child link="l{k + 1}"/>'
                     f'<origin xyz="{xyz[0]} {xyz[1]} {xyz[2]}" rpy="{al_prev} 0 0"/><axis xyz="0 0 1"/></joint>')
        a_prev, al_prev = a, alpha
    n = len(dh)
    parts.append(f'<joint name="tool" type="fixed"><parent link="l{n}"/><child link="l{n + 1}"/>'
                 f'<origin xyz="{a_prev} 0 0" rpy="{al_prev} 0 0"/></joint></robot>')
    return "\n".join(parts)


def test_cli_urdf_robot_and_eye_to_hand_all_methods(tmp_path):
    from calibration.kinematics import URDFChain

    urdf = tmp_path / "arm.urdf"
    urdf.write_text(_urdf_from_dh(DH))
    chain_u, chain_d = URDFChain(urdf), DHChain(DH)
    rng = np.random.default_rng(0)
    for _ in range(5):
        q = rng.uniform(-3, 3, 6)
        assert np.allclose(chain_u.fk(q), chain_d.fk(q), atol=1e-12)
    chain, X, W, qs, views = _joint_samples(n=8, seed=5)
    folder = tmp_path / "urdf_samples"
    write_handeye_dataset(folder, SPEC, K, SIZE, X, W, "eye_in_hand", views=views,
                          robot_poses=[chain.fk(q) for q in qs], joints=qs)
    out = tmp_path / "he.yaml"
    r = _cli("calibrate", "handeye", folder, "--mode", "eye_in_hand", "--out", out, "--urdf", urdf, "--no-loo")
    assert r.returncode == 0, r.stderr
    dr, dt = T_error(X, np.array(yaml.safe_load(out.read_text())["transform"]))
    assert dr < 0.2 and dt < 0.002

    # eye_to_hand from gripper poses, every method compared, PNG at a chosen path.
    folder, X = _dataset(tmp_path, "eye_to_hand", n=8, seed=9)
    png = tmp_path / "plots" / "res.png"
    r = _cli("calibrate", "handeye", folder, "--mode", "eye_to_hand", "--out", out, "--method", "all", "--plot", png)
    assert r.returncode == 0, r.stderr
    data = yaml.safe_load(out.read_text())
    assert data["frames"].startswith("base<-camera") and data["board_pose"]["frame"] == "gripper<-board"
    assert set(data["methods_compared"]) == set(METHODS)
    assert png.is_file()
    for m in METHODS:
        assert m in r.stdout
    dr, dt = T_error(X, np.array(data["transform"]))
    assert dr < 0.2 and dt < 0.002


def test_cli_planar_arm_is_degenerate(tmp_path):
    """A planar arm only turns about parallel axes: the CLI refuses instead of printing a number."""
    from calibration.kinematics import URDFChain

    urdf = tmp_path / "planar.urdf"
    urdf.write_text(_urdf_from_dh([[0.3, 0, 0.0, 0], [0.25, 0, 0, 0]]))
    chain = URDFChain(urdf)
    X = make_T(rotvec_to_R([math.pi, 0, 0]), [0.5, 0, 0.5])  # base←camera, 0.5 m above the tool, looking down
    W = make_T(rotvec_to_R([math.pi, 0, 0]), [-0.14, 0.10, 0.0])  # gripper←board, face up, centred on the tool
    qs = [np.array([a, b]) for a, b in ((0.0, 0.1), (0.15, -0.2), (-0.1, 0.3), (0.2, 0.2), (-0.2, -0.1))]
    G = [chain.fk(q) for q in qs]
    folder = tmp_path / "planar"
    write_handeye_dataset(folder, SPEC, K, SIZE, X, W, "eye_to_hand", robot_poses=G, joints=qs)
    r = _cli("calibrate", "handeye", folder, "--mode", "eye_to_hand", "--out", tmp_path / "p.yaml", "--urdf", urdf)
    assert r.returncode == 2 and "one axis" in r.stderr, r.stderr
    assert not (tmp_path / "p.yaml").exists()
