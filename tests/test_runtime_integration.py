"""Integration of calibrated time offsets and camera counters into the runtime.

Camera delay: frames are stored at t_camera - camera_delay, so an observation pairs each joint state with
the image of the same instant. Command delay: chunks are timed that much earlier, so each action is
commanded ahead of its time by the actuation latency. Camera counters reach the telemetry JSON by camera
name. Real parts throughout: the `small` preset policy, the shared-memory rings, the emulated servos and
the virtual RealSense.
"""
from __future__ import annotations

from example_configs import load_example
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgedp.app import build, load_time_offsets
from edgedp.config import parse_config
from edgedp.errors import UserError
from edgedp.runtime.lifecycle import Runtime
from edgedp.runtime.observation import FrameHistory, ObservationWindow, StateHistory
from edgedp.runtime.planner import Planner
from edgedp.runtime.ring import ChunkRing
from edgedp.runtime.telemetry import Telemetry

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sim.yaml"
FPS = 30.0


def _world_window(camera_delay: float, image_shape=(3, 8, 8), n_obs=2, dt=0.1):
    """A window over a world whose joints read their own time (q = 10 t) and whose camera frame k shows the
    instant 100 + k/30 s but is stamped `true_delay` later, as a camera with transport latency does."""
    ring = ChunkRing.create(capacity=600, dim=3, slots=3, timed=False)
    t = np.arange(0.0, 1.0, 0.002) + 100.0
    ring.publish(np.stack([t, 10 * t, -t], axis=1), 0.0, 0.0)
    cam = FrameHistory("top", camera=None, keep_seconds=2.0, camera_delay=camera_delay)
    _, h, w = image_shape
    w_ = ObservationWindow(n_obs, dt, 0.5, StateHistory(ring), "observation.state", {"observation.image": cam},
                           {"observation.image": image_shape})
    return ring, cam, w_, (h, w)


TRUE_DELAY = 0.05


def _feed_frames(cam, hw):
    for k in range(28):  # true times 100.0 .. 100.9
        img = np.full((hw[0], hw[1], 3), k, dtype=np.uint8)
        cam.add(100.0 + k / FPS + TRUE_DELAY, img)


def _pairing_error(obs) -> np.ndarray:
    """Seconds between the instant each image shows and the joint sample it is paired with."""
    shown = 100.0 + obs.data["observation.image"][:, 0, 0, 0].astype(float) / FPS
    joints = obs.sample_times["joints"]
    return np.abs(joints - shown)


def test_camera_delay_pairs_images_with_joint_states_of_the_same_instant():
    for delay, expect_aligned in ((TRUE_DELAY, True), (0.0, False)):
        ring, cam, window, hw = _world_window(delay)
        try:
            _feed_frames(cam, hw)
            obs = window.assemble(now=101.1)
            # Stored times are the camera's stamps minus the configured delay.
            stamps = 100.0 + obs.data["observation.image"][:, 0, 0, 0].astype(float) / FPS + TRUE_DELAY
            np.testing.assert_allclose(obs.sample_times["observation.image"], stamps - delay, atol=1e-9)
            err = _pairing_error(obs)
            if expect_aligned:  # within one frame period (sampling), never the transport delay on top
                assert np.all(err < 1 / FPS + 0.002), err
            else:  # uncorrected, the image is the transport delay older than the joints it is paired with
                assert np.all(err >= TRUE_DELAY - 1e-6), err
        finally:
            ring.close()


@pytest.fixture(scope="module")
def small_policy():
    from edgedp.policy_loading import load_policy

    return load_policy("preset:small", "cpu", 2, 0)


