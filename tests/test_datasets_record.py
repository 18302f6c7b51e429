"""`edgedp record` writes LeRobot v3.0: SIGKILL mid-recording keeps earlier episodes, --append resumes, refusals
are one line; `edgedp dataset convert/info` turn an old .npz set into the same format; `edgedp train` reads it."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from edgedp.datasets import commit  # noqa: E402
from edgedp.datasets.reader import LeRobotDataset  # noqa: E402
from edgedp.sim_task.expert import ExpertConfig, TaskConfig, record_episode  # noqa: E402


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in-process (its own argument parsing and one-line errors), captured like a subprocess."""
    import contextlib
    import io

    from edgedp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def _episodes(root):
    ds = LeRobotDataset(root)
    return ds, [ds.load_episode(i) for i in range(len(ds))]


def test_sigkill_mid_recording_keeps_earlier_episodes_and_append_resumes(tmp_path):
    root = tmp_path / "ds"
    cmd = [sys.executable, "-m", "edgedp.cli", "record", "--out", str(root), "--episodes", "200", "--steps", "10",
           "--step-delay", "0.02"]  # ~0.2 s per episode, so the kill lands mid-episode
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    info = root / "meta" / "info.json"
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            try:
                if json.loads(info.read_text())["total_episodes"] >= 3:
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        else:
            pytest.fail("recording did not write 3 episodes in 90 s")
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    commit.recover(root)  # what --append does first: finish a committed episode, drop a half-staged one
    ds, before = _episodes(root)
    n = len(ds)
    assert 3 <= n < 200
    for i, ep in enumerate(before):  # every listed episode is complete and what the expert records for its seed
        want = record_episode(TaskConfig(steps=10), ExpertConfig(), seed=i)
        np.testing.assert_array_equal(ep["action"], want.action)
        np.testing.assert_array_equal(ep["observation.state"], want.state)
        assert np.abs(ep["observation.image"].astype(int) - want.image).mean() < 3  # AV1, lossy

    # A crash can also leave staged files of an uncommitted episode: appending removes them.
    (root / "data" / "chunk-000" / ".file-000.parquet.dead.edgedp-tmp").write_bytes(b"partial")
    r = _cli("record", "--out", str(root), "--episodes", "2", "--steps", "10", "--append")
    assert r.returncode == 0, r.stderr
    ds2, after = _episodes(root)
    assert len(ds2) == n + 2 and not commit.pending(root)
    for a, b in zip(before, after[:n]):  # earlier episodes unchanged: same rows, bit-identical video frames
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    meta = json.loads((root / "meta" / "info.json").read_text())
    assert meta["total_episodes"] == n + 2 and meta["total_frames"] == 10 * (n + 2)
    seeds = [json.loads(r["edgedp/info"])["seed"] for r in ds2.episodes]
    assert seeds == list(range(n + 2))  # resumed with the next seeds


def test_record_cli_refusals(tmp_path):
    root = tmp_path / "ds"
    assert _cli("record", "--out", str(root), "--episodes", "1", "--steps", "5").returncode == 0
    r = _cli("record", "--out", str(root), "--episodes", "1")
    assert r.returncode == 2 and "already a dataset with 1 episodes" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("record", "--out", str(root), "--episodes", "1", "--steps", "6", "--append")
    assert r.returncode == 2 and "other settings" in r.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    r = _cli("record", "--out", str(other), "--episodes", "1")
    assert r.returncode == 2 and "not empty" in r.stderr and (other / "x.txt").read_text() == "mine"
    r = _cli("record", "--out", str(tmp_path / "n"), "--episodes", "0")
    assert r.returncode == 2 and "--episodes" in r.stderr
    r = _cli("record", "--out", str(tmp_path / "m"), "--append")
    assert r.returncode == 2 and "not a LeRobot v3.0 dataset" in r.stderr
    r = _cli("record", "--out", str(tmp_path / "p"), "--period", "0.3")
    assert r.returncode == 2 and "whole number of frames per second" in r.stderr and not (tmp_path / "p").exists()


