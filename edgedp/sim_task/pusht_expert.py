"""An expert that solves Push-T by planning pushes in a copy of gym-pusht's own simulation.

Push-T's block has no friction with the table and the space's damping is 0 (pymunk: bodies keep none of
their velocity), so the T is quasi-static: it moves only while the pusher touches it, and the outcome of a
push is a deterministic function of the T's pose and the pusher's path. The expert exploits that: at every
decision it tries a set of push primitives in a private :class:`PushTWorld` — a contact point on the T's
outline, a push direction (the inward normal, or ±25° from it) and a push length — and executes the one
that leaves the T's pose closest to the goal (position error + ``angle_weight`` × angle error, plus a small
charge per unit of travel to get there). Getting there: the pusher goes around the T along an outline
inflated by its radius, never through it. Which side it pushes from follows from the T's pose, so the
demonstrations push from all sides — the multimodality a policy has to learn.

The expert acts at gym-pusht's 10 Hz: each action is the next point on its path, one period of travel ahead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import shapely.geometry as sg

from firmware_bridge.sim.pusht import (
    CENTRE, CONTROL_PERIOD, MAX_STEPS, PHYSICS_DT, PUSHER_RADIUS, SUCCESS_COVERAGE, TABLE, Gantry, PushTWorld)

# The T's outline in its body frame (gym-pusht's add_tee with scale 30): corners in order, counter-clockwise.
T_OUTLINE = np.array([(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30), (-60, 30)], float)


@dataclass
class PushTExpertConfig:
    approach_speed: float = 250.0  # table units (mm) per second while travelling to a contact
    push_speed: float = 150.0  # while pushing
    push_lengths: tuple = (6.0, 15.0, 35.0, 70.0)
    push_angles_deg: tuple = (0.0, -25.0, 25.0)
    contact_spacing: float = 10.0  # between candidate contact points along the outline
    angle_weight: float = 80.0  # table units per radian of angle error in the cost
    travel_weight: float = 0.03  # cost per unit of approach path
    clearance: float = 6.0  # extra distance kept from the T while going around it

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def pose_error(block: np.ndarray, goal: np.ndarray) -> tuple[float, float]:
    """(position error in table units, absolute angle error in radians wrapped to [0, pi])."""
    d = float(np.hypot(block[0] - goal[0], block[1] - goal[1]))
    a = float(abs((block[2] - goal[2] + np.pi) % (2 * np.pi) - np.pi))
    return d, a


def _rot(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def t_polygon(block: np.ndarray) -> sg.Polygon:
    """The T's outline in table coordinates for pose (x, y, angle)."""
    return sg.Polygon(T_OUTLINE @ _rot(block[2]).T + block[:2])


