"""Forward (and, for two links, inverse) kinematics of a planar arm of revolute joints.

Angles are radians, each measured relative to the previous link (joint 0 from the world +x
axis, counter-clockwise positive); lengths are metres; the base is the world origin.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class PlanarArm:
    def __init__(self, link_lengths: Sequence[float] = (0.12, 0.10)):
        lengths = np.asarray(link_lengths, dtype=np.float64)
        if lengths.ndim != 1 or not 1 <= lengths.size <= 3:
            raise ValueError(f"a planar arm has 1 to 3 links, got {lengths.size}")
        if np.any(lengths <= 0):
            raise ValueError(f"link lengths must be positive metres, got {list(lengths)}")
        self.link_lengths = lengths
        self.n_joints = int(lengths.size)
        self.reach = float(lengths.sum())
        # The closest point the tip can reach to the base (0 when the links can fold back past it).
        longest = float(lengths.max())
        self.inner_reach = max(0.0, 2 * longest - self.reach)

    def _check(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if q.size != self.n_joints:
            raise ValueError(f"expected {self.n_joints} joint angles, got {q.size}")
        return q

    def joint_positions(self, q: np.ndarray) -> np.ndarray:
        """(n_joints + 1, 2): the base, each joint after it, and the end effector last."""
        q = self._check(q)
        heading = np.cumsum(q)
        steps = self.link_lengths[:, None] * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        out = np.zeros((self.n_joints + 1, 2))
        np.cumsum(steps, axis=0, out=out[1:])
        return out

    def end_effector(self, q: np.ndarray) -> np.ndarray:
        return self.joint_positions(q)[-1]

    def inverse(self, xy: Sequence[float], elbow_up: bool = True) -> np.ndarray:
        """Joint angles that put the tip at ``xy`` (two-link arms; a three-link arm keeps its last joint
        straight). Raises ValueError when the point is out of reach."""
        x, y = float(xy[0]), float(xy[1])
        if self.n_joints == 1:
            return np.array([np.arctan2(y, x)])
        l1 = float(self.link_lengths[0])
        l2 = float(self.link_lengths[1:].sum())
        r2 = x * x + y * y
        c2 = (r2 - l1 * l1 - l2 * l2) / (2 * l1 * l2)
        if not -1.0 <= c2 <= 1.0:
            raise ValueError(f"point ({x:.3f}, {y:.3f}) m is out of reach of links {list(self.link_lengths)}")
        q2 = np.arccos(c2) * (1.0 if elbow_up else -1.0)
        q1 = np.arctan2(y, x) - np.arctan2(l2 * np.sin(q2), l1 + l2 * np.cos(q2))
        q = [q1, q2] + [0.0] * (self.n_joints - 2)
        return (np.asarray(q) + np.pi) % (2 * np.pi) - np.pi