def _plan_with(policy, command_delay: float, action_lead: float = 0.0, sync: bool = False, published=None):
    """One chunk planned and published; returns (header, t_obs, next_start). `published`: a list that receives
    (the PublishedChunk, the rows the servo side read from the ring)."""
    from edgedp.runtime.conditioning import ChunkConditioner

    shape = tuple(policy.feature_shapes["observation.image"])
    state_key = policy.state_keys[0]
    ring, cam, window, hw = _world_window(0.0, image_shape=shape, n_obs=policy.n_obs_steps)
    window.state_key = state_key
    _feed_frames(cam, hw)
    # sized as the runtime sizes it (lifecycle): the executed slice plus an inpainting planner's lookahead knots
    capacity = policy.n_action_steps + ChunkConditioner.lookahead_for(policy, policy.n_obs_steps - 1,
                                                                      policy.n_action_steps)
    chunks = ChunkRing.create(capacity=capacity, dim=policy.action_dim, slots=4)
    try:
        planner = Planner(policy, policy.sample, window, chunks, Telemetry(250, "thread"), 0.1, policy.n_action_steps,
                          2, clock=lambda: 101.0, command_delay=command_delay, action_lead=action_lead, sync=sync)
        events = []
        planner.listeners.append(events.append)
        assert planner.plan_once() == 1
        out = np.zeros((chunks.spec.capacity, chunks.spec.dim))
        header = chunks.read_newest(out)
        log = planner.tel.chunk_log[-1]
        assert log["t0"] == pytest.approx(header.t0)
        assert ("decided" in log) == bool(getattr(policy, "sampler_options", {}).get("inpaint"))
        if published is not None:
            published.append((events[-1], out[: header.length].copy()))
        return header, log["t_obs"], planner.next_start
    finally:
        chunks.close()
        ring.close()


