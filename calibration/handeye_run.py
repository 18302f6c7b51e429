"""The whole hand-eye calibration from a samples directory: detect, check motion, solve, refine, score.

Scores reported (all per sample so a bad sample can be found and removed):
  - AX=XB residual per sample pair (rotation deg, translation mm), averaged per sample;
  - board consistency: how far each sample's W_i = G'_i X C_i is from their mean (deg, mm);
  - reprojection RMS per sample (px) with the refined X and W;
  - leave-one-out: X re-solved without each sample; spread of those solutions around X (deg, mm).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from calibration.charuco import BoardDetector, BoardSpec, board_pose
from calibration.degeneracy import MotionReport, analyse_motion
from calibration.errors import CalibrationError
from calibration.handeye import METHODS, board_in_world, motion_pairs, robot_side, solve_closed_form
from calibration.refine import refine_handeye, reprojection
from calibration.samples import CameraModel, Sample
from calibration.se3 import R_to_quat, T_error, average_T, make_T, quat_to_R


@dataclass
class Observation:
    name: str
    G: np.ndarray  # base←gripper
    C: np.ndarray  # camera←target from PnP
    obj: np.ndarray
    img: np.ndarray
    pnp_rms: float


@dataclass
class HandEyeResult:
    mode: str
    method: str
    X: np.ndarray
    X_closed_form: np.ndarray
    W: np.ndarray
    names: list[str]
    rot_residual_deg: np.ndarray
    trans_residual_mm: np.ndarray
    pair_rot_deg: np.ndarray
    pair_trans_mm: np.ndarray
    reproj_rms_px: np.ndarray
    reproj_rms_total: float
    loo_rot_deg: np.ndarray
    loo_trans_mm: np.ndarray
    motion: MotionReport
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    methods_compared: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The calibration file's content (plain lists and floats, ready for YAML)."""
        frame = "gripper<-camera" if self.mode == "eye_in_hand" else "base<-camera"
        r = lambda a: [round(float(v), 4) for v in a]  # noqa: E731
        d = {
            "mode": self.mode,
            "frames": frame + " (maps points in the camera frame into the " + frame.split("<-")[0] + " frame)",
            "transform": [[float(v) for v in row] for row in self.X],
            "translation": [float(v) for v in self.X[:3, 3]],
            "quaternion": [float(v) for v in R_to_quat(self.X[:3, :3])],
            "method": self.method,
            "samples_used": len(self.names),
            "samples_skipped": list(self.skipped),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "residuals": {
                "rotation_deg_mean": float(np.mean(self.pair_rot_deg)),
                "rotation_deg_max": float(np.max(self.pair_rot_deg)),
                "translation_mm_mean": float(np.mean(self.pair_trans_mm)),
                "translation_mm_max": float(np.max(self.pair_trans_mm)),
                "reprojection_rms_px": float(self.reproj_rms_total),
                "leave_one_out_rotation_deg_max": float(np.max(self.loo_rot_deg)) if len(self.loo_rot_deg) else None,
                "leave_one_out_translation_mm_max": float(np.max(self.loo_trans_mm)) if len(self.loo_trans_mm) else None,
                "per_sample": {
                    "name": list(self.names),
                    "rotation_deg": r(self.rot_residual_deg),
                    "translation_mm": r(self.trans_residual_mm),
                    "reprojection_rms_px": r(self.reproj_rms_px),
                    "leave_one_out_rotation_deg": r(self.loo_rot_deg),
                    "leave_one_out_translation_mm": r(self.loo_trans_mm),
                },
            },
            "motion": {
                "max_relative_rotation_deg": round(self.motion.max_rotation_deg, 3),
                "rotation_axis_spread_deg": round(self.motion.axis_spread_deg, 3),
            },
            "board_pose": {
                "frame": "base<-board" if self.mode == "eye_in_hand" else "gripper<-board",
                "transform": [[float(v) for v in row] for row in self.W],
            },
            "warnings": list(self.warnings),
        }
        if self.methods_compared:
            d["methods_compared"] = self.methods_compared
        return d


