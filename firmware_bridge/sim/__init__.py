"""The simulated scene: a planar arm of emulated servos seen top-down by a virtual RealSense."""
from __future__ import annotations

from firmware_bridge.sim.kinematics import PlanarArm
from firmware_bridge.sim.render import TopDownRenderer, TopDownView
from firmware_bridge.sim.scene import TASKS, Scene

__all__ = ["PlanarArm", "TopDownView", "TopDownRenderer", "Scene", "TASKS"]
