"""Is the robot motion rich enough for hand-eye? Errors stop the solve; warnings go into the result.

AX = XB fixes X only when the relative rotations are large enough to measure and turn about at
least two non-parallel axes; with one axis, the translation along it (and the rotation about it, for
pure translations) is not determined, and every solver still returns *a* number. So we look first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from calibration.se3 import R_to_rotvec

MIN_SAMPLES = 3
NO_ROTATION_DEG = 2.0  # every relative rotation below this: rotation of X unobservable
SMALL_ROTATION_DEG = 15.0  # largest relative rotation below this: noisy solution
PARALLEL_ERROR_DEG = 3.0  # all rotation axes within this of one line: translation not unique
PARALLEL_WARN_DEG = 15.0
FEW_SAMPLES_WARN = 8


@dataclass
class MotionReport:
    n_samples: int
    max_rotation_deg: float
    axis_spread_deg: float
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def analyse_motion(Gp: Sequence[np.ndarray], warn_below: int = FEW_SAMPLES_WARN) -> MotionReport:
    """Check the robot-side relative motions G'_j⁻¹ G'_i over all pairs of samples."""
    n = len(Gp)
    if n < MIN_SAMPLES:
        return MotionReport(n, 0.0, 0.0, errors=[f"too few samples: {n} (hand-eye needs at least {MIN_SAMPLES}, better 10 or more)"])
    vecs = []
    for i in range(n):
        for j in range(i + 1, n):
            A = np.linalg.solve(Gp[j], Gp[i])
            vecs.append(R_to_rotvec(A[:3, :3]))
    vecs = np.array(vecs)
    angles = np.degrees(np.linalg.norm(vecs, axis=1))
    max_rot = float(angles.max())
    rep = MotionReport(n, max_rot, 0.0)
    if max_rot < NO_ROTATION_DEG:
        rep.errors.append(
            f"the gripper barely rotates between samples (largest relative rotation {max_rot:.2f} deg): "
            "pure translation cannot determine the hand-eye rotation; rotate the gripper about two different axes"
        )
        return rep
    axes = vecs[angles >= NO_ROTATION_DEG]
    axes = axes / np.linalg.norm(axes, axis=1, keepdims=True)
    cos = np.clip(np.abs(axes @ axes.T), 0.0, 1.0)
    spread = float(np.degrees(np.arccos(cos.min())))
    rep.axis_spread_deg = spread
    if spread < PARALLEL_ERROR_DEG:
        rep.errors.append(
            f"all relative rotations turn about one axis (spread {spread:.2f} deg): the hand-eye translation along "
            "that axis is not determined; rotate the gripper about at least two different axes"
        )
    elif spread < PARALLEL_WARN_DEG:
        rep.warnings.append(
            f"rotation axes nearly parallel (largest angle between them {spread:.1f} deg < {PARALLEL_WARN_DEG:g}): "
            "the solution is poorly conditioned"
        )
    if max_rot < SMALL_ROTATION_DEG:
        rep.warnings.append(
            f"small rotations only (largest relative rotation {max_rot:.1f} deg < {SMALL_ROTATION_DEG:g}): expect a noisy result"
        )
    if n < warn_below:
        rep.warnings.append(f"only {n} samples; 10 or more give a more reliable result")
    return rep
