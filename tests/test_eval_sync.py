"""The synchronous baseline holds the arm while the policy thinks; the asynchronous runtime keeps moving.

A random `small` policy with K=1 denoising step outputs a chunk of clipped noise, i.e. a new random pose
every chunk, so the arm is always on the move whenever a chunk is running: a hold is visible as a constant
servo command. The servo loop's timeline (goal positions at 50 Hz) is compared with each inference's
[start, publish] interval from the planner's telemetry.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgedp.config import load_config
from edgedp.evaluation.episodes import Condition, EvalSession

SIM = Path(__file__).resolve().parents[1] / "examples" / "sim.yaml"


@pytest.fixture(scope="module")
def session():
    cfg = load_config(SIM)
    cfg.policy.checkpoint = "preset:small"  # random weights: with K = 1 every chunk is a new random pose
    cfg.policy.steps = 1
    s = EvalSession(cfg)
    s.open()
    yield s
    s.close()


def _command_motion_during_inference(tel) -> list[float]:
    """Largest command change within each inference after the first (the first one starts from a hold anyway)."""
    tl = tel.servo["timeline"]
    t, cmd = np.asarray(tl["t"]), np.asarray(tl["cmd"])
    out = []
    for c in tel.chunk_log[1:]:
        inside = (t >= c["t_start"]) & (t <= c["t_publish"] - 0.005)  # before the servo could adopt the chunk
        if inside.sum() >= 2:
            seg = cmd[inside]
            out.append(float(np.abs(seg - seg[0]).max()))
    return out


def test_sync_holds_while_the_planner_runs_and_async_does_not(session):
    res = session.run_episode(0, 0, Condition(latency_ms=300, sync=True), timeout=3.0)
    sync_motion = _command_motion_during_inference(session.last_telemetry)
    assert res.chunks >= 2 and len(sync_motion) >= 1
    assert max(sync_motion) < 1e-6, sync_motion
    # sync chunks are timed from their publication: nothing is late, the arm waited for them
    adoptions = session.last_telemetry.servo["adoptions"]
    assert all(a["dropped_steps"] <= 1 for a in adoptions)

    res = session.run_episode(1, 0, Condition(latency_ms=300, sync=False), timeout=3.0)
    async_motion = _command_motion_during_inference(session.last_telemetry)
    assert res.chunks >= 3 and len(async_motion) >= 2
    assert max(async_motion) > 0.05, async_motion  # the arm executes the current chunk meanwhile
