"""Forward kinematics: base←tool pose from joint angles, by DH parameters or a minimal URDF.

DH convention (standard/distal, as in Craig's "classic" and Spong): row i = [a, alpha, d, theta_offset]
and the link transform is  Rz(q_i + theta_offset) · Tz(d) · Tx(a) · Rx(alpha).
For a prismatic robot use a URDF; DH rows here are revolute only.
The URDF reader understands revolute, continuous, prismatic and fixed joints with origin xyz/rpy and
an axis, along the single chain from the root link to a named tip link; joint angles are given in the
order the movable joints appear along that chain.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from calibration.errors import CalibrationError
from calibration.se3 import make_T, rotvec_to_R, rpy_to_R


def dh_link(a: float, alpha: float, d: float, theta: float) -> np.ndarray:
    ct, st = math.cos(theta), math.sin(theta)
    ca, sa = math.cos(alpha), math.sin(alpha)
    return np.array(
        [
            [ct, -st * ca, st * sa, a * ct],
            [st, ct * ca, -ct * sa, a * st],
            [0.0, sa, ca, d],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


class DHChain:
    """Revolute chain from DH rows; optional fixed tool transform appended after the last link."""

    def __init__(self, rows: Sequence[Sequence[float]], tool: Optional[np.ndarray] = None):
        arr = np.asarray(rows, dtype=float)
        if arr.ndim != 2 or arr.shape[1] != 4 or len(arr) == 0:
            raise CalibrationError("DH parameters must be a list of rows [a, alpha, d, theta_offset], one per joint")
        if not np.all(np.isfinite(arr)):
            raise CalibrationError("DH parameters must be finite numbers")
        self.rows = arr
        self.tool = np.eye(4) if tool is None else np.asarray(tool, dtype=float)

    @property
    def n_joints(self) -> int:
        return len(self.rows)

    def fk(self, q: Sequence[float]) -> np.ndarray:
        q = np.asarray(q, dtype=float).reshape(-1)
        if len(q) != self.n_joints:
            raise CalibrationError(f"got {len(q)} joint values for a {self.n_joints}-joint DH chain")
        T = np.eye(4)
        for (a, alpha, d, off), qi in zip(self.rows, q):
            T = T @ dh_link(a, alpha, d, qi + off)
        return T @ self.tool


@dataclass
class _UrdfJoint:
    name: str
    kind: str
    parent: str
    child: str
    origin: np.ndarray
    axis: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))


class URDFChain:
    """The serial chain of a URDF between its root link and `tip` (default: the only leaf)."""

    MOVABLE = ("revolute", "continuous", "prismatic")

    def __init__(self, path: str | Path, tip: Optional[str] = None, base: Optional[str] = None):
        path = Path(path)
        if not path.is_file():
            raise CalibrationError(f"URDF not found: {path}")
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise CalibrationError(f"{path}: not valid XML ({exc})") from None
        joints: dict[str, _UrdfJoint] = {}
        for j in root.findall("joint"):
            kind = j.get("type", "")
            if kind not in self.MOVABLE + ("fixed",):
                raise CalibrationError(f"{path}: joint '{j.get('name')}' has type '{kind}' (supported: revolute, continuous, prismatic, fixed)")
            parent = j.find("parent")
            child = j.find("child")
            if parent is None or child is None:
                raise CalibrationError(f"{path}: joint '{j.get('name')}' needs <parent link=...> and <child link=...>")
            o = j.find("origin")
            xyz = _floats(o.get("xyz", "0 0 0") if o is not None else "0 0 0", 3, path)
            rpy = _floats(o.get("rpy", "0 0 0") if o is not None else "0 0 0", 3, path)
            ax = j.find("axis")
            axis = _floats(ax.get("xyz", "1 0 0"), 3, path) if ax is not None else np.array([1.0, 0.0, 0.0])
            n = np.linalg.norm(axis)
            if kind in self.MOVABLE and n < 1e-9:
                raise CalibrationError(f"{path}: joint '{j.get('name')}' has a zero axis")
            joints[parent.get("link") + "->" + child.get("link")] = _UrdfJoint(
                j.get("name", "?"), kind, parent.get("link"), child.get("link"),
                make_T(rpy_to_R(*rpy), xyz), axis / (n if n > 0 else 1.0),
            )
        by_child = {j.child: j for j in joints.values()}
        parents = {j.parent for j in joints.values()}
        links = {l.get("name") for l in root.findall("link")}
        if tip is None:
            leaves = sorted(l for l in links if l not in parents and l in by_child)
            if len(leaves) != 1:
                raise CalibrationError(f"{path}: cannot tell the tool link (leaves: {', '.join(leaves) or 'none'}); name it")
            tip = leaves[0]
        if tip not in links:
            raise CalibrationError(f"{path}: no link named '{tip}'")
        chain: list[_UrdfJoint] = []
        link = tip
        while link in by_child and link != base:
            j = by_child[link]
            chain.append(j)
            link = j.parent
            if len(chain) > len(joints):
                raise CalibrationError(f"{path}: the joint tree has a loop")
        if base is not None and link != base:
            raise CalibrationError(f"{path}: link '{base}' is not above '{tip}'")
        self.chain = list(reversed(chain))
        self.base_link = link
        self.tip_link = tip
        self.joint_names = [j.name for j in self.chain if j.kind in self.MOVABLE]

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    def fk(self, q: Sequence[float]) -> np.ndarray:
        q = np.asarray(q, dtype=float).reshape(-1)
        if len(q) != self.n_joints:
            raise CalibrationError(f"got {len(q)} joint values for a URDF chain with {self.n_joints} movable joints ({', '.join(self.joint_names)})")
        T = np.eye(4)
        k = 0
        for j in self.chain:
            T = T @ j.origin
            if j.kind in ("revolute", "continuous"):
                T = T @ make_T(rotvec_to_R(j.axis * q[k]), np.zeros(3))
                k += 1
            elif j.kind == "prismatic":
                T = T @ make_T(np.eye(3), j.axis * q[k])
                k += 1
        return T


def _floats(text: str, n: int, path: Path) -> np.ndarray:
    try:
        vals = np.array([float(v) for v in text.split()])
    except ValueError:
        raise CalibrationError(f"{path}: expected {n} numbers, got '{text}'") from None
    if len(vals) != n:
        raise CalibrationError(f"{path}: expected {n} numbers, got '{text}'")
    return vals
