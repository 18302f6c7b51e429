"""Nonlinear refinement of hand-eye on what was actually measured: board-corner pixels.

The closed-form solvers fit relative motions built from PnP poses and weight every pair alike; here
the hand-eye X and the constant board pose W (base←target for eye_in_hand, gripper←target for
eye_to_hand) are adjusted together so that the predicted camera←target pose C_i = X⁻¹ G'_i⁻¹ W
reprojects the board corners onto the detected ones, over all samples at once (scipy least_squares,
Huber loss so a few bad corners do not pull the solution).
Updates are applied on the right, X·exp(δ), so the parameterisation has no singularity at the start.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
from scipy.optimize import least_squares

from calibration.se3 import inv_T, make_T, rotvec_to_R


@dataclass
class RefineResult:
    X: np.ndarray
    W: np.ndarray
    per_sample_rms: np.ndarray  # px
    rms: float  # px over all corners
    initial_rms: float
    success: bool
    rejected: str = ""  # why the caller kept the closed-form answer instead ("" = used)


def _perturb(T: np.ndarray, d: np.ndarray) -> np.ndarray:
    return T @ make_T(rotvec_to_R(d[:3]), d[3:6])


def reprojection(
    X: np.ndarray, W: np.ndarray, Gp: Sequence[np.ndarray], obj: Sequence[np.ndarray],
    img: Sequence[np.ndarray], K: np.ndarray, dist: np.ndarray,
) -> list[np.ndarray]:
    """Per-sample pixel residual arrays (n_i, 2) for transforms X and W."""
    Xi = inv_T(X)
    out = []
    for g, o, p in zip(Gp, obj, img):
        C = Xi @ inv_T(g) @ W
        rvec, _ = cv2.Rodrigues(C[:3, :3])
        proj, _ = cv2.projectPoints(o, rvec, C[:3, 3], K, dist)
        out.append(proj.reshape(-1, 2) - p)
    return out


def refine_handeye(
    X0: np.ndarray, W0: np.ndarray, Gp: Sequence[np.ndarray], obj: Sequence[np.ndarray],
    img: Sequence[np.ndarray], K: np.ndarray, dist: np.ndarray, huber_px: float = 2.0,
) -> RefineResult:
    dist = np.asarray(dist, dtype=np.float64).reshape(-1)
    # Scale translation steps so millimetres and milliradians weigh similarly in the solver.
    scale = np.array([1, 1, 1, 0.1, 0.1, 0.1, 1, 1, 1, 0.1, 0.1, 0.1], dtype=float)

    def unpack(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = x * scale
        return _perturb(X0, x[:6]), _perturb(W0, x[6:])

    def fun(x: np.ndarray) -> np.ndarray:
        X, W = unpack(x)
        return np.concatenate([r.reshape(-1) for r in reprojection(X, W, Gp, obj, img, K, dist)])

    r0 = fun(np.zeros(12))
    sol = least_squares(fun, np.zeros(12), loss="huber", f_scale=huber_px, x_scale="jac", max_nfev=200)
    X, W = unpack(sol.x)
    res = reprojection(X, W, Gp, obj, img, K, dist)
    per = np.array([float(np.sqrt(np.mean(np.sum(r ** 2, axis=1)))) for r in res])
    allr = np.concatenate(res)
    return RefineResult(
        X=X, W=W, per_sample_rms=per,
        rms=float(np.sqrt(np.mean(np.sum(allr ** 2, axis=1)))),
        initial_rms=float(np.sqrt(np.mean(r0 ** 2) * 2)),
        success=bool(sol.success),
    )
