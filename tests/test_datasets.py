"""LeRobot v3.0 datasets: the files edgedp writes have the schema LeRobot 0.4.4's code reads, frames round-trip,
offsets agree, and a crash at any point of an episode write leaves the earlier episodes intact.

The expected values below are written out from LeRobot 0.4.4's source (src/lerobot/datasets/utils.py:
create_empty_dataset_info, DEFAULT_FEATURES, DEFAULT_*_PATH, get_hf_features_from_features; lerobot_dataset.py:
_save_episode_data, _save_episode_video, LeRobotDatasetMetadata.save_episode; compute_stats.py;
video_utils.get_video_info), not imported from edgedp, so a drift in edgedp's schema module fails here.
The slow test in test_datasets_lerobot.py opens the same files with LeRobot itself.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
av = pytest.importorskip("av")
import pyarrow.parquet as pq  # noqa: E402

from edgedp.datasets import DatasetError, commit  # noqa: E402
from edgedp.datasets.reader import LeRobotDataset  # noqa: E402
from edgedp.datasets.writer import DatasetWriter  # noqa: E402

FPS = 10
FEATURES = {
    "observation.image": {"dtype": "video", "shape": [64, 64, 3], "names": ["height", "width", "channels"]},
    "observation.state": {"dtype": "float32", "shape": [2], "names": ["shoulder", "elbow"]},
    "action": {"dtype": "float32", "shape": [2], "names": ["shoulder", "elbow"]},
}


def _episode(n: int, seed: int) -> dict[str, np.ndarray]:
    """Smooth images (a moving square on a gradient: what a camera sees, not noise a codec cannot keep)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, 64, 64, 3), np.uint8)
    img[..., 0] = np.linspace(0, 200, 64, dtype=np.uint8)[None, None, :]
    img[..., 2] = 40 + 10 * seed
    for i in range(n):
        x = (5 + 2 * i + 7 * seed) % 48
        img[i, 20:36, x:x + 16] = (250, 250, 30)
    return {"observation.image": img, "observation.state": rng.normal(size=(n, 2)).astype(np.float32),
            "action": rng.normal(size=(n, 2)).astype(np.float32)}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("v3") / "ds"
    w = DatasetWriter.create(root, FPS, FEATURES, robot_type="sim-planar-arm", extra={"note": "test"})
    eps = [_episode(n, s) for s, n in enumerate((12, 7, 9))]
    tasks = ["reach the target", "reach the target", "hold still"]
    for ep, task in zip(eps, tasks):
        w.add_episode(ep, task, extra={"seed": len(w.episodes)})
    return root, eps, tasks


def test_info_json_is_what_lerobot_writes(written):
    root, eps, _ = written
    info = json.loads((root / "meta/info.json").read_text())
    for key in ("codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
                "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path", "video_path",
                "features"):
        assert key in info, key
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and isinstance(info["fps"], int)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert (info["chunks_size"], info["data_files_size_in_mb"], info["video_files_size_in_mb"]) == (1000, 100, 200)
    assert info["total_episodes"] == 3 and info["total_frames"] == 28 and info["total_tasks"] == 2
    assert info["splits"] == {"train": "0:3"}
    feats = info["features"]
    assert list(feats) == ["observation.image", "observation.state", "action", "timestamp", "frame_index",
                           "episode_index", "index", "task_index"]
    assert feats["timestamp"] == {"dtype": "float32", "shape": [1], "names": None}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        assert feats[k] == {"dtype": "int64", "shape": [1], "names": None}
    vinfo = feats["observation.image"]["info"]
    assert vinfo == {"video.height": 64, "video.width": 64, "video.codec": "av1", "video.pix_fmt": "yuv420p",
                     "video.is_depth_map": False, "video.fps": FPS, "video.channels": 3, "has_audio": False}


