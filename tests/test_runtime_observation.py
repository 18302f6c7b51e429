"""The observation window picks samples by time and refuses stale observations."""
from __future__ import annotations

import numpy as np
import pytest

from edgedp.runtime.observation import (FrameHistory, NotReady, ObservationWindow, StaleObservation, StateHistory)
from edgedp.runtime.ring import ChunkRing


def _window(max_age=0.25, n_obs=2, dt=0.1, with_camera=True):
    ring = ChunkRing.create(capacity=600, dim=3, slots=3, timed=False)
    states = StateHistory(ring)
    cams = {}
    if with_camera:
        cams["observation.image"] = FrameHistory("top", camera=None, keep_seconds=2.0)
    w = ObservationWindow(n_obs, dt, max_age, states, "observation.state", cams,
                          {"observation.image": (3, 8, 8)})
    return ring, w


def _publish_states(ring, times):
    rows = np.stack([times, times * 10, -times], axis=1)  # q encodes its own time: easy to check
    ring.publish(rows, 0.0, 0.0)


def _frame(value):
    return np.full((8, 8, 3), value, dtype=np.uint8)


def test_picks_newest_sample_at_or_before_each_time():
    ring, w = _window()
    try:
        _publish_states(ring, np.arange(0.0, 1.0, 0.002) + 100.0)  # 500 Hz states up to 100.998
        cam = w.cameras["observation.image"]
        for k, t in enumerate(np.arange(100.0, 100.95, 1 / 30)):  # 30 fps frames up to ~100.933
            cam.add(float(t), _frame(k))
        obs = w.assemble(now=101.0)
        t_last = max(np.arange(100.0, 100.95, 1 / 30))
        assert obs.t == pytest.approx(t_last)  # the camera is the oldest source: it sets "now"
        assert obs.age == pytest.approx(101.0 - t_last)
        # States at or before t_last - 0.1 and t_last.
        used = obs.sample_times["joints"]
        assert used[1] <= t_last and t_last - used[1] < 0.002 + 1e-9
        assert used[0] <= t_last - 0.1 and (t_last - 0.1) - used[0] < 0.002 + 1e-9
        assert np.allclose(obs.data["observation.state"][:, 0], used * 10, atol=1e-4)
        # Frames: the newest, and the newest at or before 0.1 s earlier (3 frames back at 30 fps).
        ft = obs.sample_times["observation.image"]
        assert ft[1] == pytest.approx(t_last) and t_last - 0.1 - 1 / 30 < ft[0] <= t_last - 0.1 + 1e-9
        img = obs.data["observation.image"]
        assert img.shape == (2, 8, 8, 3) and img.dtype == np.uint8
        assert img[1, 0, 0, 0] == 28 and img[0, 0, 0, 0] == 25
        assert obs.data["observation.state"].shape == (2, 2)
    finally:
        ring.close()


def test_refuses_stale_observation_and_names_the_source():
    ring, w = _window(max_age=0.25)
    try:
        _publish_states(ring, np.arange(0.0, 1.0, 0.002) + 100.0)
        cam = w.cameras["observation.image"]
        for t in np.arange(100.0, 100.5, 1 / 30):  # the camera froze at ~100.5
            cam.add(float(t), _frame(1))
        with pytest.raises(StaleObservation) as e:
            w.assemble(now=101.0)
        assert e.value.source == "observation.image" and e.value.age > 0.25
        w.assemble(now=100.6)  # the same data is fine when it is fresh enough
    finally:
        ring.close()


def test_not_ready_without_enough_history():
    ring, w = _window(with_camera=False, n_obs=3, dt=0.1)
    try:
        with pytest.raises(NotReady):
            w.assemble(now=1.0)
        _publish_states(ring, np.array([0.95, 0.96, 0.97]))
        with pytest.raises(NotReady):
            w.assemble(now=1.0)  # 3 samples 0.1 s apart need 0.2 s of history
        _publish_states(ring, np.arange(0.70, 0.971, 0.01))
        obs = w.assemble(now=1.0)
        assert np.allclose(obs.sample_times["joints"], [0.77, 0.87, 0.97], atol=1e-9)
    finally:
        ring.close()


def test_resizes_frames_to_the_policy_shape():
    ring, w = _window()
    try:
        _publish_states(ring, np.arange(0.0, 1.0, 0.01))
        cam = w.cameras["observation.image"]
        for t in np.arange(0.0, 1.0, 0.05):
            cam.add(float(t), np.full((32, 48, 3), 200, dtype=np.uint8))
        obs = w.assemble(now=1.0)
        assert obs.data["observation.image"].shape == (2, 8, 8, 3)
        assert np.all(obs.data["observation.image"] == 200)
    finally:
        ring.close()
