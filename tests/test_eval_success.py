"""Oracle check of success detection: drive the emulated servos (over the real bus protocol) onto the target
and beside it, and check that success is reported exactly when the tip is within the success radius."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edgedp.config import load_config
from edgedp.evaluation.episodes import EvalSession
from edgedp.evaluation.homing import move_home
from edgedp.evaluation.judge import SuccessJudge, nearest_target
from firmware_bridge.sim import Scene

SIM = Path(__file__).resolve().parents[1] / "examples" / "sim.yaml"


@pytest.fixture(scope="module")
def session():
    cfg = load_config(SIM)
    cfg.policy.checkpoint = "preset:small"  # any policy: these tests drive the arm or judge the planner
    s = EvalSession(cfg)
    s.open()
    yield s
    s.close()


def _reachable_pose(scene: Scene, lower, upper, point) -> np.ndarray:
    for elbow_up in (True, False):
        q = scene.arm.inverse(point, elbow_up=elbow_up)
        if np.all(q >= lower) and np.all(q <= upper):
            return q
    raise AssertionError("no in-limits pose")


def test_success_is_reported_on_the_target_and_not_beside_it(session):
    scene = session.scene
    joints = session.cfg.robot.joints
    lower = np.array([j.min for j in joints])
    upper = np.array([j.max for j in joints])
    for seed in range(50):  # a seed whose target the arm can reach within its joint limits
        (target,) = scene.reset(seed)
        try:
            on = _reachable_pose(scene, lower, upper, target)
            radial = target / np.linalg.norm(target)
            beside = _reachable_pose(scene, lower, upper, target - 2.5 * scene.success_radius * radial)
            break
        except (AssertionError, ValueError):
            continue
    else:
        pytest.fail("no seed in 0..49 puts a target within the arm's joint limits")
    hits: list[float] = []
    judge = SuccessJudge(scene, on_success=lambda: hits.append(1.0), period=0.005, dwell=0.1)
    judge.start()
    try:
        move_home(session.parts.make_bus, beside, session.max_velocity)
        time.sleep(0.3)  # longer than the dwell: staying beside the target is no success
        assert not judge.check()
        assert hits == [] and judge.t_success is None
        assert scene.distance_to_target() > scene.success_radius
        move_home(session.parts.make_bus, on, session.max_velocity)
        assert scene.distance_to_target() < scene.success_radius
        assert judge.check()
        deadline = time.monotonic() + 2.0
        while not hits and time.monotonic() < deadline:  # the polling thread reports after the dwell
            time.sleep(0.01)
    finally:
        judge.stop()
    assert hits == [1.0]  # reported once
    assert judge.time_to_success is not None and judge.time_to_success > 0
    assert judge.min_distance <= scene.success_radius
    # the emulator's own servo positions agree with what the scene judged
    q_servo = np.array([session.parts.emulator.position(j.id) for j in joints])
    assert np.allclose(q_servo, on, atol=0.01)


def test_either_target_counts_on_the_multimodal_task():
    q = np.zeros(2)
    scene = Scene(lambda: q, task="reach_multimodal", seed=0, depth=False)
    for seed in range(20):
        targets = scene.reset(seed)
        assert targets.shape == (2, 2)
        for k, t in enumerate(targets):
            for elbow_up in (True, False):
                q[:] = scene.arm.inverse(t, elbow_up=elbow_up)
                judge = SuccessJudge(scene, dwell=0.0)
                assert judge.check() and judge.t_success is not None
                assert nearest_target(scene) == k
        midpoint = targets.mean(axis=0)  # where a policy that averages the two demonstrations ends up
        if np.linalg.norm(midpoint) > scene.arm.inner_reach + 1e-3:
            q[:] = scene.arm.inverse(midpoint)
            judge = SuccessJudge(scene, dwell=0.0)
            assert not judge.check() and judge.t_success is None


def test_sweeping_across_the_target_is_not_a_success():
    """The tip must stay: inside for less than the dwell, then out again, is no success."""
    q = np.zeros(2)
    now = [0.0]
    scene = Scene(lambda: q, task="reach", seed=0, depth=False)
    (target,) = scene.reset(0)
    on = scene.arm.inverse(target)
    off = scene.arm.inverse(target * 0.8)
    judge = SuccessJudge(scene, dwell=0.2, clock=lambda: now[0])
    for t, pose in ((0.0, off), (0.1, on), (0.25, on), (0.3, off), (0.5, on), (0.65, on)):
        now[0] = t
        q[:] = pose
        judge.check()
    assert judge.t_success is None  # two stays of 0.15 s
    now[0] = 0.75
    judge.check()
    assert judge.t_success == 0.5  # the stay that succeeded began at 0.5 s
