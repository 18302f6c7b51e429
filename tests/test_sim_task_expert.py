"""The scripted expert in the real scene: it reaches the target whenever the joint limits allow."""
from __future__ import annotations

import numpy as np

from edgedp.sim_task.expert import ExpertConfig, TaskConfig, goal_for_target, make_scene, record_episode
from firmware_bridge.sim import PlanarArm


def test_expert_reaches_reachable_targets_in_the_scene():
    task, expert = TaskConfig(steps=30), ExpertConfig()
    lo, hi = expert.limits()
    reachable = 0
    for seed in range(40):
        ep = record_episode(task, expert, seed)
        # Judge with a fresh scene at the episode's final joint target: the scene's own success().
        q = ep.action[-1].astype(np.float64)
        scene = make_scene(task, lambda: q, seed=seed)
        scene.reset(seed)
        if ep.info["reachable"]:
            reachable += 1
            assert scene.success(), (seed, scene.distance_to_target())
        assert ep.info["success"] == scene.success()
        assert np.all(ep.action >= lo - 1e-6) and np.all(ep.action <= hi + 1e-6)
        # Actions are the next state, and no step is faster than the speed limit.
        np.testing.assert_allclose(ep.action[:-1], ep.state[1:], atol=1e-6)
        speed = np.linalg.norm(np.diff(np.vstack([ep.state[:1], ep.action]), axis=0), axis=1) / task.period
        assert speed.max() <= expert.max_speed + 1e-4
        assert ep.image.shape == (30, 96, 96, 3) and ep.image.dtype == np.uint8
    assert reachable >= 20


def test_target_is_only_in_the_image():
    """Two seeds with the same start pose but different targets differ in the image only."""
    task = TaskConfig(start_noise=0.0)
    a, b = record_episode(task, ExpertConfig(), 3), record_episode(task, ExpertConfig(), 4)
    np.testing.assert_array_equal(a.state[0], b.state[0])
    assert not np.array_equal(a.image[0], b.image[0])
    green = (a.image[0, :, :, 1] > 150) & (a.image[0, :, :, 0] < 100)  # the target's colour
    assert green.sum() > 5


def test_multimodal_demonstrations_go_to_either_target():
    task = TaskConfig(task="reach_multimodal")
    chosen, success = [], 0
    for seed in range(60):
        ep = record_episode(task, ExpertConfig(), seed)
        chosen.append(ep.info["chosen_target"])
        success += ep.info["success"]
        q = ep.action[-1].astype(np.float64)
        tip = PlanarArm(task.link_lengths).end_effector(q)
        targets = np.array(ep.info["targets"])
        assert len(targets) == 2
        if ep.info["success"]:  # it went to the one it chose, not the other or in between
            assert np.argmin(np.linalg.norm(targets - tip, axis=1)) == ep.info["chosen_target"]
    assert 15 <= sum(chosen) <= 45, chosen
    assert success >= 50


def test_unreachable_target_gives_the_closest_pose_within_limits():
    arm = PlanarArm((0.12, 0.10))
    lo, hi = ExpertConfig().limits()
    target = np.array([-0.15, 0.0])  # straight behind the base: the shoulder limit forbids it
    goal, ok = goal_for_target(arm, target, np.zeros(2), lo, hi)
    assert not ok
    assert np.all(goal >= lo) and np.all(goal <= hi)
    best = min(np.linalg.norm(arm.end_effector(np.array([a, b])) - target)
               for a in np.linspace(lo[0], hi[0], 60) for b in np.linspace(lo[1], hi[1], 60))
    assert np.linalg.norm(arm.end_effector(goal) - target) <= best + 1e-3
    goal, ok = goal_for_target(arm, np.array([0.1, 0.1]), np.zeros(2), lo, hi)
    assert ok and np.linalg.norm(arm.end_effector(goal) - [0.1, 0.1]) < 1e-9