def test_command_delay_times_chunks_early_by_the_actuation_latency(small_policy):
    h0, t_obs0, next0 = _plan_with(small_policy, 0.0)
    h1, t_obs1, next1 = _plan_with(small_policy, 0.06)
    assert t_obs0 == t_obs1  # same observation ...
    assert h0.t0 == pytest.approx(t_obs0)
    assert h1.t0 == pytest.approx(t_obs1 - 0.06)  # ... commanded 60 ms ahead of its time
    # The next chunk is started that much earlier too (the current one runs out earlier in command time).
    assert next0 - next1 == pytest.approx(0.06)
    # Which steps the servo loop drops as already past at a given tick (its rule: steps with t0 + j*dt < now).
    now = t_obs0 + 0.25
    late0 = int((now - h0.t0) // h0.dt) + 1
    late1 = int((now - h1.t0) // h1.dt) + 1
    assert late1 == late0 + 1  # 0.25 s is 2.5 steps late without the delay, 3.1 with it


def test_action_lead_times_the_chunk_one_period_after_the_observation(small_policy):
    """policy.action_lead_periods: 1 (data whose action i is the target one period after frame i): index `first`
    is for t_obs + one period, so the servo reaches each action when the demonstrations did, not one period early."""
    h0, t_obs0, next0 = _plan_with(small_policy, 0.0)
    h1, t_obs1, next1 = _plan_with(small_policy, 0.0, action_lead=0.1)
    assert t_obs0 == t_obs1
    assert h1.t0 == pytest.approx(h0.t0 + 0.1) and h0.t0 == pytest.approx(t_obs0)
    latency = h0.t0 + (h0.length - 1) * h0.dt - next0  # the planner's expected latency (no lead: next = end - it)
    end1 = h1.t0 + (h1.length - 1) * h1.dt              # the chunk runs out one period later ...
    assert end1 - (h0.t0 + (h0.length - 1) * h0.dt) == pytest.approx(0.1)
    # ... and the next one starts the longer of latency and lead before that end, so that its own first step
    # (due one lead after its observation) is due before this chunk runs out, even when inference is faster.
    assert latency < 0.1 and next1 == pytest.approx(end1 - 0.1)
    assert next1 + 0.1 <= end1 + 1e-9
    both = _plan_with(small_policy, 0.06, action_lead=0.1)[0]
    assert both.t0 == pytest.approx(t_obs0 - 0.06 + 0.1)  # composes with the calibrated command delay


def test_inpainting_plans_the_next_chunk_earlier_and_logs_what_it_decided():
    """With inpainting the next chunk is started one period earlier (ChunkConditioner.replan_advance: the Deferred
    switch at the new chunk's second knot must fall inside the old executed slice), the chunk goes out with MARGIN
    lookahead knots past its executed slice (the chunk's own next predictions, marked in the ring header), and the
    chunk log says when each chunk starts and how many of its published steps the previous chunk decided. Without
    inpainting (and in synchronous mode) only the executed slice is published, as before."""
    from edgedp.policy_loading import load_policy
    from edgedp.runtime.conditioning import ChunkConditioner

    plain = load_policy("preset:small", "cpu", 2, 0)
    inpainted = load_policy("preset:small", "cpu", 2, 0)
    inpainted.configure_sampler(inpaint="guided")
    ta, first, margin = inpainted.n_action_steps, inpainted.n_obs_steps - 1, ChunkConditioner.MARGIN
    assert first + ta + margin <= inpainted.horizon  # the preset has room for the lookahead knots
    seen_plain, seen_inpainted, seen_sync = [], [], []
    h0, _, next0 = _plan_with(plain, 0.0, published=seen_plain)
    h1, _, next1 = _plan_with(inpainted, 0.0, published=seen_inpainted)
    assert next0 - next1 == pytest.approx(0.1)  # one action period of advance (three before lookahead knots)
    assert h0.t0 == pytest.approx(h1.t0)
    assert (h0.length, h0.lookahead, h0.executed) == (ta, 0, ta)
    assert (h1.length, h1.lookahead, h1.executed) == (ta + margin, margin, ta)
    for (event, rows), n in ((seen_plain[0], ta), (seen_inpainted[0], ta + margin)):
        np.testing.assert_array_equal(rows, event.actions[first: first + n])  # the chunk's own predictions
        assert event.executed == ta  # recorders and viewers still get the executed slice
    hs, _, _ = _plan_with(inpainted, 0.0, sync=True, published=seen_sync)
    assert (hs.length, hs.lookahead) == (ta, 0)  # synchronous: every chunk runs to its end, nothing to agree on


def test_time_offset_file_is_read_and_checked(tmp_path):
    good = tmp_path / "offsets.yaml"
    good.write_text(yaml.safe_dump({"camera_delay_s": 0.0437, "camera_correlation": 0.93, "command_delay_s": 0.012,
                                    "command_correlation": 0.9, "warnings": [], "convention": "x"}))
    assert load_time_offsets(good) == (0.0437, 0.012)
    no_cmd = tmp_path / "no_cmd.yaml"
    no_cmd.write_text(yaml.safe_dump({"camera_delay_s": -0.01, "command_delay_s": None}))
    assert load_time_offsets(no_cmd) == (-0.01, 0.0)
    cases = {
        "not_offsets.yaml": ("joints: []\n", "no camera_delay_s"),
        "text.yaml": ("camera_delay_s: soon\n", "camera_delay_s must be a number"),
        "nan.yaml": ("camera_delay_s: .nan\n", "camera_delay_s: .nan is not a finite number"),
        "huge.yaml": ("camera_delay_s: 0.01\ncommand_delay_s: 3.0\n", "command_delay_s = 3 s is implausible"),
        "broken.yaml": ("camera_delay_s: [\n", "cannot read it"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(UserError, match=message) as e:
            load_time_offsets(path)
        assert "\n" not in str(e.value) and "robot.time_offset_file" in str(e.value)


def _sim_cfg(tmp_path, **robot):
    data = load_example()
    data["rates"]["servo_hz"] = 250
    data["safety"]["start_ramp_time"] = 0.5
    data["telemetry"]["live"] = False
    data["robot"].update(robot)
    return parse_config(data, base=tmp_path)


def test_sim_run_applies_offsets_and_reports_camera_counters(tmp_path):
    offsets = tmp_path / "offsets.yaml"
    offsets.write_text(yaml.safe_dump({"camera_delay_s": 0.03, "command_delay_s": 0.02}))
    parts = build(_sim_cfg(tmp_path, time_offset_file=str(offsets)))
    assert (parts.camera_delay, parts.command_delay) == (0.03, 0.02)
    rt = Runtime(parts, 2.5, tmp_path / "tel.json", plot=False, live=False, console=None)
    assert rt.run() == 0, rt.tel.notes
    tel = json.loads((tmp_path / "tel.json").read_text())
    assert tel["config"]["camera_delay_s"] == 0.03 and tel["config"]["command_delay_s"] == 0.02
    assert tel["chunks"] >= 1 and tel["chunks_executed"] >= 1, tel["notes"]
    cam = tel["cameras"]["top"]  # by camera name, as in the config
    assert cam["feature"] == "observation.image"
    for key in ("frames", "drops", "reconnects", "reconnect_attempts", "timeouts", "frames_seen", "poll_errors"):
        assert isinstance(cam[key], int), key
    assert cam["frames"] >= cam["frames_seen"] > 10
    assert cam["reconnects"] == 0


def test_telemetry_record_camera_flattens_counters_without_shadowing():
    tel = Telemetry(250, "thread")
    tel.record_camera("wrist", "observation.images.wrist", 12, 1,
                      {"frames": 14, "drops": 2, "frames_seen": 99, "domain": object()})
    c = tel.to_dict()["cameras"]["wrist"]
    assert c["frames"] == 14 and c["drops"] == 2 and c["frames_seen"] == 12 and c["driver_frames_seen"] == 99
    assert isinstance(c["domain"], str)
    json.dumps(tel.to_dict())


def test_nan_chunk_is_refused_before_the_servo_loop_sees_it(small_policy):
    """A policy that outputs NaN: the planner's publish is refused with a line naming the field, and the ring
    (what the servo loop reads) never holds the chunk."""
    from edgedp.runtime.planner import RefusedChunk

    shape = tuple(small_policy.feature_shapes["observation.image"])
    ring, cam, window, hw = _world_window(0.0, image_shape=shape, n_obs=small_policy.n_obs_steps)
    window.state_key = small_policy.state_keys[0]
    _feed_frames(cam, hw)
    chunks = ChunkRing.create(capacity=small_policy.n_action_steps, dim=small_policy.action_dim, slots=4)

    def broken(global_cond, noise, **conditioning):
        out = small_policy.sample(global_cond, noise, **conditioning).clone()
        out[0, small_policy.n_obs_steps, 1] = float("nan")  # one action of the executed slice
        return out

    planner = Planner(small_policy, broken, window, chunks, Telemetry(250, "thread"), 0.1,
                      small_policy.n_action_steps, 2, clock=lambda: 101.0)
    try:
        with pytest.raises(RefusedChunk, match=r"chunk actions: non-finite value nan at step 1, joint 1"):
            planner.plan_once()
        assert chunks.newest_seq() == 0
        assert chunks.read_newest(np.zeros((chunks.spec.capacity, chunks.spec.dim))) is None
    finally:
        chunks.close()
        ring.close()


def test_telemetry_json_stays_valid_with_non_finite_figures(tmp_path):
    """A NaN join jump (what a NaN chunk used to produce) is written as null: the file is strict JSON."""
    tel = Telemetry(250, "thread")
    tel.servo = {"joins": [{"t": 1.0, "seq": 2, "position_jump": float("nan"), "velocity_jump": float("inf"),
                            "dropped_steps": 0}]}
    path = tmp_path / "tel.json"
    tel.write_json(path)

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    d = json.loads(path.read_text(), parse_constant=refuse)
    assert d["join_jump_max"]["position_rad"] is None and d["joins"][0]["velocity_jump"] is None