def observe(samples: Sequence[Sample], camera: CameraModel, board: BoardSpec, min_corners: int = 6) -> tuple[list[Observation], list[str]]:
    """Detect the board and solve its pose in every sample image; return observations and skip notes."""
    det = BoardDetector(board)
    obs, skipped = [], []
    for s in samples:
        image = cv2.imread(str(s.image), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise CalibrationError(f"cannot read image {s.image} (not an image file?)")
        if (image.shape[1], image.shape[0]) != (camera.width, camera.height):
            raise CalibrationError(
                f"image {s.image.name} is {image.shape[1]}x{image.shape[0]} but camera.yaml says {camera.width}x{camera.height}"
            )
        d = det.detect(image, min_corners=min_corners)
        if d is None:
            skipped.append(f"{s.name}: board not detected (fewer than {min_corners} ChArUco corners)")
            continue
        try:
            C, rms = board_pose(d, camera.K, camera.dist)
        except CalibrationError as exc:
            skipped.append(f"{s.name}: {exc}")
            continue
        obs.append(Observation(s.name, s.T_base_gripper, C, d.object_points, d.corners, rms))
    return obs, skipped


def _solve(obs: Sequence[Observation], mode: str, method: str, backend: str, camera: CameraModel, refine: bool):
    G = [o.G for o in obs]
    C = [o.C for o in obs]
    X0, label = solve_closed_form(G, C, mode, method, backend)
    Gp = robot_side(G, mode)
    W0 = average_T(board_in_world(Gp, X0, C))
    if not refine:
        return X0, X0, W0, label, None
    rr = refine_handeye(X0, W0, Gp, [o.obj for o in obs], [o.img for o in obs], camera.K, camera.dist)
    # The refinement trusts the robot poses completely. When they carry the larger error (encoder
    # offsets, a loose link), it bends X to explain robot error as image error; the symptom is a
    # worse fit of the measured motions. Then the closed-form answer is kept.
    r0, t0 = _motion_fit(Gp, [o.C for o in obs], X0)
    r1, t1 = _motion_fit(Gp, [o.C for o in obs], rr.X)
    if r1 > 1.5 * r0 + 0.05 or t1 > 1.5 * t0 + 0.5:
        rr.rejected = (f"reprojection refinement rejected: it worsened the motion fit (AX=XB residual "
                       f"{r0:.3f}->{r1:.3f} deg, {t0:.2f}->{t1:.2f} mm), so robot pose error dominates; closed-form result kept")
        return X0, X0, W0, label, rr
    return rr.X, X0, rr.W, label + " + reprojection refinement", rr


def _motion_fit(Gp, C, X) -> tuple[float, float]:
    """Mean AX=XB residual over all pairs: (deg, mm)."""
    errs = [T_error(A @ X, X @ B) for _, _, A, B in motion_pairs(Gp, C)]
    return float(np.mean([e[0] for e in errs])), float(np.mean([e[1] for e in errs]) * 1000)


def calibrate_handeye(
    samples: Sequence[Sample], camera: CameraModel, board: BoardSpec, mode: str, method: str = "park",
    backend: str = "auto", refine: bool = True, leave_one_out: bool = True,
) -> HandEyeResult:
    """Run the full calibration; raises CalibrationError on degenerate motion or too few usable views."""
    if method != "all" and method not in METHODS:
        raise CalibrationError(f"unknown hand-eye method '{method}' (allowed: {', '.join(METHODS)}, all)")
    obs, skipped = observe(samples, camera, board)
    if not obs:
        raise CalibrationError(f"the board was not detected in any of the {len(samples)} images (check board.yaml: size, dictionary, legacy_pattern)")
    Gp_all = robot_side([o.G for o in obs], mode)
    motion = analyse_motion(Gp_all)
    if motion.errors:
        raise CalibrationError("degenerate motion: " + "; ".join(motion.errors))
    warnings = list(motion.warnings) + [f"skipped {s}" for s in skipped]

    compared: dict[str, dict[str, float]] = {}
    main_method = "park" if method == "all" else method
    if method == "all":
        for m in METHODS:
            Xm, _, _, lab, rr = _solve(obs, mode, m, backend, camera, refine=False)
            compared[m] = {"label": lab, "translation": [float(v) for v in Xm[:3, 3]],
                           "quaternion": [float(v) for v in R_to_quat(Xm[:3, :3])]}
    X, X0, W, label, rr = _solve(obs, mode, main_method, backend, camera, refine)
    if compared:
        for m, entry in compared.items():
            Xm = make_T(quat_to_R(entry["quaternion"]), entry["translation"])
            dr, dt = T_error(X, Xm)
            entry["vs_result_deg"] = round(dr, 4)
            entry["vs_result_mm"] = round(dt * 1000, 3)

    C = [o.C for o in obs]
    n = len(obs)
    # AX = XB residual per pair, attributed half to each sample of the pair.
    pr, pt, acc_r, acc_t, cnt = [], [], np.zeros(n), np.zeros(n), np.zeros(n)
    for i, j, A, B in motion_pairs(Gp_all, C):
        dr, dt = T_error(A @ X, X @ B)
        pr.append(dr)
        pt.append(dt * 1000)
        for k in (i, j):
            acc_r[k] += dr
            acc_t[k] += dt * 1000
            cnt[k] += 1
    Ws = board_in_world(Gp_all, X, C)
    cons = [T_error(Wi, W) for Wi in Ws]
    rot_res = np.array([c[0] for c in cons])
    trans_res = np.array([c[1] * 1000 for c in cons])
    if rr is not None and rr.rejected:
        warnings.append(rr.rejected)
    if rr is not None and not rr.rejected:
        reproj, total = rr.per_sample_rms, rr.rms
        if not rr.success:
            warnings.append("reprojection refinement did not converge; the closed-form result may be better")
    else:
        res = reprojection(X, W, Gp_all, [o.obj for o in obs], [o.img for o in obs], camera.K, camera.dist)
        reproj = np.array([float(np.sqrt(np.mean(np.sum(r ** 2, axis=1)))) for r in res])
        allr = np.concatenate(res)
        total = float(np.sqrt(np.mean(np.sum(allr ** 2, axis=1))))

    loo_r, loo_t = [], []
    if leave_one_out and n >= 4:
        for k in range(n):
            rest = [o for i, o in enumerate(obs) if i != k]
            sub = analyse_motion(robot_side([o.G for o in rest], mode))
            if sub.errors:
                loo_r.append(float("nan"))
                loo_t.append(float("nan"))
                continue
            # Leave-one-out repeats exactly what produced X (closed form alone when refinement was rejected).
            Xk = _solve(rest, mode, main_method, backend, camera, refine and not (rr is not None and rr.rejected))[0]
            dr, dt = T_error(X, Xk)
            loo_r.append(dr)
            loo_t.append(dt * 1000)
        if np.any(np.isnan(loo_r)):
            warnings.append("some leave-one-out subsets are degenerate: one sample carries the only rotation about an axis")
    return HandEyeResult(
        mode=mode, method=label, X=X, X_closed_form=X0, W=W, names=[o.name for o in obs],
        rot_residual_deg=rot_res, trans_residual_mm=trans_res,
        pair_rot_deg=np.array(pr), pair_trans_mm=np.array(pt),
        reproj_rms_px=reproj, reproj_rms_total=total,
        loo_rot_deg=np.array(loo_r), loo_trans_mm=np.array(loo_t),
        motion=motion, skipped=skipped, warnings=warnings, methods_compared=compared,
    )
