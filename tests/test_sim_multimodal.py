"""The multimodal sim task is a fair test of mode averaging: mirrored, both reachable, midpoint a miss.

And the single-target ``reach`` placement is what it was: the shipped sim_reach checkpoint and its
seed-by-seed evaluations depend on it.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from edgedp.sim_task.expert import ExpertConfig, TaskConfig, goal_for_target, record_episode
from firmware_bridge.sim import Scene

LIMITS = ExpertConfig().limits()


def _scene(task: str, **kw) -> tuple[Scene, np.ndarray]:
    q = np.zeros(2)
    return Scene(lambda: q, task=task, depth=False, **kw), q


def test_reach_targets_unchanged_for_fixed_seeds():
    scene, _ = _scene("reach")
    # Values from the placement code before the multimodal change (commit 84de435).
    expected = {
        0: [-0.11567467196807894, -0.12183503584681067],
        1: [0.002979049424464697, 0.1135168514741357],
        2: [0.07918488662975864, -0.10283718258195558],
        1000: [0.013021287736265957, 0.09165796307851393],
        1599: [0.10177609842930488, -0.048607364041756404],
    }
    for seed, xy in expected.items():
        np.testing.assert_allclose(scene.reset(seed), [xy], rtol=0, atol=1e-15)
    all_targets = np.concatenate([scene.reset(s) for s in range(200)])
    digest = hashlib.sha256(all_targets.round(12).tobytes()).hexdigest()
    assert digest == "281e225c1ebe8194ab9e77ad79560f621d5b6f6606084c8ed075922c3561ab6c"


def test_reach_episodes_still_start_off_home():
    """The start-pose noise of the reach task (0.4 rad) is unchanged; only the multimodal task starts at home."""
    ep = record_episode(TaskConfig(), ExpertConfig(), 1000)
    assert TaskConfig().start_noise == 0.4 and np.abs(ep.state[0]).max() > 0.05


def test_multimodal_pairs_are_mirrored_reachable_and_midpoint_misses():
    scene, q = _scene("reach_multimodal")
    lo, hi = LIMITS
    home_tip = scene.arm.end_effector(np.zeros(2))
    assert home_tip[1] == 0 and home_tip[0] > 0  # home points along +x: mirror about the x axis
    for seed in range(300):
        t = scene.reset(seed)
        assert t.shape == (2, 2)
        np.testing.assert_array_equal(t[1], t[0] * [1.0, -1.0])
        assert np.linalg.norm(t[0] - t[1]) >= scene.min_pair_separation()
        for target in t:
            assert goal_for_target(scene.arm, target, np.zeros(2), lo, hi)[1], (seed, target)
            assert scene.reachable(target)
        # The average of the two modes, in the plane and in joint space, is no success.
        mid = t.mean(axis=0)
        assert np.linalg.norm(t - mid, axis=1).min() > 2 * scene.success_radius
        if np.linalg.norm(mid) > scene.arm.inner_reach + 1e-3:  # else the tip cannot even get there
            q[:] = scene.arm.inverse(mid)
            assert not scene.success()
        g0 = goal_for_target(scene.arm, t[0], np.zeros(2), lo, hi)[0]
        g1 = goal_for_target(scene.arm, t[1], np.zeros(2), lo, hi)[0]
        np.testing.assert_allclose(g1, -g0, atol=1e-9)  # mirrored joint goals: their mean is home
        q[:] = (g0 + g1) / 2
        assert not scene.success()
        # Starting at home shows neither target as nearer.
        d = np.linalg.norm(t - home_tip, axis=1)
        assert d[0] == pytest.approx(d[1], abs=1e-12)


def test_multimodal_placement_respects_given_limits():
    tight = ((-0.8, 0.8), (-1.5, 1.5))
    scene, _ = _scene("reach_multimodal", joint_limits=tight)
    lo, hi = np.array(tight).T
    for seed in range(100):
        for target in scene.reset(seed):
            assert goal_for_target(scene.arm, target, np.zeros(2), lo, hi)[1]
    with pytest.raises(ValueError, match="joint limits"):
        _scene("reach_multimodal", joint_limits=((-1.0, 1.0),))
    with pytest.raises(ValueError, match="no mirrored target pair"):
        _scene("reach_multimodal", joint_limits=((-0.01, 0.01), (-0.01, 0.01)))


def test_expert_starts_at_home_and_picks_either_target():
    task = TaskConfig(task="reach_multimodal")
    assert task.start_noise == 0.0
    chosen = []
    first_states = []
    for seed in range(1000, 1080):
        ep = record_episode(task, ExpertConfig(), seed)
        chosen.append(ep.info["chosen_target"])
        first_states.append(ep.state[0])
        assert ep.info["success"] and ep.info["reachable"]
    assert np.all(np.array(first_states) == 0.0)
    assert 25 <= sum(chosen) <= 55, chosen  # 80 fair coin flips
