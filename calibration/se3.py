"""Rigid-transform helpers (4x4 homogeneous matrices, quaternions as [qx, qy, qz, qw]).

Kept in one place so every calibration module agrees on conventions: `T_a_b` maps points
expressed in frame b into frame a (a←b), and quaternions are stored scalar-last like ROS.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np


def make_T(R: np.ndarray, t: Iterable[float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=float).reshape(3)
    return T


def inv_T(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform without a general matrix inverse (stays exactly rigid)."""
    R = T[:3, :3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


def skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def rotvec_to_R(w: np.ndarray) -> np.ndarray:
    """Rodrigues' formula; accurate near zero, where cv2.Rodrigues is fine too but slower per call."""
    w = np.asarray(w, dtype=float).reshape(3)
    th = float(np.linalg.norm(w))
    if th < 1e-12:
        return np.eye(3) + skew(w)
    k = w / th
    K = skew(k)
    return np.eye(3) + math.sin(th) * K + (1.0 - math.cos(th)) * (K @ K)


def R_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Matrix logarithm of a rotation as an axis*angle vector, robust near 0 and pi."""
    q = R_to_quat(R)
    v = q[:3]
    w = q[3]
    s = float(np.linalg.norm(v))
    if s < 1e-12:
        return 2.0 * v
    angle = 2.0 * math.atan2(s, w)
    if angle > math.pi:
        angle -= 2.0 * math.pi
    return v / s * angle


def rotation_angle(R: np.ndarray) -> float:
    """Angle (rad) of a rotation matrix, clipped so round-off near identity does not give NaN."""
    c = (np.trace(R) - 1.0) / 2.0
    return float(math.acos(max(-1.0, min(1.0, c))))


def R_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrix → unit quaternion [qx, qy, qz, qw] with qw >= 0 (Shepperd's method)."""
    R = np.asarray(R, dtype=float)
    tr = R[0, 0] + R[1, 1] + R[2, 2]
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = [0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif R[1, 1] > R[2, 2]:
        s = math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = [(R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s, (R[1, 0] - R[0, 1]) / s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return q if q[3] >= 0 else -q


def quat_to_R(q: Iterable[float]) -> np.ndarray:
    """[qx, qy, qz, qw] → rotation matrix; the quaternion is normalised first (files round numbers)."""
    x, y, z, w = np.asarray(q, dtype=float).reshape(4)
    n = math.sqrt(x * x + y * y + z * z + w * w)
    if n < 1e-9:
        raise ValueError("quaternion has zero length")
    x, y, z, w = x / n, y / n, z / n, w / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def rpy_to_R(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """URDF convention: fixed-axis roll about x, then pitch about y, then yaw about z (R = Rz Ry Rx)."""
    cr, sr = math.cos(roll), math.sin(roll)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def project_to_SO3(M: np.ndarray) -> np.ndarray:
    """Nearest rotation to a 3x3 matrix (used to average rotations and to clean up solver output)."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def average_T(Ts: list[np.ndarray]) -> np.ndarray:
    """Chordal mean of rigid transforms: SO(3) projection of the summed rotations, mean translation."""
    R = project_to_SO3(sum(T[:3, :3] for T in Ts))
    t = np.mean([T[:3, 3] for T in Ts], axis=0)
    return make_T(R, t)


def T_error(A: np.ndarray, B: np.ndarray) -> tuple[float, float]:
    """(rotation difference in degrees, translation difference in metres) between two transforms."""
    dR = A[:3, :3].T @ B[:3, :3]
    return math.degrees(rotation_angle(dR)), float(np.linalg.norm(A[:3, 3] - B[:3, 3]))


def T_from_rotvec_t(p: np.ndarray) -> np.ndarray:
    return make_T(rotvec_to_R(p[:3]), p[3:6])


def T_to_rotvec_t(T: np.ndarray) -> np.ndarray:
    return np.concatenate([R_to_rotvec(T[:3, :3]), T[:3, 3]])
