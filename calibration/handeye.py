"""Closed-form hand-eye solvers for A·X = X·B, through OpenCV when it has them and our own otherwise.

Frames (T_a_b maps points in frame b into frame a):
  G_i = base←gripper (robot pose of sample i), C_i = camera←target (board pose seen in image i).
  eye_in_hand: unknown X = gripper←camera; base←target W = G_i X C_i is the same for every i.
  eye_to_hand: unknown X = base←camera;  gripper←target W = G_i⁻¹ X C_i is the same for every i.
Both reduce to the first form with G'_i = G_i (eye_in_hand) or G_i⁻¹ (eye_to_hand), which is also
how OpenCV's documentation tells users to run its eye-in-hand function for eye-to-hand.
For a pair (i, j): A = G'_j⁻¹ G'_i, B = C_j C_i⁻¹, and A X = X B.

opencv-python-headless 5.0.0.93 exposes the CALIB_HAND_EYE_* constants but not calibrateHandEye, so
`park` and `tsai` are also implemented here (closed form, all sample pairs) and used as the fallback.
"""
from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from calibration.errors import CalibrationError
from calibration.se3 import R_to_rotvec, inv_T, make_T, project_to_SO3, skew

MODES = ("eye_in_hand", "eye_to_hand")
METHODS = ("tsai", "park", "horaud", "andreff", "daniilidis")
OWN_METHODS = ("park", "tsai")
_CV_FLAGS = {
    "tsai": "CALIB_HAND_EYE_TSAI",
    "park": "CALIB_HAND_EYE_PARK",
    "horaud": "CALIB_HAND_EYE_HORAUD",
    "andreff": "CALIB_HAND_EYE_ANDREFF",
    "daniilidis": "CALIB_HAND_EYE_DANIILIDIS",
}


def opencv_has_handeye() -> bool:
    return hasattr(cv2, "calibrateHandEye")


def robot_side(G: Sequence[np.ndarray], mode: str) -> list[np.ndarray]:
    """G'_i: the robot poses as the eye-in-hand formulation wants them."""
    if mode not in MODES:
        raise CalibrationError(f"unknown hand-eye mode '{mode}' (allowed: {', '.join(MODES)})")
    return [np.asarray(g, float) if mode == "eye_in_hand" else inv_T(np.asarray(g, float)) for g in G]


def motion_pairs(Gp: Sequence[np.ndarray], C: Sequence[np.ndarray]) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """All pairs (i, j), i < j, with A = G'_j⁻¹ G'_i and B = C_j C_i⁻¹ (so A X = X B)."""
    out = []
    for i in range(len(Gp)):
        for j in range(i + 1, len(Gp)):
            out.append((i, j, inv_T(Gp[j]) @ Gp[i], C[j] @ inv_T(C[i])))
    return out


def solve_park(pairs) -> np.ndarray:
    """Park & Martin (1994): the rotation aligns the log-rotation vectors, β ↦ α with α = R_X β;
    solved here as an orthogonal Procrustes problem (SVD), then translation by linear least squares."""
    H = np.zeros((3, 3))
    for _, _, A, B in pairs:
        H += np.outer(R_to_rotvec(B[:3, :3]), R_to_rotvec(A[:3, :3]))
    R = project_to_SO3(H.T)
    return make_T(R, _solve_translation(pairs, R))


def solve_tsai(pairs) -> np.ndarray:
    """Tsai & Lenz (1989) with modified Rodrigues vectors P = 2 sin(θ/2)·axis."""
    rows, rhs = [], []
    for _, _, A, B in pairs:
        pa, pb = _mod_rodrigues(A[:3, :3]), _mod_rodrigues(B[:3, :3])
        rows.append(skew(pa + pb))
        rhs.append(pb - pa)
    p_prime, *_ = np.linalg.lstsq(np.vstack(rows), np.concatenate(rhs), rcond=None)
    p = 2.0 * p_prime / math.sqrt(1.0 + float(p_prime @ p_prime))
    n2 = float(p @ p)
    R = (1.0 - n2 / 2.0) * np.eye(3) + 0.5 * (np.outer(p, p) + math.sqrt(max(0.0, 4.0 - n2)) * skew(p))
    R = project_to_SO3(R)
    return make_T(R, _solve_translation(pairs, R))


