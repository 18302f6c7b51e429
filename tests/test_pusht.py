"""Push-T: the scene is gym-pusht's own simulation, the pusher follows the emulated servos, the expert solves it."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gym_pusht", reason="Push-T needs gym-pusht: pip install 'edgedp[pusht]'")

from gym_pusht.envs.pusht import PushTEnv  # noqa: E402

from firmware_bridge.sim.pusht import CENTRE, Gantry, KeypointSensor, PushTScene, PushTWorld, start_state  # noqa: E402


def _gym_env(seed: int) -> PushTEnv:
    env = PushTEnv(obs_type="state")
    env.reset(seed=seed)
    return env


def test_reset_matches_gym_pusht_and_coverage_is_its_own_after_pushing():
    """Same seed → same start; the same pusher path → the same T pose and coverage as gym-pusht's env.step."""
    world, env = PushTWorld(), _gym_env(7)
    world.reset(7)
    assert np.allclose(world.pusher(), env.agent.position)
    assert np.allclose(world.block_pose(), [*env.block.position, env.block.angle])
    # Drive gym-pusht with its own PD controller, then replay its pusher positions step by step in our world.
    block = np.array(env.block.position)
    for k in range(40):
        target = block + 60 * np.array([np.cos(k / 6), np.sin(k / 6)])
        path = []
        for _ in range(10):  # env.step's ten physics steps, recorded one by one
            acc = env.k_p * (target - np.array(env.agent.position)) - env.k_v * np.array(env.agent.velocity)
            env.agent.velocity += acc * env.dt
            env.space.step(env.dt)
            path.append(np.array(env.agent.position))
        for p in path:
            world.move_pusher(p)
    assert np.allclose(world.block_pose(), [*env.block.position, env.block.angle], atol=1.0)
    assert world.coverage() == pytest.approx(env._get_coverage(), abs=0.02)
    assert world.block_pose()[:2] != pytest.approx(block)  # the pushes really moved the T


def test_coverage_is_gym_pushts_for_the_same_state():
    world, env = PushTWorld(), _gym_env(0)
    world.reset(0)
    values = []
    for pose in ([256, 256, np.pi / 4], [250, 262, np.pi / 4 + 0.05], [300, 200, 1.0], [256, 256, np.pi / 4 + np.pi]):
        world.set_state([40, 40], np.array(pose, float))
        env.block.angle = float(pose[2])  # angle first: pymunk turns about the centre of gravity
        env.block.position = (float(pose[0]), float(pose[1]))
        values.append(world.coverage())
        assert values[-1] == pytest.approx(env._get_coverage(), abs=1e-9)
    assert values[0] > 0.999 and 0.5 < values[1] < 0.95 and values[3] < 0.5
    world.set_state([40, 40], np.array([256, 256, np.pi / 4]))
    assert world.coverage() > 0.999  # on the goal
    world.set_state([40, 40], np.array([256, 256, np.pi / 4 + 0.3]))
    assert world.coverage() < 0.95  # turned 17 degrees: not a success


def test_pusher_follows_the_servos_not_a_commanded_action():
    """The scene reads joint angles (the emulator's present position) at every physics step; nothing else moves it."""
    q = np.zeros(2)
    scene = PushTScene(lambda: q.copy(), pulley_radius=0.1, seed=3)
    gantry = Gantry(0.1)
    scene.reset(3)
    for _ in range(3):
        scene.step()
    assert np.allclose(scene.pusher(), [CENTRE, CENTRE])  # joints at 0: the gantry's centre
    q[:] = [0.5, -0.25]  # the servos moved (as the emulator's motor model would report)
    scene.step()
    assert np.allclose(scene.pusher(), gantry.to_table(q)) and np.allclose(scene.pusher(), [306, 231])
    assert np.allclose(gantry.to_joints(scene.pusher()), q)


def test_scene_runs_in_real_time_and_measures_coverage_at_10_hz():
    q = np.zeros(2)
    scene = PushTScene(lambda: q, seed=1)
    sensor = KeypointSensor(scene, fps=50)
    scene.start()
    sensor.start()
    try:
        frame = sensor.wait_for_frame(timeout=2.0)
        assert frame is not None and frame.image.shape == (16,)
        deadline = 200
        while scene.control_steps < 3 and deadline:
            sensor.wait_for_frame(timeout=0.05)
            deadline -= 1
        assert scene.control_steps >= 3  # 10 physics steps per control step
        rgb, depth = scene.render()
        assert rgb.shape == (96, 96, 3) and rgb.dtype == np.uint8 and depth is None
        assert scene.coverage() == pytest.approx(scene.world.coverage(), abs=0.05)
    finally:
        sensor.stop()
        scene.stop()
    assert scene.error is None


def test_start_pose_is_gym_pushts_agent_start():
    scene = PushTScene(lambda: np.zeros(2), pulley_radius=0.1)
    env = _gym_env(100000)
    assert np.allclose(Gantry(0.1).to_table(scene.start_joint_pose(100000)), env.agent.position)
    assert np.allclose(start_state(100000)[2:4], env.block.position)


@pytest.mark.parametrize("seed", [0, 6])  # two of the expert's quicker episodes (about 60 steps)
def test_expert_succeeds_with_gym_pushts_criterion(seed):
    from edgedp.sim_task.pusht_expert import run_expert_episode

    ep = run_expert_episode(seed, render=False)
    assert ep.info["success"], ep.info
    # Judge the final state independently with gym-pusht's own env.
    env = _gym_env(seed)
    last = ep.keypoints[-1]
    assert last.shape == (16,)
    assert ep.info["final_coverage"] > 0.95
    # Actions are joint targets one period ahead; states are the pusher's joint angles.
    assert ep.action.shape == ep.state.shape == (len(ep.state), 2)
    assert np.allclose(ep.state[1:], ep.action[:-1], atol=1e-5)
    assert env.agent.position == pytest.approx(Gantry(0.1).to_table(ep.state[0]))


def test_record_writes_keypoints_and_only_successes(tmp_path):
    import json

    pytest.importorskip("pyarrow")
    pytest.importorskip("av")
    from edgedp.cli import main
    from edgedp.datasets.episodes import open_episodes

    out = tmp_path / "demos"
    assert main(["record", "--task", "pusht", "--episodes", "1", "--out", str(out), "--seed", "6"]) == 0
    ds = open_episodes(out)  # LeRobot v3.0, read as training reads it
    info = json.loads(ds.ds.episodes[0]["edgedp/info"])
    assert len(ds) == 1 and info["success"] and info["seed"] == 6
    flat = ds.flat()
    assert flat.extra["observation.environment_state"].shape == (len(flat.state), 16)
    assert flat.image.shape[1:] == (96, 96, 3)
    env = _gym_env(6)
    kp0 = env.get_keypoints(env._block_shapes).reshape(-1)
    assert np.allclose(flat.extra["observation.environment_state"][0], kp0, atol=1e-3)