def test_record_takes_scene_and_limits_from_a_run_config(tmp_path):
    root = tmp_path / "ds"
    r = _cli("record", "--config", "examples/sim.yaml", "--out", str(root), "--episodes", "2", "--steps", "5",
             "--task", "reach_multimodal")
    assert r.returncode == 0, r.stderr
    ds = LeRobotDataset(root)
    settings = ds.info["edgedp"]
    assert settings["task"] == "reach_multimodal" and settings["expert"]["joint_limits"] == [[-1.6, 1.6], [-2.2, 2.2]]
    assert ds.features["observation.state"]["names"] == ["shoulder", "elbow"]
    assert ds.tasks == ["reach_multimodal"] and len(json.loads(ds.episodes[0]["edgedp/info"])["targets"]) == 2


def test_convert_npz_set_and_info(tmp_path):
    from edgedp.sim_task.dataset import DatasetWriter as NpzWriter

    old = tmp_path / "old"
    task = TaskConfig(steps=6)
    w = NpzWriter.create(old, 10, 96, ["shoulder", "elbow"], {"task": "reach", "seed": 7})
    eps = [record_episode(task, ExpertConfig(), 7 + i) for i in range(3)]
    for ep in eps:
        w.add(ep)
    new = tmp_path / "new"
    r = _cli("dataset", "convert", str(old), str(new))
    assert r.returncode == 0, r.stderr
    ds, got = _episodes(new)
    assert len(ds) == 3 and ds.info["edgedp"]["seed"] == 7 and ds.tasks == ["reach"]
    for g, ep in zip(got, eps):
        np.testing.assert_array_equal(g["action"], ep.action)
        np.testing.assert_array_equal(g["observation.state"], ep.state)
        assert np.abs(g["observation.image"].astype(int) - ep.image).mean() < 3
    r = _cli("dataset", "info", str(new), "--json")
    doc = json.loads(r.stdout)
    assert doc["episodes"] == 3 and doc["frames"] == 18 and doc["files"] == {"data": 1, "videos": 1}
    assert doc["bytes"]["videos"] > 0 and doc["codec"] == "av1"
    r = _cli("dataset", "convert", str(old), str(new))
    assert r.returncode == 2 and "not empty" in r.stderr
    r = _cli("record", "--out", str(old), "--episodes", "1", "--append")  # record writes v3.0 only
    assert r.returncode == 2 and "old edgedp .npz episode set" in r.stderr and "dataset convert" in r.stderr
    r = _cli("dataset", "convert", str(tmp_path / "nope"), str(tmp_path / "x"))
    assert r.returncode == 2 and "dataset not found" in r.stderr


def test_train_reads_a_users_lerobot_dataset_with_its_own_feature_names(tmp_path):
    """A LeRobot-style set whose camera is observation.images.top: keys map onto the policy's inputs."""
    import torch

    from edgedp.datasets.episodes import open_episodes
    from edgedp.datasets.writer import DatasetWriter
    from edgedp.sim_task.train import InMemoryData

    root = tmp_path / "user"
    feats = {"observation.images.top": {"dtype": "video", "shape": [96, 96, 3], "names": ["height", "width", "channels"]},
             "observation.images.wrist": {"dtype": "video", "shape": [32, 32, 3], "names": ["height", "width", "channels"]},
             "observation.state": {"dtype": "float32", "shape": [2], "names": ["a", "b"]},
             "action": {"dtype": "float32", "shape": [2], "names": ["a", "b"]}}
    w = DatasetWriter.create(root, 10, feats, robot_type="so100")
    eps = [record_episode(TaskConfig(steps=8), ExpertConfig(), s) for s in range(2)]
    for ep in eps:
        w.add_episode({"observation.images.top": ep.image, "observation.images.wrist": ep.image[:, ::3, ::3][:, :32, :32],
                       "observation.state": ep.state, "action": ep.action}, "reach")
    r = _cli("train", str(root), "--out", str(tmp_path / "ck"), "--steps", "1")
    assert r.returncode == 2 and "2 camera features" in r.stderr and "--image-key" in r.stderr
    r = _cli("train", str(root), "--out", str(tmp_path / "ck"), "--steps", "1", "--image-key", "observation.images.nope")
    assert r.returncode == 2 and "no feature 'observation.images.nope'" in r.stderr
    data = InMemoryData(open_episodes(root, image_key="observation.images.top"), 2, 16)
    assert data.images.shape == (16, 3, 96, 96) and data.num_episodes == 2
    np.testing.assert_array_equal(data.action.numpy(), np.concatenate([e.action for e in eps]))
    assert torch.equal(data.state, torch.from_numpy(np.concatenate([e.state for e in eps])))