def test_data_parquet_columns_types_and_offsets(written):
    root, eps, tasks = written
    files = sorted((root / "data").glob("*/*.parquet"))
    assert [f.relative_to(root).as_posix() for f in files] == ["data/chunk-000/file-000.parquet"]  # many episodes per file
    t = pq.read_table(files[0])
    # Non-video features in info order; 1-D features are fixed-length lists (datasets.Sequence(length=n)).
    assert t.schema.names == ["observation.state", "action", "timestamp", "frame_index", "episode_index", "index",
                              "task_index"]
    assert t.schema.field("observation.state").type == pa.list_(pa.float32(), 2)
    assert t.schema.field("timestamp").type == pa.float32()
    assert all(t.schema.field(k).type == pa.int64() for k in ("frame_index", "episode_index", "index", "task_index"))
    lengths = [len(e["action"]) for e in eps]
    assert t.column("index").to_pylist() == list(range(sum(lengths)))
    assert t.column("episode_index").to_pylist() == [i for i, n in enumerate(lengths) for _ in range(n)]
    assert t.column("frame_index").to_pylist() == [j for n in lengths for j in range(n)]
    np.testing.assert_allclose(t.column("timestamp").to_numpy(), np.array(t.column("frame_index").to_pylist()) / FPS,
                               atol=1e-6)
    assert t.column("task_index").to_pylist() == [0] * 19 + [1] * 9
    state = np.array(t.column("observation.state").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(state, np.concatenate([e["observation.state"] for e in eps]))


def test_episode_rows_and_tasks(written):
    root, eps, tasks = written
    files = sorted((root / "meta/episodes").glob("*/*.parquet"))
    assert len(files) == 1
    rows = pq.read_table(files[0]).to_pylist()
    assert [r["episode_index"] for r in rows] == [0, 1, 2]
    assert [r["tasks"] for r in rows] == [[t] for t in tasks]
    start, vstart = 0, 0.0
    for r, ep in zip(rows, eps):
        n = len(ep["action"])
        assert r["length"] == n
        assert (r["dataset_from_index"], r["dataset_to_index"]) == (start, start + n)
        assert (r["data/chunk_index"], r["data/file_index"]) == (0, 0)
        assert (r["meta/episodes/chunk_index"], r["meta/episodes/file_index"]) == (0, 0)
        assert (r["videos/observation.image/chunk_index"], r["videos/observation.image/file_index"]) == (0, 0)
        assert r["videos/observation.image/from_timestamp"] == pytest.approx(vstart, abs=1e-9)
        assert r["videos/observation.image/to_timestamp"] == pytest.approx(vstart + n / FPS, abs=1e-6)
        for stat in ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"):
            assert f"stats/observation.state/{stat}" in r and f"stats/observation.image/{stat}" in r
        assert np.asarray(r["stats/observation.image/mean"]).shape == (3, 1, 1)  # per channel, in [0, 1]
        np.testing.assert_allclose(r["stats/observation.state/min"], ep["observation.state"].min(0), rtol=1e-6)
        assert r["stats/observation.state/count"] == [n]
        start, vstart = start + n, r["videos/observation.image/to_timestamp"]
    # tasks.parquet: what pandas' DataFrame({"task_index": ...}, index=tasks).to_parquet stores
    tt = pq.read_table(root / "meta/tasks.parquet")
    meta = json.loads(tt.schema.metadata[b"pandas"])
    assert meta["index_columns"] == ["__index_level_0__"]
    assert tt.column("__index_level_0__").to_pylist() == ["reach the target", "hold still"]
    assert tt.column("task_index").to_pylist() == [0, 1]


def test_stats_json_aggregates_every_frame(written):
    root, eps, _ = written
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats) == {"observation.image", "observation.state", "action", "timestamp", "frame_index",
                          "episode_index", "index", "task_index"}
    allstate = np.concatenate([e["observation.state"] for e in eps]).astype(np.float64)
    np.testing.assert_allclose(stats["observation.state"]["mean"], allstate.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["std"], allstate.std(0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["max"], allstate.max(0), rtol=1e-6)
    assert stats["observation.state"]["count"] == [28]
    img = np.concatenate([e["observation.image"] for e in eps]).astype(np.float64) / 255
    np.testing.assert_allclose(np.asarray(stats["observation.image"]["mean"]).reshape(3), img.mean((0, 1, 2)), atol=2e-3)
    assert stats["index"]["max"] == [27] and stats["index"]["min"] == [0]


def test_video_frames_sit_at_their_timestamps_and_match_the_recording(written):
    root, eps, _ = written
    path = root / "videos/observation.image/chunk-000/file-000.mp4"
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name in ("libdav1d", "av1", "libaom-av1")
        decoded = [(float(f.pts * s.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(s)]
    assert len(decoded) == 28
    np.testing.assert_allclose([t for t, _ in decoded], np.arange(28) / FPS, atol=1e-4)  # LeRobot's tolerance_s
    frames = np.stack([f for _, f in decoded]).astype(np.int16)
    recorded = np.concatenate([e["observation.image"] for e in eps]).astype(np.int16)
    err = np.abs(frames - recorded)
    assert err.mean() < 3.0 and np.percentile(err, 99) < 40  # AV1 crf 30 on 64x64: lossy, but close
    # The reader returns the same frames per episode (offsets from the episode rows).
    ds = LeRobotDataset(root)
    for i, ep in enumerate(eps):
        got = ds.load_episode(i)
        np.testing.assert_array_equal(got["action"], ep["action"])
        np.testing.assert_array_equal(got["observation.image"], frames[sum(len(e["action"]) for e in eps[:i]):][:len(ep["action"])])


def _snapshot(root):
    ds = LeRobotDataset(root)
    return [ds.load_episode(i) for i in range(len(ds))]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_failure_while_staging_leaves_the_dataset_as_it_was(tmp_path, monkeypatch):
    from edgedp.datasets import writer as writer_mod

    root = tmp_path / "ds"
    w = DatasetWriter.create(root, FPS, FEATURES)
    for s in range(2):
        w.add_episode(_episode(6, s), "t")
    before = _snapshot(root)
    real = writer_mod.tables.write_rows

    def boom(*a, **k):  # data and video already staged, episode row not yet: the worst moment before commit
        raise OSError("disk full")

    monkeypatch.setattr(writer_mod.tables, "write_rows", boom)
    with pytest.raises(OSError):
        w.add_episode(_episode(6, 9), "t")
    monkeypatch.setattr(writer_mod.tables, "write_rows", real)
    assert not commit.pending(root)  # the staged files were removed
    _same(_snapshot(root), before)
    w2 = DatasetWriter.open_for_append(root)
    w2.add_episode(_episode(5, 3), "t")
    after = _snapshot(root)
    _same(after[:2], before)
    assert len(after) == 3 and json.loads((root / "meta/info.json").read_text())["total_frames"] == 17


def test_crash_after_commit_is_finished_by_recover(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    w = DatasetWriter.create(root, FPS, FEATURES)
    w.add_episode(_episode(6, 0), "t")
    before = _snapshot(root)

    def crash(root_, renames):  # the journal is on disk; the process dies before any rename
        raise KeyboardInterrupt

    monkeypatch.setattr(commit, "_apply", crash)
    with pytest.raises(KeyboardInterrupt):
        w.add_episode(_episode(8, 1), "t")
    monkeypatch.undo()
    assert (root / commit.JOURNAL).exists()
    with pytest.raises(DatasetError, match="interrupted write"):
        LeRobotDataset(root)
    assert commit.recover(root)["finished"] == 1
    got = _snapshot(root)
    _same(got[:1], before)
    assert len(got) == 2 and len(got[1]["action"]) == 8
    np.testing.assert_array_equal(got[1]["action"], _episode(8, 1)["action"])


def test_file_size_limit_starts_the_next_file(tmp_path):
    root = tmp_path / "ds"
    w = DatasetWriter.create(root, FPS, FEATURES, video_files_size_in_mb=1)
    w.info["video_files_size_in_mb"] = 1e-6  # any episode overflows: each video goes to its own file
    eps = [_episode(5, s) for s in range(3)]
    for ep in eps:
        w.add_episode(ep, "t")
    ds = LeRobotDataset(root)
    assert [e["videos/observation.image/file_index"] for e in ds.episodes] == [0, 1, 2]
    assert [e["videos/observation.image/from_timestamp"] for e in ds.episodes] == [0.0, 0.0, 0.0]
    assert [e["data/file_index"] for e in ds.episodes] == [0, 0, 0]
    for i, ep in enumerate(eps):
        assert np.abs(ds.load_episode(i)["observation.image"].astype(int) - ep["observation.image"]).mean() < 3


def test_bad_input_is_one_clear_error(tmp_path):
    root = tmp_path / "ds"
    w = DatasetWriter.create(root, FPS, FEATURES)
    ep = _episode(4, 0)
    with pytest.raises(DatasetError, match="missing \\['action'\\]"):
        w.add_episode({k: v for k, v in ep.items() if k != "action"}, "t")
    with pytest.raises(DatasetError, match="observation.image: frames are"):
        w.add_episode({**ep, "observation.image": ep["observation.image"][:, :32]}, "t")
    bad = ep["action"].copy()
    bad[1, 0] = np.nan
    with pytest.raises(DatasetError, match="NaN"):
        w.add_episode({**ep, "action": bad}, "t")
    assert len(w.episodes) == 0 and not commit.pending(root)
    with pytest.raises(DatasetError, match="not empty"):
        DatasetWriter.create(root, FPS, FEATURES)
    with pytest.raises(DatasetError, match="whole number"):
        DatasetWriter.create(tmp_path / "x", 7.5, FEATURES)
    (tmp_path / "old").mkdir()
    (tmp_path / "old/meta").mkdir()
    (tmp_path / "old/meta/info.json").write_text('{"codebase_version": "v2.1", "features": {}, "fps": 10}')
    with pytest.raises(DatasetError, match="codebase_version 'v2.1'"):
        LeRobotDataset(tmp_path / "old")


def test_image_stats_from_histograms_equal_numpy_on_the_pixels():
    from edgedp.datasets.stats import QUANTILES, QUANTILE_KEYS, feature_stats

    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (9, 20, 22, 3)).astype(np.uint8)
    frames[..., 1] = 17  # a constant channel
    got = feature_stats(frames, "video")
    px = frames.reshape(-1, 3).astype(np.float64) / 255
    for key, want in (("min", px.min(0)), ("max", px.max(0)), ("mean", px.mean(0)), ("std", px.std(0)),
                      *((k, np.quantile(px, q, axis=0)) for k, q in zip(QUANTILE_KEYS, QUANTILES))):
        assert got[key].shape == (3, 1, 1)
        np.testing.assert_allclose(got[key].reshape(3), want, rtol=1e-12, atol=1e-12, err_msg=key)
    assert got["count"].tolist() == [9]