def _mod_rodrigues(R: np.ndarray) -> np.ndarray:
    w = R_to_rotvec(R)
    th = float(np.linalg.norm(w))
    return np.zeros(3) if th < 1e-12 else 2.0 * math.sin(th / 2.0) * w / th


def _solve_translation(pairs, R: np.ndarray) -> np.ndarray:
    """(R_A − I) t_X = R_X t_B − t_A, stacked over every pair."""
    M = np.vstack([A[:3, :3] - np.eye(3) for _, _, A, _ in pairs])
    v = np.concatenate([R @ B[:3, 3] - A[:3, 3] for _, _, A, B in pairs])
    t, *_ = np.linalg.lstsq(M, v, rcond=None)
    return t


def solve_own(Gp: Sequence[np.ndarray], C: Sequence[np.ndarray], method: str) -> np.ndarray:
    pairs = motion_pairs(Gp, C)
    if method == "park":
        return solve_park(pairs)
    if method == "tsai":
        return solve_tsai(pairs)
    raise CalibrationError(f"method '{method}' needs OpenCV's calibrateHandEye (own solvers: {', '.join(OWN_METHODS)})")


def solve_opencv(Gp: Sequence[np.ndarray], C: Sequence[np.ndarray], method: str) -> np.ndarray:
    R_g = [g[:3, :3] for g in Gp]
    t_g = [g[:3, 3].reshape(3, 1) for g in Gp]
    R_c = [c[:3, :3] for c in C]
    t_c = [c[:3, 3].reshape(3, 1) for c in C]
    R, t = cv2.calibrateHandEye(R_g, t_g, R_c, t_c, method=getattr(cv2, _CV_FLAGS[method]))
    return make_T(project_to_SO3(np.asarray(R)), np.asarray(t).reshape(3))


def solve_closed_form(
    G: Sequence[np.ndarray], C: Sequence[np.ndarray], mode: str, method: str = "park", backend: str = "auto"
) -> tuple[np.ndarray, str]:
    """X for the given mode, and a label of what actually solved it (e.g. 'park (opencv)').

    backend: 'opencv', 'own', or 'auto' (OpenCV when it has calibrateHandEye, else our own; a method
    only OpenCV has then falls back to our Park solver, and the label says so).
    """
    if method not in METHODS:
        raise CalibrationError(f"unknown hand-eye method '{method}' (allowed: {', '.join(METHODS)})")
    if len(G) != len(C):
        raise CalibrationError(f"{len(G)} robot poses but {len(C)} board poses")
    if len(G) < 3:
        raise CalibrationError(f"hand-eye needs at least 3 samples with the board seen (got {len(G)})")
    Gp = robot_side(G, mode)
    use_cv = backend == "opencv" or (backend == "auto" and opencv_has_handeye())
    if use_cv:
        if not opencv_has_handeye():
            raise CalibrationError("this OpenCV build has no calibrateHandEye (use backend 'own')")
        return solve_opencv(Gp, C, method), f"{method} (opencv)"
    if method in OWN_METHODS:
        return solve_own(Gp, C, method), f"{method} (own)"
    return solve_own(Gp, C, "park"), f"park (own; '{method}' needs OpenCV's calibrateHandEye)"


def board_in_world(Gp: Sequence[np.ndarray], X: np.ndarray, C: Sequence[np.ndarray]) -> list[np.ndarray]:
    """W_i = G'_i X C_i per sample: base←target (eye_in_hand) or gripper←target (eye_to_hand)."""
    return [g @ X @ c for g, c in zip(Gp, C)]
