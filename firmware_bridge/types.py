"""The interfaces every device and its simulated twin implement (shared DESIGN.md, "Interfaces").

Times are host monotonic seconds (time.monotonic()); device timestamps are converted in the driver.
Angles are radians: ticks, homing and direction stay inside the servo driver.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One camera frame: RGB uint8 HxWx3, optional depth (metres, float32, aligned to color)."""

    image: np.ndarray
    depth: Optional[np.ndarray]
    t: float
    seq: int


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics plus the distortion model the device reports."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    model: str = "none"
    coeffs: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class JointState:
    """Joint positions (rad) at host time t; velocity (rad/s) and current (A) when read."""

    q: np.ndarray
    t: float
    dq: Optional[np.ndarray] = None
    current: Optional[np.ndarray] = None


@runtime_checkable
class Camera(Protocol):
    intrinsics: Intrinsics

    def start(self) -> None: ...

    def latest(self) -> Optional[Frame]: ...

    def stop(self) -> None: ...


@runtime_checkable
class ServoBus(Protocol):
    def connect(self) -> None: ...

    def read(self) -> JointState: ...

    def write_goal(self, q: np.ndarray) -> None: ...

    def set_torque(self, on: bool) -> None: ...

    def close(self) -> None: ...
