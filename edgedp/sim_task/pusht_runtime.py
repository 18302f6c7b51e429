"""Wiring the Push-T scene into a run (called from edgedp/app.py when ``scene.task: pusht``).

The scene is built once per run, whether or not a camera shows it: a state-based policy sees the T only
through its keypoints, yet the physics must still run. Its physics thread starts before the cameras (the
starters run in order) and stops after them. A policy with gym-pusht's keypoint feature
(``observation.environment_state``) gets it from a :class:`KeypointSensor`, a source behind the Camera
protocol, so it is sampled by time like every other observation.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from edgedp.errors import UserError


def add_pusht_scene(plan: Any, dev: Any, angles: Callable[[], np.ndarray]) -> None:
    """Build the Push-T scene into ``dev`` (scene, starters, closers, the keypoint sensor if the policy wants it)."""
    try:
        from firmware_bridge.sim.pusht import KEYPOINT_KEY, KeypointSensor, PushTScene
    except ImportError as exc:
        raise UserError(f"scene.task: pusht needs gym-pusht: {exc}") from None
    cfg = plan.cfg
    if len(plan.joints) != 2:
        raise UserError(f"robot.joints: the Push-T gantry has 2 joints (x, y), the config has {len(plan.joints)}")
    virtual = [c for c in cfg.cameras if c.kind == "virtual"]
    width, height = (virtual[0].width, virtual[0].height) if virtual else (96, 96)
    scene = PushTScene(angles, pulley_radius=cfg.scene.pulley_radius, width=width, height=height,
                       seed=cfg.scene.seed)
    dev.scene = scene
    dev.starters.append(scene.start)
    dev.closers.append(scene.stop)
    if KEYPOINT_KEY in plan.feature_shapes:
        if tuple(plan.feature_shapes[KEYPOINT_KEY]) != (16,):
            raise UserError(f"policy.checkpoint: feature '{KEYPOINT_KEY}' has shape {plan.feature_shapes[KEYPOINT_KEY]}, "
                            f"the Push-T keypoints are (16,)")
        fps = max((c.fps for c in virtual), default=30)
        dev.cameras[KEYPOINT_KEY] = KeypointSensor(scene, fps=fps)
