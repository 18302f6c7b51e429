"""`edgedp record --task pusht` writes LeRobot v3.0 with the T's keypoints as `observation.environment_state`,
and training's loader reads that feature back exactly as it reads the old .npz set's extra array."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("gym_pusht", reason="Push-T needs gym-pusht: pip install 'edgedp[pusht]'")
pytest.importorskip("pyarrow")
pytest.importorskip("av")

from edgedp.cli import main  # noqa: E402
from edgedp.datasets.episodes import open_episodes  # noqa: E402
from edgedp.datasets.reader import LeRobotDataset  # noqa: E402
from edgedp.sim_task.pusht_expert import run_expert_episode  # noqa: E402
from firmware_bridge.sim.pusht import KEYPOINT_KEY  # noqa: E402

SEED, STEPS = 6, 2  # two short episodes (--steps 2 is the recorder's minimum; they do not finish, so --keep-failures)


def _record(out, episodes: int, *extra: str) -> None:
    assert main(["record", "--task", "pusht", "--episodes", str(episodes), "--steps", str(STEPS), "--keep-failures",
                 "--seed", str(SEED), "--out", str(out), *extra]) == 0


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    out = tmp_path_factory.mktemp("pusht") / "demos"
    _record(out, 2)
    scene = [run_expert_episode(SEED + i, max_steps=STEPS, render=False) for i in range(2)]  # what the scene reports
    return out, scene


def test_record_writes_v3_with_the_keypoint_feature(recorded):
    out, scene = recorded
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 2
    ft = info["features"][KEYPOINT_KEY]
    assert ft["dtype"] == "float32" and ft["shape"] == [16]
    assert ft["names"][:4] == ["x0", "y0", "x1", "y1"] and len(ft["names"]) == 16
    assert info["features"]["observation.image"]["dtype"] == "video"
    assert info["edgedp"]["scene"]["max_steps"] == STEPS
    assert not list(out.rglob("*.npz"))
    ds = LeRobotDataset(out)
    for i, ref in enumerate(scene):
        ep = ds.load_episode(i)
        assert ep[KEYPOINT_KEY].dtype == np.float32 and ep[KEYPOINT_KEY].shape == (STEPS, 16)
        np.testing.assert_array_equal(ep[KEYPOINT_KEY], ref.keypoints)
        np.testing.assert_array_equal(ep["observation.state"], ref.state)
        np.testing.assert_array_equal(ep["action"], ref.action)
        assert ep["observation.image"].shape == (STEPS, 96, 96, 3)
        assert json.loads(ds.episodes[i]["edgedp/info"])["seed"] == SEED + i
    # Independent of edgedp's scene: the first frame's keypoints are gym-pusht's own for that seed.
    from gym_pusht.envs.pusht import PushTEnv

    env = PushTEnv(obs_type="state")
    env.reset(seed=SEED)
    np.testing.assert_allclose(ds.load_episode(0)[KEYPOINT_KEY][0], env.get_keypoints(env._block_shapes).reshape(-1),
                               atol=1e-3)


def test_train_loader_yields_the_keypoints_as_it_does_from_npz(recorded, tmp_path):
    out, scene = recorded
    flat = open_episodes(out).flat()
    assert set(flat.extra) == {KEYPOINT_KEY}
    np.testing.assert_array_equal(flat.extra[KEYPOINT_KEY], np.concatenate([s.keypoints for s in scene]))
    # The same episodes in the old .npz layout: the loader gives the same state, action and extra arrays.
    from types import SimpleNamespace

    from edgedp.sim_task.dataset import DatasetWriter

    old = DatasetWriter.create(tmp_path / "npz", 10.0, 96, ["x", "y"], {})
    old.info["features"][KEYPOINT_KEY] = {"dtype": "float32", "shape": [16]}  # as the old recorder declared it
    for s in scene:
        old.add(SimpleNamespace(image=np.zeros((STEPS, 96, 96, 3), np.uint8), state=s.state, action=s.action,
                                timestamp=s.timestamp, info=s.info, extras={KEYPOINT_KEY: s.keypoints}))
    npz = open_episodes(tmp_path / "npz").flat()
    for name in ("state", "action", "episode_ends"):
        np.testing.assert_array_equal(getattr(flat, name), getattr(npz, name))
    assert set(npz.extra) == set(flat.extra)
    np.testing.assert_array_equal(flat.extra[KEYPOINT_KEY], npz.extra[KEYPOINT_KEY])


def test_state_policy_trains_on_the_v3_keypoints(recorded):
    """`edgedp train`'s path: the state policy's keypoint normalizer is fitted on the recorded feature."""
    from edgedp.sim_task.train import TrainConfig, train

    out, scene = recorded
    overrides = {"image_features": {}, "state_features": {"observation.state": [2], KEYPOINT_KEY: [16]},
                 "normalization.modes": {"observation.state": "min_max", KEYPOINT_KEY: "min_max", "action": "min_max"},
                 "unet.down_dims": [16, 32], "horizon": 8, "n_action_steps": 4}
    result = train(out, "small", None, TrainConfig(steps=1, batch=2, spec_overrides=overrides))
    kps = np.concatenate([s.keypoints for s in scene])
    norm = result.policy.normalizers[KEYPOINT_KEY]
    np.testing.assert_allclose(norm.min.reshape(-1).numpy(), kps.min(0))
    np.testing.assert_allclose(norm.max.reshape(-1).numpy(), kps.max(0))


def test_append_continues_seeds_and_keeps_the_keypoints(recorded, tmp_path):
    import shutil

    src, scene = recorded
    out = tmp_path / "demos"
    shutil.copytree(src, out)
    _record(out, 1, "--append")
    ds = LeRobotDataset(out)
    assert len(ds) == 3 and json.loads(ds.episodes[2]["edgedp/info"])["seed"] == SEED + 2
    np.testing.assert_array_equal(ds.load_episode(0)[KEYPOINT_KEY], scene[0].keypoints)
    np.testing.assert_array_equal(ds.load_episode(2)[KEYPOINT_KEY],
                                  run_expert_episode(SEED + 2, max_steps=STEPS, render=False).keypoints)
    assert main(["record", "--task", "pusht", "--episodes", "1", "--steps", "3", "--keep-failures", "--seed",
                 str(SEED), "--out", str(out), "--append"]) == 2  # other settings: refused, nothing added
    assert len(LeRobotDataset(out)) == 3
