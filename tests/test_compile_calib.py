"""INT8 calibration on real observations: recorded episode datasets (episode-level split) and the sim scene."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgedp.cli import main
from edgedp.compile.api import compile_policy
from edgedp.compile.quantize import dataset_observations, matches_sim, observation_sets, sim_observations
from edgedp.errors import UserError
from edgedp.policy_loading import load_policy
from edgedp.sim_task.dataset import DatasetWriter
from edgedp.sim_task.expert import ExpertConfig, TaskConfig, record_episode
from tests.test_compile_backends import _one_thread, tiny_policy  # noqa: F401 (autouse fixture)

N_EPISODES = 6


@pytest.fixture(scope="module")
def small():
    return load_policy("preset:small")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A few short episodes recorded by the real expert in the real scene (what `edgedp record` writes)."""
    root = tmp_path_factory.mktemp("calib") / "ds"
    task = TaskConfig(steps=5)
    writer = DatasetWriter.create(root, 1.0 / task.period, task.image_size, ["shoulder", "elbow"],
                                  {"task": task.task, "scene": task.to_dict(), "seed": 100})
    episodes = []
    for i in range(N_EPISODES):
        ep = record_episode(task, ExpertConfig(), 100 + i)
        writer.add(ep)
        episodes.append(ep)
    return root, episodes


def _owner(window_states: np.ndarray, episodes) -> set[int]:
    """Episodes that contain every state row of a window (start poses differ per episode, so one)."""
    return {i for i, ep in enumerate(episodes)
            if all(any(np.array_equal(row, s) for s in ep.state) for row in window_states)}


def test_dataset_split_is_by_episode_and_windows_follow_training(small, dataset):
    root, episodes = dataset
    cal, held, split = dataset_observations(root, small, n_calib=8, n_heldout=8, seed=3)
    c, h = set(split["calib_episodes"]), set(split["heldout_episodes"])
    assert c and h and not c & h and c | h == set(range(N_EPISODES))
    assert len(cal) == 8 and len(held) == 8
    for windows, allowed in ((cal, c), (held, h)):
        for w in windows:
            assert w["observation.image"].shape == (small.n_obs_steps, 96, 96, 3)
            assert w["observation.state"].shape == (small.n_obs_steps, 2)
            owners = _owner(w["observation.state"], episodes)
            assert owners and owners <= allowed
            # Training's window: consecutive frames, the first repeated at the episode start.
            (e,) = owners
            rows = [int(np.flatnonzero((episodes[e].state == s).all(1))[0]) for s in w["observation.state"]]
            assert rows[1] - rows[0] in (0, 1) and (rows[1] - rows[0] == 1 or rows[0] == 0)
            assert np.array_equal(w["observation.image"][-1], episodes[e].image[rows[-1]])


def test_gate_runs_on_held_out_episodes(small, dataset, tmp_path):
    root, _ = dataset
    sets = observation_sets(small, root, n_calib=3, n_heldout=3, seed=0)
    _, held, split = dataset_observations(root, small, 3, 3, seed=0)
    with torch.inference_mode():
        expect = torch.cat([small.encode(o).float() for o in held])
    assert torch.allclose(sets.heldout, expect)
    assert sets.detail["heldout_episodes"] == split["heldout_episodes"]

    report = compile_policy(small, "cpu-int8", "int8", 4, "cpu", tmp_path, calib=str(root), gate_samples=3)
    assert report.gate is not None and report.gate.n == 3 and report.gate.source == f"dataset:{root}"
    assert 0 < report.gate.rmse < 0.2
    manifest = json.loads((report.path / "manifest.json").read_text())
    detail = manifest["calibration_detail"]
    assert detail["kind"] == "dataset" and detail["n_heldout"] == 3
    assert not set(detail["calib_episodes"]) & set(detail["heldout_episodes"])


def test_sim_calibration_is_default_for_sim_features(small, tmp_path):
    assert matches_sim(small)
    obs = sim_observations(small, 2, seed=1)
    img = obs[0]["observation.image"]
    assert img.shape == (2, 96, 96, 3) and img.dtype == np.uint8 and img.std() > 5
    report = compile_policy(small, "cpu-int8", "int8", 4, "cpu", tmp_path, gate_samples=2)
    assert report.gate.source == "simulated-scene" and report.gate.n == 2
    assert report.calibration["kind"] == "sim"
    explicit = compile_policy(small, "cpu-int8", "int8", 4, "cpu", tmp_path / "b", calib="sim", gate_samples=2)
    assert explicit.gate.rmse == pytest.approx(report.gate.rmse)


def test_bad_calibration_sources_are_one_line_errors(small, dataset, tmp_path):
    root, _ = dataset
    tiny = tiny_policy()  # state-only, 4 joints: not the sim, not this dataset
    assert not matches_sim(tiny)
    with pytest.raises(UserError, match="--calib sim needs"):
        observation_sets(tiny, "sim", 2, 2)
    with pytest.raises(UserError, match="one image and one state"):
        observation_sets(tiny, root, 2, 2)
    one = tmp_path / "one"
    task = TaskConfig(steps=3)
    DatasetWriter.create(one, 10.0, 96, ["a", "b"], {}).add(record_episode(task, ExpertConfig(), 1))
    with pytest.raises(UserError, match="at least 2"):
        observation_sets(small, one, 2, 2)
    assert main(["compile", "preset:small", "--backend", "cpu-int8", "--precision", "int8", "--steps", "2",
                 "--calib", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
