"""Rate-loop schedule, interpolation, safety filter and chunk joins: numerics checked without timing."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgedp.runtime.clock import RateLoop
from edgedp.runtime.interpolation import TimedChunk
from edgedp.runtime.joins import Crossfade, Joiner, start_ramp
from edgedp.runtime.safety import SafetyFilter


class FakeClock:
    """Time advances only when the loop sleeps or when the test injects work."""

    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        assert s >= 0
        self.t += s + 20e-6  # every wake-up is 20 us late, as a real sleep would be


# ---------------------------------------------------------------- rate loop
def test_rate_loop_does_not_drift_and_skips_ahead_after_overrun():
    clk = FakeClock()
    loop = RateLoop(0.002, clock=clk, sleep=clk.sleep)
    t0 = loop.t0
    deadlines = []
    for k in range(10_000):
        if k == 5000:
            clk.t += 0.0105  # one tick's work takes 10.5 ms: 5 deadlines are missed
        deadlines.append(loop.wait())
    d = np.array(deadlines)
    # Every deadline lies on the original grid t0 + k*period: no accumulated drift from late wake-ups.
    k = np.round((d - t0) / 0.002)
    assert np.max(np.abs(d - (t0 + k * 0.002))) < 1e-9
    assert loop.overruns == 1
    assert loop.skipped == 5
    steps = np.diff(k)
    assert set(steps.tolist()) == {1.0, 6.0}  # one skip-ahead, otherwise consecutive
    assert abs(loop.last_error - 20e-6) < 1e-9
    # After 10_000 ticks plus the skip, the schedule is exactly where the grid says.
    assert d[-1] == pytest.approx(t0 + (10_000 - 1 + 5) * 0.002)


def test_rate_loop_late_by_less_than_a_period_is_not_an_overrun():
    clk = FakeClock()
    loop = RateLoop(0.01, clock=clk, sleep=clk.sleep)
    loop.wait()
    clk.t += 0.015  # work overran this period but the next deadline is < 1 period away
    loop.wait()
    assert loop.overruns == 0 and loop.skipped == 0


def test_rate_loop_rejects_bad_period():
    with pytest.raises(ValueError):
        RateLoop(0.0)


# ---------------------------------------------------------------- interpolation
def test_linear_interpolation_hits_knots_and_midpoints():
    c = TimedChunk(np.array([[0.0, 1.0], [1.0, 3.0], [3.0, 3.0]]), t0=10.0, dt=0.1)
    out = np.empty(2)
    assert c.evaluate(10.05, out) and np.allclose(out, [0.5, 2.0])
    assert c.evaluate(10.2, out) and np.allclose(out, [3.0, 3.0])
    assert not c.evaluate(10.3, out) and np.allclose(out, [3.0, 3.0])  # past the end: hold, not covered
    assert not c.evaluate(9.0, out) and np.allclose(out, [0.0, 1.0])


def test_cubic_interpolation_passes_through_knots_and_is_c1():
    vals = np.sin(np.linspace(0, 3, 8))[:, None] * np.array([1.0, -2.0])
    c = TimedChunk(vals, t0=0.0, dt=0.1, kind="cubic")
    out = np.empty(2)
    for j in range(8):
        c.evaluate(j * 0.1, out)
        assert np.allclose(out, vals[j])
    # Velocity is continuous across an interior knot.
    eps = 1e-6
    a, b, m = np.empty(2), np.empty(2), np.empty(2)
    c.evaluate(0.3 - eps, a), c.evaluate(0.3, m), c.evaluate(0.3 + eps, b)
    assert np.allclose((m - a) / eps, (b - m) / eps, atol=1e-3)
    # And it is close to the smooth signal it samples.
    c.evaluate(0.35, out)
    assert np.allclose(out, np.sin(3.5 * 3 / 7) * np.array([1.0, -2.0]), atol=5e-3)


def test_unknown_interpolation_refused():
    with pytest.raises(ValueError):
        TimedChunk(np.zeros((2, 1)), 0.0, 0.1, kind="spline")


# ---------------------------------------------------------------- safety filter
def _filter(h=0.002):
    return SafetyFilter([-1.0, -2.0], [1.0, 2.0], [2.0, 3.0], [20.0, 40.0], h)


def test_safety_bounds_hold_under_random_and_hostile_targets():
    rng = np.random.default_rng(0)
    f = _filter()
    out = np.empty(2)
    prev_q, prev_v = f.q.copy(), f.v.copy()
    for k in range(20_000):
        r = rng.random()
        if r < 0.01:
            target = np.array([np.nan, 0.5])
        elif r < 0.02:
            target = np.array([np.inf, -np.inf])
        elif r < 0.3:
            target = rng.uniform(-10, 10, 2)  # far outside the limits
        else:
            target = np.sin(k * 0.01 + np.array([0.0, 1.0])) * 1.5
        f.apply(target, out)
        v = (out - prev_q) / f.h
        assert np.all(out >= f.lo - 1e-12) and np.all(out <= f.hi + 1e-12)
        assert np.all(np.abs(v) <= f.vmax + 1e-9)
        assert np.all(np.abs(v - prev_v) <= f.amax * f.h * (1 + 1e-9) + 1e-12)
        prev_q, prev_v = out.copy(), v
    assert f.nonfinite > 0 and f.clamps > 0


def test_nan_target_holds_and_decelerates():
    f = _filter()
    out = np.empty(2)
    for k in range(300):  # get moving along a ramp at 0.5 rad/s
        f.apply(np.array([0.001, 0.001]) * k - 0.1, out)
    moving = f.v.copy()
    assert np.any(np.abs(moving) > 0.1)
    positions = []
    for _ in range(500):
        f.apply(np.array([np.nan, np.nan]), out)
        positions.append(out.copy())
    # It stopped (velocity decays to zero at the acceleration limit) and stayed put.
    assert np.allclose(f.v, 0.0, atol=1e-12)
    assert np.allclose(positions[-1], positions[-2])


def test_safety_tracks_a_feasible_trajectory_exactly():
    f = _filter()
    out = np.empty(2)
    t = np.arange(2000) * f.h
    # A cosine starts at rest, as the filter does after reset().
    traj = 0.3 * np.cos(2 * np.pi * 0.5 * t)[:, None] * np.array([1.0, 1.0])
    f.reset(traj[0])
    for k in range(1, 2000):
        f.apply(traj[k], out)
    assert np.allclose(out, traj[-1], atol=1e-9)
    assert f.clamps == 0


def test_arm_outside_limits_is_walked_back_not_snapped():
    f = _filter()
    f.reset(np.array([1.5, 0.0]))
    out = np.empty(2)
    f.apply(np.array([0.0, 0.0]), out)
    assert out[0] > 1.49  # moved by at most one tick of acceleration
    for _ in range(2000):
        f.apply(np.array([0.0, 0.0]), out)
    assert abs(out[0]) < 1e-6


# ---------------------------------------------------------------- joins
def _chunks():
    t = np.arange(8) * 0.1
    old = TimedChunk(np.stack([np.sin(t), np.cos(t)], 1), t0=0.0, dt=0.1, seq=1)
    t2 = 0.3 + np.arange(8) * 0.1
    new = TimedChunk(np.stack([np.sin(t2) + 0.2, np.cos(t2) - 0.15], 1), t0=0.3, dt=0.1, seq=2)
    return old, new


def _command_series(plan, t_from, t_to, h):
    out = np.empty(plan.dim)
    qs = []
    for t in np.arange(t_from, t_to, h):
        plan.evaluate(t, out)
        qs.append(out.copy())
    return np.array(qs)


def test_crossfade_join_is_smoother_than_a_hard_switch():
    h = 0.002
    old, new = _chunks()
    t_s = 0.41
    hard = Joiner("switch", 0, 0.0, h)
    hard.adopt(old, new, t_s)
    fade = Joiner("crossfade", 3, 0.0, h)
    plan = fade.adopt(old, new, t_s)
    (hp, hv), (fp, fv) = hard.max_jumps(), fade.max_jumps()
    assert hp > 0.14 and fp < 0.01 * hp and fv < 0.05 * hv
    # Measured directly on the command series too: the largest per-tick step stays small.
    before = _command_series(old, t_s - 0.05, t_s, h)
    after = _command_series(plan, t_s, t_s + 0.5, h)
    steps = np.abs(np.diff(np.concatenate([before, after]), axis=0)).max()
    assert steps < 0.01
    assert hard.joins[0].dropped_steps == 2  # the new chunk's steps at 0.3 and 0.4 were already past


def test_crossfade_ends_on_the_new_chunk():
    old, new = _chunks()
    plan = Joiner("crossfade", 3, 0.0, 0.002).adopt(old, new, 0.41)
    out, ref = np.empty(2), np.empty(2)
    plan.evaluate(0.41 + 0.3 + 1e-9, out)
    new.evaluate(0.41 + 0.3 + 1e-9, ref)
    assert np.allclose(out, ref)
    assert plan.simplify(0.8) is new


@pytest.mark.parametrize("method", ["crossfade", "ensemble", "switch", "inpaint"])
def test_a_chunk_that_arrives_before_it_is_due_waits_for_its_first_step(method):
    """policy.action_lead_periods times a chunk's first step after its observation, so a fast sampler delivers it
    early. The old plan must keep running (and cover) until the new chunk's first step is due; joining at arrival
    followed a chunk that did not cover "now" yet, and the servo braked (uncovered) at every such join."""
    ramp = np.linspace(0.0, 1.0, 11)[:, None] * np.array([[1.0, -0.5]])
    old = TimedChunk(ramp, t0=0.0, dt=0.1, kind="cubic", seq=1)              # covers 0 .. 1.0
    new = TimedChunk(ramp[5:] + 0.01, t0=0.5, dt=0.1, kind="cubic", seq=2)   # first step due at 0.5
    plan = Joiner(method, 3, 0.5, 0.002).adopt(old, new, 0.42)              # arrives 80 ms early
    got, want = np.empty(2), np.empty(2)
    for t in np.arange(0.42, 0.499, 0.002):
        assert plan.evaluate(t, got), f"{method}: uncovered at t={t:.3f}, before the new chunk's first step"
        old.evaluate(t, want)
        np.testing.assert_allclose(got, want, atol=1e-12)
    assert all(plan.evaluate(t, got) for t in np.arange(0.5, 1.0, 0.002))
    plan.evaluate(0.95, got)
    new.evaluate(0.95, want)
    if method != "ensemble":  # ensembling averages with the old chunk where both cover
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_start_ramp_waits_for_a_first_chunk_that_is_not_due_yet():
    """The servo loop's first chunk with an action lead: the arm stays where it is until the chunk's first step."""
    from edgedp.runtime.control import Control
    from edgedp.runtime.ring import ChunkRing
    from edgedp.runtime.servo_loop import ServoLoop, ServoParams

    chunks, states, control = ChunkRing.create(8, 2), ChunkRing.create(64, 3, slots=3, timed=False), Control.create()
    try:
        params = ServoParams(servo_hz=500, lower=[-3, -3], upper=[3, 3], max_velocity=[9, 9],
                             max_acceleration=[99, 99], interpolation="cubic", realtime_priority=0)
        loop = ServoLoop(None, chunks, states, control, params)
        loop.cmd[:] = [0.2, -0.1]  # the pose read at connect (ServoLoop.connect sets both)
        loop.safety.reset(loop.cmd.copy())
        chunks.publish(np.ones((8, 2)), t0=10.1, dt=0.1)
        for k in range(50):  # 10.00 .. 10.098: before the chunk's first step
            loop.update(10.0 + 0.002 * k)
            assert loop.uncovered == 0 and not loop.holding
            np.testing.assert_allclose(loop.cmd, [0.2, -0.1], atol=1e-12)
        loop.update(10.3)
        assert loop.uncovered == 0 and loop.cmd[0] > 0.2  # ramping into the chunk
    finally:
        for x in (chunks, states, control):
            x.close()


def test_ensemble_weights_oldest_most():
    j = Joiner("ensemble", 0, 0.5, 0.002)
    a = TimedChunk(np.zeros((5, 1)), t0=0.0, dt=0.1, seq=1)
    b = TimedChunk(np.ones((5, 1)), t0=0.2, dt=0.1, seq=2)
    first = j.adopt(None, a, 0.0)
    plan = j.adopt(first, b, 0.21)
    out = np.empty(1)
    plan.evaluate(0.3, out)  # covered by both: weights 1 (old) and exp(-0.5) (new)
    w = math.exp(-0.5)
    assert out[0] == pytest.approx(w / (1 + w))
    plan.evaluate(0.6, out)  # only the new chunk covers this
    assert out[0] == pytest.approx(1.0)
    assert len(j.joins) == 1


def test_start_ramp_never_jumps():
    q0 = np.array([0.8, -0.5])
    first = TimedChunk(np.array([[-0.6, 0.7]] * 10), t0=5.0, dt=0.1)
    plan = start_ramp(q0, first, 5.0, 1.0)
    series = _command_series(plan, 5.0, 6.0, 0.002)
    assert np.allclose(series[0], q0)
    assert np.abs(np.diff(series, axis=0)).max() < 1.5 * 1.4 * 0.002 / 1.0 * 1.5 + 1e-9
    assert isinstance(plan, Crossfade)


# ---------------------------------------------------------------- live status (control block)
def test_live_status_travels_by_name_through_shared_memory():
    """Every counter comes back under its own name (a positional mix-up would swap them)."""
    from edgedp.runtime.control import LIVE, Control, LiveStatus

    values = {name: (i + 1) * (1.5 if name.endswith("_us") else 1) for i, name in enumerate(LIVE)}
    sent = LiveStatus(**{k: (float(v) if k.endswith("_us") else int(v)) for k, v in values.items()})
    writer = Control.create()
    reader = Control.attach(writer.name)
    try:
        writer.write_live(sent)
        got = reader.read_live()
        assert got == sent
        assert isinstance(got.ticks, int) and isinstance(got.period_error_us, float)
    finally:
        reader.close()
        writer.close()
