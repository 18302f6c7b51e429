"""Seeing and logging a run: the planner's chunk hook feeds the deployment recorder (LeRobot v3.0 episode) and the
rerun view (.rrd read back); `edgedp eval --video` writes one mp4 per episode with failures sorted first."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("pyarrow")
av = pytest.importorskip("av")

from edgedp.runtime.planner import PublishedChunk  # noqa: E402

JOINTS = ["shoulder", "elbow"]


def _events(n: int = 5, n_obs: int = 2, horizon: int = 8, seed: int = 0) -> list[PublishedChunk]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t_obs = 100.0 + 0.4 * i
        img = np.zeros((n_obs, 32, 32, 3), np.uint8)
        for k in range(n_obs):
            img[k, :, : 4 + 3 * i + k] = 200  # a bar that grows: frames differ per chunk and per window step
        obs = {"observation.image": img, "observation.state": rng.normal(size=(n_obs, 2)).astype(np.float32)}
        times = {"joints": t_obs - 0.1 * np.arange(n_obs - 1, -1, -1), "observation.image": t_obs - 0.1 * np.arange(n_obs)}
        out.append(PublishedChunk(seq=i + 1, obs=obs, t_obs=t_obs, sample_times=times,
                                  actions=rng.normal(size=(horizon, 2)), first=n_obs - 1, executed=4, t0=t_obs,
                                  dt=0.1, t_plan_start=t_obs + 0.01, t_publish=t_obs + 0.05 + 0.001 * i))
    return out


def _servo_report(n: int = 50) -> dict:
    t = 100.0 + np.arange(n) * 0.02
    return {"timeline": {"t": t, "cmd": np.stack([np.sin(t), np.cos(t)], 1), "meas": np.stack([np.sin(t - 0.01),
            np.cos(t - 0.01)], 1), "target": np.stack([np.sin(t), np.cos(t)], 1)}}


def test_deployment_recorder_writes_what_the_policy_saw_and_planned(tmp_path):
    from edgedp.datasets.deploy import DeploymentRecorder
    from edgedp.datasets.reader import LeRobotDataset

    root = tmp_path / "runs"
    events = _events()
    rec = DeploymentRecorder(root, {"observation.image": (3, 32, 32)}, "observation.state", JOINTS, n_obs_steps=2,
                             horizon=8, action_period=0.1, task="run sim.yaml")
    for ev in events:
        rec(ev)  # what the planner thread does: a queue put
    done = rec.finish(_servo_report())
    assert done == {"episode_index": 0, "rows": 5, "dropped": 0, "total_episodes": 1, "episodes": 1}
    ds = LeRobotDataset(root)
    ep = ds.load_episode(0)
    assert ds.fps == 10 and ds.tasks == ["run sim.yaml"]
    for i, ev in enumerate(events):
        np.testing.assert_array_equal(ep["observation.state"][i], ev.obs["observation.state"][-1])  # newest
        np.testing.assert_array_equal(ep["observation.state.prev1"][i], ev.obs["observation.state"][0])
        for key, k in (("observation.image", -1), ("observation.image.prev1", 0)):
            assert np.abs(ep[key][i].astype(int) - ev.obs["observation.image"][k]).mean() < 6  # AV1 on 32x32
        np.testing.assert_array_equal(ep["action"][i], ev.actions[ev.first].astype(np.float32))
        np.testing.assert_array_equal(ep["action.chunk"][i], ev.actions.astype(np.float32).reshape(-1))
        z = events[0].t_obs  # times relative to the first observation (float64 in the file)
        assert ep["chunk.seq"][i] == ev.seq and ep["chunk.t_publish"][i] == ev.t_publish - z
        assert ep["chunk.t0"][i] == ev.t0 - z and ep["chunk.executed"][i] == 4
    # the images really are the window's two steps (the bar of step k is 3*i+4+k wide), not one copied twice
    assert (ep["observation.image"][:, 16, :, 0] > 100).sum(1).tolist() == [5, 8, 11, 14, 17]
    import pyarrow.parquet as pq

    servo = pq.read_table(root / "edgedp/servo/episode_000000.parquet")
    np.testing.assert_array_equal(servo.column("cmd.elbow").to_numpy(), _servo_report()["timeline"]["cmd"][:, 1])
    np.testing.assert_allclose(servo.column("t").to_numpy(), _servo_report()["timeline"]["t"] - events[0].t_obs)
    assert json.loads(ds.episodes[0]["edgedp/info"])["t_zero_monotonic_s"] == events[0].t_obs
    # A second run appends a second episode; a different policy's rows are refused before anything runs.
    rec2 = DeploymentRecorder(root, {"observation.image": (3, 32, 32)}, "observation.state", JOINTS, 2, 8, 0.1, "run")
    for ev in _events(3, seed=1):
        rec2(ev)
    assert rec2.finish(None)["total_episodes"] == 2
    from edgedp.datasets import DatasetError

    with pytest.raises(DatasetError, match="other features"):
        DeploymentRecorder(root, {"observation.image": (3, 32, 32)}, "observation.state", JOINTS, 2, 16, 0.1, "run")
    with pytest.raises(DatasetError, match="1/whole-number"):
        DeploymentRecorder(tmp_path / "x", {}, "observation.state", JOINTS, 2, 8, 0.3, "run")


def test_long_runs_are_written_in_parts_to_bound_memory(tmp_path):
    from edgedp.datasets.deploy import DeploymentRecorder
    from edgedp.datasets.reader import LeRobotDataset

    rec = DeploymentRecorder(tmp_path / "log", {"observation.image": (3, 32, 32)}, "observation.state", JOINTS, 2, 8,
                             0.1, "run", max_rows=2)
    events = _events(5)
    for ev in events:
        rec(ev)
    done = rec.finish(_servo_report())
    assert done["episodes"] == 3 and done["rows"] == 5 and done["total_episodes"] == 3
    ds = LeRobotDataset(tmp_path / "log")
    assert [int(e["length"]) for e in ds.episodes] == [2, 2, 1]
    seqs = np.concatenate([ds.load_episode(i)["chunk.seq"] for i in range(3)])
    assert seqs.tolist() == [ev.seq for ev in events]  # nothing lost or repeated at the part boundaries
    assert [json.loads(e["edgedp/info"])["part"] for e in ds.episodes] == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "log/edgedp/servo").iterdir()) == ["episode_000002.parquet"]


def test_other_low_dim_policy_inputs_are_recorded_too(tmp_path):
    """A policy with more state inputs than the joints (Push-T's keypoints) gets them logged, window included."""
    from dataclasses import replace

    from edgedp.datasets.deploy import DeploymentRecorder
    from edgedp.datasets.reader import LeRobotDataset

    key = "observation.environment_state"
    rec = DeploymentRecorder(tmp_path / "log", {"observation.image": (3, 32, 32)}, "observation.state", JOINTS, 2, 8,
                             0.1, "run", extra_state={key: 4})
    events = [replace(e, obs={**e.obs, key: np.arange(8, dtype=np.float32).reshape(2, 4) + 10 * i})
              for i, e in enumerate(_events(3))]
    for ev in events:
        rec(ev)
    rec.finish(None)
    ep = LeRobotDataset(tmp_path / "log").load_episode(0)
    np.testing.assert_array_equal(ep[key], np.stack([ev.obs[key][-1] for ev in events]))
    np.testing.assert_array_equal(ep[key + ".prev1"], np.stack([ev.obs[key][0] for ev in events]))


def test_rerun_view_logs_camera_joints_and_chunks(tmp_path):
    rr = pytest.importorskip("rerun")
    from rerun.chunk import RrdReader

    from edgedp.view.rerun_view import RerunView

    path = tmp_path / "run.rrd"
    view = RerunView(str(path), JOINTS, ["observation.image"], "observation.state")
    events = _events(4)
    for ev in events:
        view(ev)
    view.finish(_servo_report())
    rows: dict[str, int] = {}
    values: dict[str, list] = {}
    for chunk in RrdReader(path).stream():
        name = str(chunk.entity_path)
        rows[name] = rows.get(name, 0) + chunk.num_rows
        batch = chunk.to_record_batch()
        for col in batch.schema.names:
            if col.endswith("Scalars:scalars"):
                values.setdefault(name, []).extend(v[0] for v in batch.column(col).to_pylist())
    for entity in ("/camera/observation.image", "/chunk/boundary", "/plan/shoulder", "/joints/target/elbow",
                   "/joints/measured/shoulder", "/joints/commanded/shoulder"):
        assert entity in rows, (entity, sorted(rows))
    assert rows["/camera/observation.image"] == 4 and rows["/chunk/boundary"] == 4
    assert rows["/joints/target/elbow"] == 4 * 4  # the executed slice of every chunk
    assert sorted(values["/plan/shoulder"]) == sorted(float(a) for ev in events for a in ev.actions[:, 0])
    target = [float(ev.actions[j, 1]) for ev in events for j in range(ev.first, ev.first + ev.executed)]
    assert sorted(values["/joints/target/elbow"]) == sorted(target)
    np.testing.assert_allclose(sorted(values["/joints/commanded/shoulder"]),
                               sorted(_servo_report()["timeline"]["cmd"][:, 0]))
    with pytest.raises(Exception, match="serve"):
        RerunView(str(tmp_path / "run.txt"), JOINTS, [], "observation.state")


def test_eval_video_names_sort_failures_first():
    from edgedp.view.episode_video import video_name

    names = [video_name("async +0 ms", i, 10 + i, ok) for i, ok in enumerate([True, False, True, False])]
    assert sorted(names) == [names[1], names[3], names[0], names[2]]
    assert names[1] == "0-fail_async+0ms_ep001_seed11.mp4"


def test_run_record_view_and_eval_video_on_the_simulated_robot(tmp_path):
    """The real runtime (emulated servos, virtual camera, trained sim policy) with both hooks attached."""
    from edgedp.datasets.reader import LeRobotDataset

    rec, rrd = tmp_path / "runs", tmp_path / "run.rrd"
    r = subprocess.run([sys.executable, "-m", "edgedp.cli", "run", "examples/sim.yaml", "--duration", "3", "--no-live",
                        "--record", str(rec), "--view", str(rrd)], capture_output=True, text=True, timeout=300)
    assert "record: " in r.stdout and "episode 0" in r.stdout, r.stdout + r.stderr
    ds = LeRobotDataset(rec)
    ep = ds.load_episode(0)
    n = len(ep["action"])
    assert n >= 2 and ds.features["observation.image"]["shape"] == [96, 96, 3]
    np.testing.assert_array_equal(ep["action"], ep["action.chunk"].reshape(n, -1, 2)[np.arange(n), ep["chunk.first"]])
    assert np.all(np.diff(ep["chunk.t_obs"]) > 0) and np.all(ep["chunk.t_publish"] > ep["chunk.t_plan_start"])
    assert np.all(np.diff(ep["chunk.seq"]) == 1)
    assert rrd.stat().st_size > 0
    out = tmp_path / "videos"
    r = subprocess.run([sys.executable, "-m", "edgedp.cli", "eval", "examples/sim.yaml", "--episodes", "2",
                        "--episode-timeout", "2", "--video", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in out.glob("*.mp4"))
    assert len(files) == 2 and all(f.split("_")[-1] in ("seed0.mp4", "seed1.mp4") for f in files)
    with av.open(str(out / files[0])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) > 10 and frames[0].shape == (384, 384, 3)
    assert json.dumps(files)  # names are plain ASCII
