"""The old .npz episode format (read for training and conversion): round trip and clear errors.

`edgedp record` writes LeRobot v3.0 now; its crash-safety and CLI tests are in test_datasets_record.py."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from edgedp.sim_task.dataset import DatasetError, DatasetWriter, EpisodeDataset
from edgedp.sim_task.expert import Episode


def _episode(n: int, seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(image=rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8),
                   state=rng.normal(size=(n, 2)).astype(np.float32), action=rng.normal(size=(n, 2)).astype(np.float32),
                   timestamp=np.arange(n, dtype=np.float32) * 0.1, info={"seed": seed})


def test_round_trip(tmp_path):
    root = tmp_path / "ds"
    w = DatasetWriter.create(root, fps=10, image_size=96, joint_names=["a", "b"], settings={"task": "reach"})
    eps = [_episode(n, s) for s, n in enumerate((5, 7, 3))]
    for e in eps:
        w.add(e)
    ds = EpisodeDataset(root)
    assert len(ds) == 3 and ds.total_frames == 15 and ds.fps == 10
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 3 and info["total_frames"] == 15 and info["task"] == "reach"
    assert info["features"]["observation.state"]["names"] == ["a", "b"]
    for i, e in enumerate(eps):
        got = ds.load_episode(i)
        np.testing.assert_array_equal(got["observation.image"], e.image)
        np.testing.assert_array_equal(got["observation.state"], e.state)
        np.testing.assert_array_equal(got["action"], e.action)
        np.testing.assert_array_equal(got["timestamp"], e.timestamp)
        np.testing.assert_array_equal(got["frame_index"], np.arange(len(e.state)))
        assert ds.episodes[i]["seed"] == i and ds.episodes[i]["file"] == f"data/chunk-000/episode_{i:06d}.npz"
    flat = ds.flat()
    np.testing.assert_array_equal(flat.episode_ends, [5, 12, 15])
    np.testing.assert_array_equal(flat.action[5:12], eps[1].action)
    # Plain numpy reads an episode file with no edgedp code (the documented way for other tools).
    with np.load(root / "data/chunk-000/episode_000001.npz") as z:
        np.testing.assert_array_equal(z["observation.image"], eps[1].image)


def test_broken_index_is_a_clear_error(tmp_path):
    root = tmp_path / "ds"
    w = DatasetWriter.create(root, fps=10, image_size=96, joint_names=["a", "b"], settings={})
    w.add(_episode(3, 0))
    (root / "meta" / "episodes.jsonl").write_text('{"episode_index": 0, "length": 3, "file": "data/chunk-000/episode_000000.npz"}\n{broken\n')
    with pytest.raises(DatasetError, match=r"episodes.jsonl:2: not valid JSON"):
        EpisodeDataset(root)
    os.remove(root / "meta" / "info.json")
    with pytest.raises(DatasetError, match="not an edgedp episode dataset"):
        EpisodeDataset(root)
