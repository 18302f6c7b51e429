"""A scripted expert for the reach tasks, and the episode generator that records it.

The expert is a state-feedback controller in joint space (proportional, speed-limited), not a
fixed time-indexed trajectory: its next joint target depends only on the current joint angles
and the chosen target, so the demonstrations are a function a policy can learn from a short
observation history, and a policy that drifts off the demonstrated path sees data that tells
it how to come back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from firmware_bridge.sim import PlanarArm, Scene

# The joint limits of examples/sim.yaml (shoulder, elbow): what the runtime's safety filter enforces.
DEFAULT_JOINT_LIMITS = ((-1.6, 1.6), (-2.2, 2.2))


@dataclass
class ExpertConfig:
    """How the expert moves. Speeds are radians per second; the gain is 1/s."""

    max_speed: float = 1.5
    gain: float = 4.0
    joint_limits: Sequence[Sequence[float]] = DEFAULT_JOINT_LIMITS

    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        lim = np.asarray(self.joint_limits, dtype=np.float64)
        return lim[:, 0], lim[:, 1]


def goal_for_target(arm: PlanarArm, target: np.ndarray, q_now: np.ndarray, lo: np.ndarray, hi: np.ndarray
                    ) -> tuple[np.ndarray, bool]:
    """Joint angles that put the tip on ``target`` within the joint limits, nearest to ``q_now``.

    Returns (goal, reachable). When no inverse-kinematics solution respects the limits (a target
    behind the arm), the goal is the in-limits pose whose tip is closest to the target, so the expert
    still moves the way a person would and the recording says the episode could not succeed.
    """
    candidates = []
    for elbow_up in (True, False):
        try:
            q = arm.inverse(target, elbow_up=elbow_up)
        except ValueError:
            continue
        if q.size == lo.size and np.all(q >= lo - 1e-9) and np.all(q <= hi + 1e-9):
            candidates.append(q)
    if candidates:
        return min(candidates, key=lambda q: float(np.linalg.norm(q - q_now))), True
    # Closest reachable pose: a coarse grid over the limits, then a fine grid around its best cell.
    best = None
    for span in (None, 0.1):
        if span is None:
            axes = [np.linspace(l, h, 121) for l, h in zip(lo, hi)]
        else:
            axes = [np.clip(np.linspace(b - span, b + span, 41), l, h) for b, l, h in zip(best, lo, hi)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, lo.size)
        tips = np.array([arm.end_effector(q) for q in grid]) if lo.size > 2 else _tips2(arm, grid)
        best = grid[int(np.argmin(np.linalg.norm(tips - target, axis=1)))]
    return best, False


def _tips2(arm: PlanarArm, q: np.ndarray) -> np.ndarray:
    l1, l2 = arm.link_lengths[0], arm.link_lengths[1]
    h = np.cumsum(q, axis=1)
    return np.stack([l1 * np.cos(h[:, 0]) + l2 * np.cos(h[:, 1]), l1 * np.sin(h[:, 0]) + l2 * np.sin(h[:, 1])], axis=1)


class ReachExpert:
    """Drives the tip to one target: ``act(q)`` returns the next joint target one period later."""

    def __init__(self, arm: PlanarArm, config: ExpertConfig, period: float):
        self.arm = arm
        self.config = config
        self.period = float(period)
        self.lo, self.hi = config.limits()
        if self.lo.size != arm.n_joints:
            raise ValueError(f"expert joint limits name {self.lo.size} joints, the arm has {arm.n_joints}")
        self.goal: Optional[np.ndarray] = None
        self.reachable = False

    def choose(self, target: np.ndarray, q_now: np.ndarray) -> np.ndarray:
        self.goal, self.reachable = goal_for_target(self.arm, np.asarray(target, float), np.asarray(q_now, float),
                                                    self.lo, self.hi)
        return self.goal

    def act(self, q: np.ndarray) -> np.ndarray:
        if self.goal is None:
            raise RuntimeError("ReachExpert.act before choose(target)")
        err = self.goal - q
        dist = float(np.linalg.norm(err))
        if dist < 1e-9:
            return self.goal.copy()
        speed = min(self.config.max_speed, self.config.gain * dist)
        step = err / dist * min(speed * self.period, dist)
        return np.clip(q + step, self.lo, self.hi)


@dataclass
class Episode:
    """One demonstration: ``image[i]``, ``state[i]`` observed at ``timestamp[i]``, then ``action[i]`` commanded."""

    image: np.ndarray  # (L, H, W, 3) uint8
    state: np.ndarray  # (L, J) float32 radians
    action: np.ndarray  # (L, J) float32 radians (next joint target)
    timestamp: np.ndarray  # (L,) float32 seconds from the episode start
    info: dict = field(default_factory=dict)


@dataclass
class TaskConfig:
    """The scene and episode parameters a dataset was recorded with (stored in its metadata)."""

    task: str = "reach"
    link_lengths: Sequence[float] = (0.12, 0.10)
    workspace: float = 0.3
    image_size: int = 96
    period: float = 0.1
    steps: int = 30
    # Radians: the episode starts uniformly within this of the home pose. None: the task's default
    # (see _task_start_noise): 0.4 for reach, 0 for reach_multimodal.
    start_noise: Optional[float] = None
    home: Sequence[float] = (0.0, 0.0)

    def to_dict(self) -> dict:
        return {"task": self.task, "link_lengths": [float(x) for x in self.link_lengths],
                "workspace": float(self.workspace), "image_size": int(self.image_size), "period": float(self.period),
                "steps": int(self.steps), "start_noise": float(self.start_noise), "home": [float(x) for x in self.home]}


# The start-pose noise each task gets unless told otherwise. reach_multimodal starts exactly at home:
# its two targets are mirrored about the home direction, so a start pose off home would make one of
# them nearer and the first observation would hint which one to take — the point of the task is
# that nothing does, so a policy must commit to a mode (diffusion) or average them (regression).
_TASK_START_NOISE = {"reach": 0.4, "reach_multimodal": 0.0}


def _get_start_noise(self: TaskConfig) -> float:
    value = self.__dict__.get("_start_noise")
    return float(_TASK_START_NOISE.get(self.task, 0.4) if value is None else value)


def _set_start_noise(self: TaskConfig, value: Optional[float]) -> None:
    # The dataclass __init__ passes its default through here; a property object means "not given".
    self.__dict__["_start_noise"] = None if value is None or isinstance(value, property) else float(value)


# A property over the dataclass field: code that sets ``task.task`` after construction (the recorder
# does) still gets that task's default, and readers of ``task.start_noise`` always see a number.
TaskConfig.start_noise = property(_get_start_noise, _set_start_noise)  # type: ignore[assignment]


def make_scene(task: TaskConfig, joint_angles, seed: int = 0,
               joint_limits: Optional[Sequence[Sequence[float]]] = None) -> Scene:
    """``joint_limits``: the multimodal targets are placed reachable within these (None: examples/sim.yaml's)."""
    return Scene(joint_angles, link_lengths=task.link_lengths, task=task.task, workspace=task.workspace,
                 width=task.image_size, height=task.image_size, seed=seed, depth=False,
                 joint_limits=joint_limits)


def record_episode(task: TaskConfig, expert_cfg: ExpertConfig, seed: int,
                   on_step: Optional[Callable[[int], None]] = None) -> Episode:
    """Run the expert for one episode; the scene's targets and the start pose come from ``seed``.
    ``on_step(i)`` runs after each step (pacing, progress)."""
    q = np.zeros(len(task.link_lengths))
    scene = make_scene(task, lambda: q, seed=seed, joint_limits=expert_cfg.joint_limits)
    targets = scene.reset(seed)
    rng = np.random.default_rng([seed, 1])  # independent of the scene's own draw from the same seed
    expert = ReachExpert(scene.arm, expert_cfg, task.period)
    home = np.asarray(task.home, dtype=np.float64)
    q[:] = np.clip(home + rng.uniform(-task.start_noise, task.start_noise, size=q.size), expert.lo, expert.hi)
    # Either target with equal chance (the multimodal variant), among those the arm can reach when any can.
    reachable = [i for i, t in enumerate(targets) if goal_for_target(scene.arm, t, q, expert.lo, expert.hi)[1]]
    pool = reachable or list(range(len(targets)))
    chosen = int(pool[int(rng.integers(len(pool)))])
    expert.choose(targets[chosen], q)
    n = int(task.steps)
    images = np.empty((n, task.image_size, task.image_size, 3), np.uint8)
    states = np.empty((n, q.size), np.float32)
    actions = np.empty((n, q.size), np.float32)
    for i in range(n):
        images[i] = scene.render(i * task.period)[0]
        states[i] = q
        a = expert.act(q)
        actions[i] = a
        q[:] = a  # the kinematic twin reaches each target within one period
        if on_step is not None:
            on_step(i)
    info = {"seed": int(seed), "targets": targets.round(6).tolist(), "chosen_target": chosen,
            "reachable": bool(expert.reachable), "success": bool(scene.success()),
            "final_distance": round(scene.distance_to_target(), 6)}
    return Episode(images, states, actions, (np.arange(n) * task.period).astype(np.float32), info)
