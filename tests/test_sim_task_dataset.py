"""Episode dataset: round trip, crash safety under SIGKILL, append/resume, clear errors."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgedp.sim_task.dataset import DatasetError, DatasetWriter, EpisodeDataset
from edgedp.sim_task.expert import Episode, ExpertConfig, TaskConfig, record_episode


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


def _digest(root: Path, entries) -> dict[str, str]:
    return {e["file"]: hashlib.sha256((root / e["file"]).read_bytes()).hexdigest() for e in entries}


def test_sigkill_mid_recording_leaves_earlier_episodes_intact(tmp_path):
    root = tmp_path / "ds"
    cmd = [sys.executable, "-m", "edgedp.cli", "record", "--out", str(root), "--episodes", "200", "--steps", "10",
           "--step-delay", "0.02"]  # ~0.2 s per episode, so the kill lands mid-episode
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    index = root / "meta" / "episodes.jsonl"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if index.exists() and len(index.read_text().splitlines()) >= 3:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        else:
            pytest.fail("recording did not write 3 episodes in 60 s")
        time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ds = EpisodeDataset(root)
    n = len(ds)
    assert 3 <= n < 200
    for i in range(n):  # every indexed episode is complete and what the expert records for its seed
        ep = ds.load_episode(i)
        assert len(ep["action"]) == 10 and ds.episodes[i]["length"] == 10
    want = record_episode(TaskConfig(steps=10), ExpertConfig(), seed=n - 1)
    np.testing.assert_array_equal(ds.load_episode(n - 1)["observation.image"], want.image)
    before = _digest(root, ds.episodes)

    # A crash can also leave a finished-but-unindexed episode file and a temporary: appending cleans them up.
    orphan = root / "data" / "chunk-000" / f"episode_{n:06d}.npz"
    orphan.write_bytes(b"partial")
    (root / "data" / "chunk-000" / f".episode_{n:06d}.npz.tmp-x.npz").write_bytes(b"partial")
    r = _cli("record", "--out", str(root), "--episodes", "2", "--steps", "10", "--append")
    assert r.returncode == 0, r.stderr
    ds2 = EpisodeDataset(root)
    assert len(ds2) == n + 2
    assert _digest(root, ds2.episodes[:n]) == before  # earlier episodes untouched, byte for byte
    assert not list(root.rglob(".*tmp*"))
    for i in range(n + 2):
        ds2.load_episode(i)
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["total_episodes"] == n + 2 and info["total_frames"] == 10 * (n + 2)
    assert [e["seed"] for e in ds2.episodes] == list(range(n + 2))  # resumed with the next seeds


def _cli(*args: str) -> subprocess.CompletedProcess:
    """The CLI in-process (its own argument parsing and one-line errors), captured like a subprocess."""
    import contextlib
    import io

    from edgedp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


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
    assert r.returncode == 2 and "dataset not found" in r.stderr


def test_record_takes_scene_and_limits_from_a_run_config(tmp_path):
    root = tmp_path / "ds"
    r = _cli("record", "--config", "examples/sim.yaml", "--out", str(root), "--episodes", "2", "--steps", "5",
             "--task", "reach_multimodal")
    assert r.returncode == 0, r.stderr
    ds = EpisodeDataset(root)
    assert ds.info["task"] == "reach_multimodal" and ds.info["expert"]["joint_limits"] == [[-1.6, 1.6], [-2.2, 2.2]]
    assert ds.info["features"]["observation.state"]["names"] == ["shoulder", "elbow"]
    assert len(ds.episodes[0]["targets"]) == 2


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
