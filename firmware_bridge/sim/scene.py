"""The simulated scene: arm joint angles (from the servo emulator's motor model) + targets → images.

The scene owns no motors. It is given ``joint_angles()``, a callable returning the arm's present
joint angles in radians (the runtime wires it to the Dynamixel emulator, so the picture shows
what the emulated servos actually did, lag and limits included). It places the task's targets,
judges success and renders top-down RGB (and depth) for the virtual RealSense.

Tasks: ``reach`` (one target), ``reach_multimodal`` (two identical targets mirrored about the
arm's y axis: either is a success, so a policy must pick one — the classic multimodal case),
``none`` (no target: just the arm).
"""
from __future__ import annotations

import threading
from typing import Callable, Optional, Sequence

import numpy as np

from firmware_bridge.sim.kinematics import PlanarArm
from firmware_bridge.sim.render import TopDownRenderer, TopDownView
from firmware_bridge.types import Intrinsics

TASKS = ("reach", "reach_multimodal", "none")


class Scene:
    def __init__(
        self,
        joint_angles: Callable[[], np.ndarray],
        link_lengths: Sequence[float] = (0.12, 0.10),
        task: str = "reach",
        workspace: float = 0.3,
        width: int = 96,
        height: int = 96,
        seed: int = 0,
        success_radius: float = 0.015,
        target_radius: float = 0.012,
        camera_height: float = 0.5,
        depth: bool = True,
    ):
        if task not in TASKS:
            raise ValueError(f"unknown scene task '{task}' (known: {', '.join(TASKS)})")
        self.joint_angles = joint_angles
        self.arm = PlanarArm(link_lengths)
        self.task = task
        self.view = TopDownView(int(width), int(height), float(workspace), float(camera_height))
        self.renderer = TopDownRenderer(self.view, target_radius=target_radius)
        self.success_radius = float(success_radius)
        self.target_radius = float(target_radius)
        self.render_depth = bool(depth)
        self.seed = int(seed)
        self.episode = 0
        self._lock = threading.Lock()  # reset() may run while the camera thread renders
        self.targets = np.zeros((0, 2))
        self.reset(seed)

    # -- geometry ---------------------------------------------------------------------------------
    @property
    def intrinsics(self) -> Intrinsics:
        return self.view.intrinsics

    def q(self) -> np.ndarray:
        return np.asarray(self.joint_angles(), dtype=np.float64).reshape(-1)

    def end_effector(self) -> np.ndarray:
        return self.arm.end_effector(self.q())

    def distance_to_target(self) -> float:
        """Metres from the tip to the nearest target (inf without targets)."""
        targets = self.targets
        if len(targets) == 0:
            return float("inf")
        return float(np.min(np.linalg.norm(targets - self.end_effector(), axis=1)))

    def success(self) -> bool:
        return self.distance_to_target() <= self.success_radius

    # -- episodes ---------------------------------------------------------------------------------
    def reset(self, seed: Optional[int] = None) -> np.ndarray:
        """New targets for a new episode (seed None: the next episode of the configured seed)."""
        if seed is None:
            self.episode += 1
            seed = self.seed + self.episode
        rng = np.random.default_rng(int(seed))
        targets = self._sample_targets(rng)
        with self._lock:
            self.targets = targets
        return targets.copy()

    def _sample_targets(self, rng: np.random.Generator) -> np.ndarray:
        if self.task == "none":
            return np.zeros((0, 2))
        hx, hy = self.view.half_extent
        margin = 2 * self.target_radius
        lo = max(self.arm.inner_reach, 0.3 * self.arm.reach) + margin
        hi = 0.9 * self.arm.reach
        for _ in range(10000):
            p = np.array([rng.uniform(-hx + margin, hx - margin), rng.uniform(-hy + margin, hy - margin)])
            r = float(np.hypot(*p))
            if not lo <= r <= hi:
                continue
            if self.task == "reach":
                return p[None, :]
            mirror = np.array([-p[0], p[1]])
            if np.linalg.norm(p - mirror) >= 4 * max(self.success_radius, self.target_radius):
                return np.stack([p, mirror])
        raise ValueError(
            f"no reachable target fits in view: workspace {self.view.workspace} m, links {list(self.arm.link_lengths)}"
        )

    # -- pictures ---------------------------------------------------------------------------------
    def render(self, t: float = 0.0) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """RGB uint8 (H, W, 3) and depth float32 metres (or None) of the scene now; ``t`` is the capture
        time the camera asks for (the arm is read at call time, which is when the camera captures)."""
        joints = self.arm.joint_positions(self.q())
        with self._lock:
            targets = self.targets
        rgb = self.renderer.rgb(joints, targets)
        depth = self.renderer.depth(joints) if self.render_depth else None
        return rgb, depth