def contact_candidates(spacing: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(point, outward normal) pairs along the outline in the body frame, kept off the corners."""
    out = []
    n = len(T_OUTLINE)
    for i in range(n):
        a, b = T_OUTLINE[i], T_OUTLINE[(i + 1) % n]
        edge = b - a
        length = float(np.linalg.norm(edge))
        tangent = edge / length
        normal = np.array([tangent[1], -tangent[0]])  # outward for a counter-clockwise outline
        k = max(1, int(round((length - 6.0) / spacing)))
        for s in np.linspace(3.0, length - 3.0, k) if k > 1 else [length / 2]:
            out.append((a + tangent * s, normal))
    return out


@dataclass
class Push:
    """One primitive: go to ``start`` (around the T), then push in a straight line to ``end``."""

    start: np.ndarray
    end: np.ndarray
    cost: float
    predicted: np.ndarray  # T pose the planner expects after the push


class PushPlanner:
    """Chooses the next push by simulating every candidate in a private gym-pusht world."""

    def __init__(self, config: PushTExpertConfig, goal: np.ndarray):
        self.cfg = config
        self.goal = np.asarray(goal, float)
        self.sim = PushTWorld(16, 16)  # never rendered
        self.sim.count_contacts(False)  # gym-pusht's contact counter costs a third of the planning time
        self.contacts = contact_candidates(config.contact_spacing)
        lo, hi = PUSHER_RADIUS + 2, TABLE - PUSHER_RADIUS - 2
        self.bounds = (lo, hi)

    def cost(self, block: np.ndarray) -> float:
        d, a = pose_error(block, self.goal)
        return d + self.cfg.angle_weight * a

    def simulate(self, block: np.ndarray, start: np.ndarray, direction: np.ndarray,
                 lengths: tuple) -> list[np.ndarray]:
        """The T's pose after pushes of each of ``lengths`` (ascending) from ``start`` along ``direction`` at push
        speed, from one simulated push: quasi-static, a shorter push passes through the same states."""
        self.sim.set_state(start, block)
        step = self.cfg.push_speed * PHYSICS_DT
        lo, hi = self.bounds
        poses, travelled = [], 0.0
        end = start + direction * (lengths[-1] + 2.0)
        clip = bool(np.any(end < lo) or np.any(end > hi))
        for length in lengths:
            while travelled < length + 2.0:
                travelled = min(length + 2.0, travelled + step)
                p = start + direction * travelled
                self.sim.move_pusher(np.clip(p, lo, hi) if clip else p)
            poses.append(self.sim.block_pose())
        return poses

    def plan(self, pusher: np.ndarray, block: np.ndarray, rng: np.random.Generator) -> Push:
        poly = t_polygon(block)
        rot = _rot(block[2])
        lo, hi = self.bounds
        pushes: list[Push] = []
        for point, normal in self.contacts:
            p_world = rot @ point + block[:2]
            n_world = rot @ normal
            start = p_world + n_world * (PUSHER_RADIUS + 2.0)
            if np.any(start < lo) or np.any(start > hi):
                continue
            if poly.distance(sg.Point(start)) < PUSHER_RADIUS + 1.0:  # a concave corner: the other arm is in the way
                continue
            travel = float(np.linalg.norm(start - pusher))
            lengths = tuple(sorted(self.cfg.push_lengths))
            for ang in self.cfg.push_angles_deg:
                d = _rot(np.deg2rad(ang)) @ (-n_world)
                for length, after in zip(lengths, self.simulate(block, start, d, lengths)):
                    end = np.clip(start + d * (length + 2.0), lo, hi)
                    pushes.append(Push(start, end, self.cost(after) + self.cfg.travel_weight * travel, after))
        if not pushes:
            raise RuntimeError("no push candidate fits on the table")
        pushes.sort(key=lambda p: p.cost)
        if pushes[0].cost >= self.cost(block) - 0.5:  # stuck: no push helps now; try one of the better few
            return pushes[int(rng.integers(min(8, len(pushes))))]
        return pushes[0]


def route_around(pusher: np.ndarray, target: np.ndarray, block: np.ndarray, clearance: float,
                 bounds: tuple[float, float]) -> list[np.ndarray]:
    """Waypoints from ``pusher`` to ``target`` that keep the pusher off the T: straight when the segment is
    clear, else out to the T's outline inflated by radius + clearance, along it the shorter way, and in."""
    poly = t_polygon(block)
    if sg.LineString([pusher, target]).distance(poly) >= PUSHER_RADIUS - 0.5:
        return [target]
    ring = poly.buffer(PUSHER_RADIUS + clearance).exterior
    a, b = ring.project(sg.Point(pusher)), ring.project(sg.Point(target))
    total = ring.length
    forward = (b - a) % total
    backward = (a - b) % total
    step = 8.0
    if forward <= backward:
        dists = a + np.arange(0.0, forward, step)
    else:
        dists = a - np.arange(0.0, backward, step)
    pts = [np.clip(np.array(ring.interpolate(s % total).coords[0]), *bounds) for s in dists]
    pts.append(np.clip(np.array(ring.interpolate(b).coords[0]), *bounds))
    pts.append(target)
    return pts


class PushTExpert:
    """Closed-loop: re-plans a push whenever the last one is done; ``act(pusher, block)`` → next pusher target."""

    def __init__(self, config: PushTExpertConfig, goal: np.ndarray, seed: int = 0):
        self.cfg = config
        self.planner = PushPlanner(config, goal)
        self.rng = np.random.default_rng([int(seed), 7])
        self.path: list[tuple[np.ndarray, float]] = []  # (waypoint, speed)
        self.pushes = 0
        self.sides: list[int] = []  # outline edge index of each push's contact (which side it pushed from)

    def _new_plan(self, pusher: np.ndarray, block: np.ndarray) -> None:
        push = self.planner.plan(pusher, block, self.rng)
        route = route_around(pusher, push.start, block, self.cfg.clearance, self.planner.bounds)
        self.path = [(p, self.cfg.approach_speed) for p in route] + [(push.end, self.cfg.push_speed)]
        self.pushes += 1
        self.sides.append(_side_of(push.start, block))

    def act(self, commanded: np.ndarray, block: np.ndarray) -> np.ndarray:
        """The next commanded pusher position, one control period of travel along the path from ``commanded``."""
        pos = np.asarray(commanded, float).copy()
        if not self.path:
            self._new_plan(pos, block)
        budget = CONTROL_PERIOD
        while self.path and budget > 1e-9:
            target, speed = self.path[0]
            dist = float(np.linalg.norm(target - pos))
            t_need = dist / speed
            if t_need <= budget:
                pos = target.copy()
                budget -= t_need
                self.path.pop(0)
            else:
                pos = pos + (target - pos) * (budget * speed / dist)
                budget = 0.0
        return pos


def _side_of(start: np.ndarray, block: np.ndarray) -> int:
    """Which quadrant of the T's body frame the push came from (0..3: +x, +y, -x, -y)."""
    local = _rot(-block[2]) @ (start - block[:2]) - np.array([0.0, 45.0])  # about the T's middle
    ang = np.arctan2(local[1], local[0])
    return int(((ang + np.pi / 4) % (2 * np.pi)) // (np.pi / 2))


@dataclass
class PushTEpisode:
    """One demonstration, in the edgedp Episode layout plus the keypoints."""

    image: np.ndarray  # (L, H, W, 3) uint8, gym-pusht's render
    state: np.ndarray  # (L, 2) gantry joint angles (rad)
    action: np.ndarray  # (L, 2) gantry joint targets (rad)
    keypoints: np.ndarray  # (L, 16) the T's keypoints (table units)
    timestamp: np.ndarray
    info: dict = field(default_factory=dict)


def run_expert_episode(seed: int, config: Optional[PushTExpertConfig] = None, pulley_radius: float = 0.1,
                       image_size: int = 96, max_steps: int = MAX_STEPS, render: bool = True,
                       on_step: Optional[Callable[[int], None]] = None) -> PushTEpisode:
    """The expert on gym-pusht's seed ``seed``, in simulation time (not real time).

    Between two 10 Hz actions the pusher moves linearly from the last target to the new one over the ten
    physics steps — what the runtime's servo loop (interpolating timed actions) and the emulated servos do.
    The episode ends at gym-pusht's success (coverage > 0.95) or after ``max_steps``.
    """
    config = config or PushTExpertConfig()
    gantry = Gantry(pulley_radius)
    world = PushTWorld(image_size, image_size)
    world.reset(int(seed))
    expert = PushTExpert(config, world.goal_pose, seed)
    commanded = world.pusher()
    images, states, actions, kps = [], [], [], []
    coverage, max_cov, success_step = 0.0, 0.0, None
    sub = int(round(CONTROL_PERIOD / PHYSICS_DT))
    for i in range(int(max_steps)):
        if render:
            images.append(world.render())
        states.append(gantry.to_joints(world.pusher()))
        kps.append(world.keypoints())
        target = np.clip(expert.act(commanded, world.block_pose()), PUSHER_RADIUS, TABLE - PUSHER_RADIUS)
        actions.append(gantry.to_joints(target))
        for k in range(1, sub + 1):
            world.move_pusher(commanded + (target - commanded) * (k / sub))
        commanded = target
        coverage = world.coverage()
        max_cov = max(max_cov, coverage)
        if on_step is not None:
            on_step(i)
        if coverage > SUCCESS_COVERAGE:
            success_step = i + 1
            break
    n = len(states)
    d, a = pose_error(world.block_pose(), world.goal_pose)
    info = {"seed": int(seed), "success": success_step is not None, "success_step": success_step,
            "max_coverage": round(max_cov, 4), "final_coverage": round(coverage, 4), "pushes": expert.pushes,
            "sides": sorted(set(expert.sides)), "final_position_error": round(d, 2),
            "final_angle_error_deg": round(float(np.degrees(a)), 2)}
    image = np.stack(images) if render else np.zeros((n, image_size, image_size, 3), np.uint8)
    return PushTEpisode(image, np.array(states, np.float32), np.array(actions, np.float32),
                        np.array(kps, np.float32), (np.arange(n) * CONTROL_PERIOD).astype(np.float32), info)
