"""Reference parity (slow): LeRobot 0.4.4's own `LeRobotDataset` opens what `edgedp record` wrote, in its own venv,
and every frame it returns equals what edgedp recorded (rows exactly; video within AV1's loss and bit-identical
to edgedp's own decode). It also asks for observation/action windows with delta_timestamps across episode
boundaries, as policy training does. The venv is /work/venvs/lerobot044 (Python 3.10, lerobot==0.4.4),
or EDGEDP_LEROBOT_PYTHON; missing, the test skips, or fails when CI=true.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

LEROBOT_PY = os.environ.get("EDGEDP_LEROBOT_PYTHON", "/work/venvs/lerobot044/bin/python")

# Runs inside LeRobot's venv: no edgedp import there. Dumps every item LeRobot returns.
ORACLE = r'''
import json, sys
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
root, out, backend = sys.argv[1], sys.argv[2], sys.argv[3]
ds = LeRobotDataset("edgedp/record-test", root=root, video_backend=backend)
keys = ["observation.image", "observation.state", "action", "timestamp", "frame_index", "episode_index", "index",
        "task_index"]
arrays = {k: np.stack([ds[i][k].numpy() for i in range(len(ds))]) for k in keys}
fps = ds.fps
win = LeRobotDataset("edgedp/record-test", root=root, video_backend=backend,
                     delta_timestamps={"observation.image": [-1 / fps, 0.0], "action": [k / fps for k in range(4)]})
picks = [0, 9, 10, len(win) - 1]  # first frame, last of episode 0, first of episode 1, the very last frame
for k in ("observation.image", "action", "action_is_pad", "observation.image_is_pad"):
    arrays["win_" + k] = np.stack([win[i][k].numpy() for i in picks])
np.savez(out, **arrays)
print(json.dumps({"len": len(ds), "episodes": ds.num_episodes, "fps": fps, "tasks": list(ds.meta.tasks.index),
                  "task0": ds[0]["task"], "video_keys": ds.meta.video_keys, "picks": picks,
                  "stats_image_mean": np.asarray(ds.meta.stats["observation.image"]["mean"]).tolist(),
                  "policy_features": sorted(str(k) for k in ds.meta.features)}))
'''


def _lerobot_python() -> str:
    ok = Path(LEROBOT_PY).exists() and subprocess.run([LEROBOT_PY, "-c", "import lerobot"],
                                                      capture_output=True).returncode == 0
    if not ok:
        msg = f"LeRobot venv not usable at {LEROBOT_PY} (python -c 'import lerobot' failed)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return LEROBOT_PY


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["pyav", "torchcodec"])  # torchcodec is LeRobot's default decoder
def test_lerobot_opens_an_edgedp_recording_and_every_frame_matches(tmp_path, backend):
    from edgedp.datasets.reader import LeRobotDataset as EdgedpReader
    from edgedp.sim_task.expert import ExpertConfig, TaskConfig, record_episode

    py = _lerobot_python()
    root = tmp_path / "rec"
    base = [sys.executable, "-m", "edgedp.cli", "record", "--out", str(root), "--steps", "10"]
    for extra in (["--episodes", "3"], ["--episodes", "2", "--append"]):  # two sessions: resume is part of it
        r = subprocess.run(base + extra, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    script = tmp_path / "oracle.py"
    script.write_text(ORACLE)
    out = tmp_path / "lerobot_items.npz"
    r = subprocess.run([py, str(script), str(root), str(out), backend], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["len"] == 50 and doc["episodes"] == 5 and doc["fps"] == 10
    assert doc["tasks"] == ["reach"] and doc["task0"] == "reach" and doc["video_keys"] == ["observation.image"]
    z = np.load(out)

    experts = [record_episode(TaskConfig(steps=10), ExpertConfig(), seed) for seed in range(5)]
    want_state = np.concatenate([e.state for e in experts])
    want_action = np.concatenate([e.action for e in experts])
    want_image = np.concatenate([e.image for e in experts]).astype(np.int16)
    np.testing.assert_array_equal(z["observation.state"], want_state)
    np.testing.assert_array_equal(z["action"], want_action)
    np.testing.assert_array_equal(z["index"], np.arange(50))
    np.testing.assert_array_equal(z["episode_index"], np.repeat(np.arange(5), 10))
    np.testing.assert_array_equal(z["frame_index"], np.tile(np.arange(10), 5))
    np.testing.assert_allclose(z["timestamp"], np.tile(np.arange(10), 5) / 10, atol=1e-6)
    theirs = np.round(z["observation.image"].transpose(0, 2, 3, 1) * 255).astype(np.int16)  # (C,H,W) in [0,1]
    assert theirs.shape == want_image.shape
    err = np.abs(theirs - want_image)
    assert err.mean() < 3.0, err.mean()  # every one of the 50 frames, through AV1
    ours = EdgedpReader(root)
    mine = np.concatenate([ours.load_episode(i)["observation.image"] for i in range(5)]).astype(np.int16)
    assert np.abs(mine - theirs).max() <= 1  # LeRobot's decode and edgedp's agree (same frames, same place)
    stats = json.loads((root / "meta/stats.json").read_text())
    np.testing.assert_allclose(doc["stats_image_mean"], stats["observation.image"]["mean"])

    # Windows as training asks for them: the image before and the 4 actions from each picked frame, padded at
    # episode edges (the is_pad flags come from the episode rows' dataset_from/to_index).
    picks = doc["picks"]
    for row, i in enumerate(picks):
        ep, t = divmod(i, 10)
        prev = max(t - 1, 0) + ep * 10
        np.testing.assert_array_equal(z["win_observation.image_is_pad"][row], [t == 0, False])
        assert np.abs(np.round(z["win_observation.image"][row, 0].transpose(1, 2, 0) * 255) - mine[prev]).max() <= 1
        for k in range(4):
            j = min(t + k, 9) + ep * 10
            np.testing.assert_array_equal(z["win_action"][row, k], want_action[j])
            assert bool(z["win_action_is_pad"][row, k]) == (t + k > 9)


ORACLE_RUNLOG = r'''
import json, sys
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset
root, out = sys.argv[1], sys.argv[2]
ds = LeRobotDataset("edgedp/run-log", root=root, video_backend="pyav")
keys = [k for k in ds.meta.features if ds.meta.features[k]["dtype"] != "string"]
np.savez(out, **{k: np.stack([ds[i][k].numpy() for i in range(len(ds))]) for k in keys})
print(json.dumps({"len": len(ds), "video_keys": ds.meta.video_keys, "keys": keys}))
'''


@pytest.mark.slow
def test_lerobot_opens_a_run_log(tmp_path):
    """What `edgedp run --record` writes (two runs, two camera windows, float64 times) loads in LeRobot too."""
    from edgedp.datasets.deploy import DeploymentRecorder
    from test_view import JOINTS, _events  # pytest puts tests/ on sys.path (no __init__.py)

    py = _lerobot_python()
    root = tmp_path / "log"
    runs = [_events(5, seed=0), _events(3, seed=1)]
    for events in runs:
        rec = DeploymentRecorder(root, {"observation.image": (3, 32, 32)}, "observation.state", JOINTS, 2, 8, 0.1,
                                 "run sim.yaml")
        for ev in events:
            rec(ev)
        rec.finish(None)
    script = tmp_path / "oracle_runlog.py"
    script.write_text(ORACLE_RUNLOG)
    out = tmp_path / "items.npz"
    r = subprocess.run([py, str(script), str(root), str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["len"] == 8 and doc["video_keys"] == ["observation.image", "observation.image.prev1"]
    z = np.load(out)
    events = runs[0] + runs[1]
    t_pub = [ev.t_publish - run[0].t_obs for run in runs for ev in run]  # relative to each run's first observation
    np.testing.assert_allclose(z["chunk.t_publish"], t_pub, atol=1e-6)  # LeRobot hands floats out as float32
    np.testing.assert_array_equal(z["action.chunk"], np.stack([ev.actions.astype(np.float32).reshape(-1) for ev in events]))
    np.testing.assert_array_equal(z["observation.state.prev1"], np.stack([ev.obs["observation.state"][0] for ev in events]))
    for key, k in (("observation.image", -1), ("observation.image.prev1", 0)):
        theirs = np.round(z[key].transpose(0, 2, 3, 1) * 255).astype(int)
        want = np.stack([ev.obs["observation.image"][k] for ev in events]).astype(int)
        assert np.abs(theirs - want).mean() < 6, key
