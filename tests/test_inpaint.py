"""Real-time inpainting and warm start: inside the sampler for every kind, through the whole-loop graph
(torch.export, ONNX run by onnxruntime), through the compile backends, and in the planner's conditioner and
the servo's join."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgedp.runtime.conditioning import ChunkConditioner
from edgedp.runtime.interpolation import Constant, TimedChunk
from edgedp.runtime.joins import Crossfade, Deferred, Joiner
from models.inpainting import overlap_weights, shift_chunk
from models.sampler import Sampler
from models.schedulers import SchedulerSpec

KINDS = ("ddim", "ddpm", "dpmsolver++", "unipc")


class Den(nn.Module):
    """Small deterministic denoiser with the U-Net's call signature; records the timesteps it is called with."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.mix = nn.Conv1d(2, 2, 3, padding=1)
        with torch.no_grad():
            for p in self.mix.parameters():
                p.copy_(0.4 * torch.randn(p.shape, generator=gen))
        self.emb = nn.Parameter(0.1 * torch.randn(100, 2, generator=gen))
        self.calls: list[int] = []

    def forward(self, x, t, cond):
        if not (torch.compiler.is_compiling() or torch.jit.is_tracing() or isinstance(t, torch.fx.Proxy)):
            self.calls.append(int(t[0]))
        h = self.mix(x.transpose(1, 2)).transpose(1, 2)
        return torch.tanh(h + self.emb[t][:, None, :] + cond[:, None, :2])


def _inputs(batch=1, horizon=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, horizon, 2, generator=gen)
    cond = torch.randn(batch, 4, generator=gen)
    prefix = 0.8 * torch.sin(torch.linspace(0, 3, horizon))[None, :, None].repeat(batch, 1, 2)
    return noise, cond, prefix


def _vnoise(sampler, noise):
    if not sampler.needs_variance_noise:
        return None
    return torch.randn((sampler.num_steps, *noise.shape), generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", ["replace", "guided"])
def test_decided_steps_come_out_as_given_and_the_rest_is_free(kind, form):
    spec = SchedulerSpec(kind=kind)
    s = Sampler(Den(), spec, 6, inpaint=form)
    noise, cond, prefix = _inputs()
    v = _vnoise(s, noise)
    with torch.no_grad():
        out = s(noise, cond, v, prefix=prefix, n_fixed=torch.tensor([5]), n_overlap=torch.tensor([9]))
        free = Sampler(s.denoiser, spec, 6)(noise, cond, v)
    torch.testing.assert_close(out[:, :5], prefix[:, :5], rtol=0, atol=1e-6)
    assert float((out[:, 6:] - prefix[:, 6:]).abs().max()) > 0.05  # the model still decides the rest
    assert float((out - free).abs().max()) > 1e-3                  # and the prefix changed what it decided


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("form", ["replace", "guided"])
def test_an_empty_prefix_changes_nothing(kind, form):
    """n_fixed = n_overlap = 0 (the first chunk) must give exactly the unconditioned chunk: one graph for both."""
    spec = SchedulerSpec(kind=kind)
    noise, cond, prefix = _inputs()
    s = Sampler(Den(), spec, 5, inpaint=form)
    v = _vnoise(s, noise)
    zero = torch.zeros(1, dtype=torch.int64)
    with torch.no_grad():
        got = s(noise, cond, v, prefix=prefix, n_fixed=zero, n_overlap=zero)
        want = s(noise, cond, v)
    assert torch.equal(got, want)


def test_guided_mask_is_rtc_soft_mask_and_replace_is_hard():
    idx = torch.arange(10)
    hard = overlap_weights("replace", idx, torch.tensor([3]), torch.tensor([8]))[0, :, 0]
    assert hard.tolist() == [1.0] * 3 + [0.0] * 7
    soft = overlap_weights("guided", idx, torch.tensor([3, 0]), torch.tensor([8, 0]))[..., 0]
    assert soft[0, :3].tolist() == [1.0] * 3 and soft[0, 8:].tolist() == [0.0, 0.0]
    c = (8 - np.arange(3, 8)) / (8 - 3 + 1)
    np.testing.assert_allclose(soft[0, 3:8].numpy(), c * np.expm1(c) / (math.e - 1), rtol=1e-6)
    assert all(a > b for a, b in zip(soft[0, 2:9].tolist(), soft[0, 3:9].tolist()))  # decays over the overlap
    assert soft[1].abs().sum() == 0


def test_guided_pulls_the_overlap_towards_the_previous_plan():
    spec = SchedulerSpec(kind="ddim")
    noise, cond, prefix = _inputs(seed=4)
    den = Den()
    kw = dict(prefix=prefix, n_fixed=torch.tensor([3]), n_overlap=torch.tensor([10]))
    with torch.no_grad():
        guided = Sampler(den, spec, 8, inpaint="guided")(noise, cond, **kw)
        hard = Sampler(den, spec, 8, inpaint="replace")(noise, cond, **kw)
    d_guided = (guided - prefix)[0, 3:6].abs().mean()
    d_hard = (hard - prefix)[0, 3:6].abs().mean()
    assert d_guided < d_hard


@pytest.mark.parametrize("kind", KINDS)
def test_warm_start_runs_the_last_steps_from_the_noised_previous_chunk(kind):
    spec = SchedulerSpec(kind=kind)
    den = Den()
    s = Sampler(den, spec, 10, warm_start_level=0.3)
    noise, cond, prefix = _inputs()
    v = _vnoise(s, noise)
    with torch.no_grad():
        s(noise, cond, v)
        cold_calls = list(den.calls)
        den.calls.clear()
        first_input = {}
        def keep_first(module, args):
            first_input.setdefault("x", args[0].clone())

        h = den.register_forward_pre_hook(keep_first)
        out = s(noise, cond, v, init=prefix)
        h.remove()
    assert s.num_warm_steps == 3 and len(den.calls) == 3 and len(cold_calls) == 10
    assert den.calls == cold_calls[7:]  # the same timesteps, the early ones skipped
    a, b = (s.level_a[7], s.level_b[7]) if not s.multistep else (s.warm_level_a[0], s.warm_level_b[0])
    torch.testing.assert_close(first_input["x"], a * prefix + b * noise)
    assert out.shape == noise.shape
    with pytest.raises(ValueError, match="without warm start"):
        Sampler(den, spec, 10)(noise, cond, v, init=prefix)


def test_inputs_are_checked():
    s = Sampler(Den(), SchedulerSpec(kind="ddim"), 4, inpaint="replace")
    noise, cond, prefix = _inputs()
    with pytest.raises(ValueError, match="n_fixed"):
        s(noise, cond, prefix=prefix)
    with pytest.raises(ValueError, match="without inpainting"):
        Sampler(s.denoiser, SchedulerSpec(kind="ddim"), 4)(noise, cond, prefix=prefix, n_fixed=torch.tensor([1]))
    with pytest.raises(ValueError, match="inpaint form"):
        Sampler(s.denoiser, SchedulerSpec(kind="ddim"), 4, inpaint="blend")


@pytest.mark.parametrize("kind", ["ddim", "dpmsolver++", "unipc"])
@pytest.mark.parametrize("form", ["replace", "guided"])
def test_whole_loop_with_inpainting_exports_to_onnx_and_matches_eager(kind, form, tmp_path):
    """The K-step loop with prefix, n_fixed, n_overlap and init as graph inputs: one ONNX graph, same numbers."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (onnx extra) is not installed")
    pytest.importorskip("onnx", reason="onnx (onnx extra) is not installed")

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = Sampler(Den(), SchedulerSpec(kind=kind), 6, inpaint=form, warm_start_level=0.5)

        def forward(self, noise, cond, init, prefix, n_fixed, n_overlap):
            return self.s(noise, cond, None, init=init, prefix=prefix, n_fixed=n_fixed, n_overlap=n_overlap)

    loop = Loop().eval()
    noise, cond, prefix = _inputs()
    args = (noise, cond, prefix.flip(1), prefix, torch.tensor([4]), torch.tensor([9]))
    path = tmp_path / "loop.onnx"
    torch.onnx.export(loop, args, str(path), opset_version=17, dynamo=False,
                      input_names=["noise", "cond", "init", "prefix", "n_fixed", "n_overlap"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    for n_fixed, n_overlap in ((4, 9), (0, 0), (7, 7)):  # d is a tensor input: one graph for every delay
        feed = dict(zip(["noise", "cond", "init", "prefix", "n_fixed", "n_overlap"],
                        [a.numpy() for a in args[:4]] + [np.array([n_fixed]), np.array([n_overlap])]))
        got = sess.run(None, {k: feed[k] for k in names})[0]
        with torch.no_grad():
            want = loop(*args[:4], torch.tensor([n_fixed]), torch.tensor([n_overlap]))
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=2e-5)


def test_whole_loop_with_inpainting_survives_torch_export():
    s = Sampler(Den(), SchedulerSpec(kind="unipc"), 5, inpaint="guided").eval()
    noise, cond, prefix = _inputs()

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = s

        def forward(self, noise, cond, prefix, n_fixed, n_overlap):
            return self.s(noise, cond, None, prefix=prefix, n_fixed=n_fixed, n_overlap=n_overlap)

    ep = torch.export.export(Loop(), (noise, cond, prefix, torch.tensor([3]), torch.tensor([8])), strict=False)
    for d in (0, 3, 6):
        with torch.no_grad():
            got = ep.module()(noise, cond, prefix, torch.tensor([d]), torch.tensor([d + 4]))
            want = s(noise, cond, None, prefix=prefix, n_fixed=torch.tensor([d]), n_overlap=torch.tensor([d + 4]))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- the runtime side


def test_shift_chunk_shifts_and_pads_with_the_last_action():
    v = np.arange(12, dtype=float).reshape(6, 2)
    out = shift_chunk(v, 2)
    np.testing.assert_array_equal(out[:4], v[2:])
    np.testing.assert_array_equal(out[4:], [v[-1], v[-1]])
    np.testing.assert_allclose(shift_chunk(v, 0.5)[0], 0.5 * (v[0] + v[1]))
    with pytest.raises(ValueError):
        shift_chunk(v[0], 1)


class _Policy:
    """What the conditioner reads from a policy: sizes, its options, and the action normalizer."""

    horizon, action_dim, device, dtype = 16, 2, torch.device("cpu"), torch.float32

    def __init__(self, options):
        self.sampler_options = options
        self.spec = type("S", (), {"action_key": "action"})()
        self.normalizers = {"action": lambda x: 2 * x}


def test_conditioner_only_when_configured_and_first_chunk_is_empty():
    assert ChunkConditioner.for_policy(_Policy({}), 0.1, 1, 8) is None
    c = ChunkConditioner.for_policy(_Policy({"inpaint": "replace", "warm_start_level": 0.5}), 0.1, 1, 8)
    first = c.inputs(10.0, 10.3)
    assert "init" not in first and int(first["n_fixed"]) == 0 and int(first["n_overlap"]) == 0
    assert first["prefix"].shape == (1, 16, 2)


def test_conditioner_decides_what_runs_during_inference_on_the_previous_grid():
    c = ChunkConditioner(_Policy({}), 0.1, first=1, n_action_steps=8, warm=True, inpaint=True)
    prev = np.stack([np.arange(16.0), -np.arange(16.0)], axis=1)
    c.remember(prev, 5.0)
    t0 = c.snap(5.318)
    assert t0 == pytest.approx(5.3)  # on the previous chunk's grid: 3 steps later
    out = c.inputs(t0, t0 + 0.25)   # switch expected 0.25 s after index `first`: d = 3
    assert int(out["n_fixed"]) == 1 + 3 + ChunkConditioner.MARGIN
    assert int(out["n_overlap"]) == 13  # the previous chunk predicts 13 of the new indices
    np.testing.assert_allclose(out["prefix"][0, :, 0].numpy(), 2 * np.minimum(np.arange(16) + 3, 15))
    torch.testing.assert_close(out["init"], out["prefix"])
    # a slow planner: the switch is past the previous executed slice; only that slice is decided, so the new
    # chunk always has steps of its own to execute (else the arm would never move again)
    slow = c.inputs(t0, t0 + 2.0)
    assert int(slow["n_fixed"]) == 1 + 8 - 3


def test_inpaint_join_switches_directly_keeps_a_ramp_and_fades_from_a_hold():
    j = Joiner("inpaint", crossfade_steps=3, ensemble_decay=0.0, servo_period=0.002)
    old = TimedChunk(np.linspace(0, 1, 8)[:, None].repeat(2, 1), 0.0, 0.1, "cubic", 1)
    same = TimedChunk(np.linspace(0, 1, 8)[:, None].repeat(2, 1)[2:], 0.2, 0.1, "cubic", 2)
    assert j.adopt(old, same, 0.32) is same  # past the new chunk's second knot: switched to directly
    assert j.joins[-1].position_jump < 1e-12 and j.joins[-1].velocity_jump < 1e-9
    early = j.adopt(old, same, 0.25)  # inside its first segment: switched at its second knot (0.3)
    assert isinstance(early, Deferred) and early.new is same and early.t_switch == pytest.approx(0.3)
    assert j.joins[-1].chunk_velocity == pytest.approx((1 / 7) / 0.1)
    ramp = Crossfade(Constant(np.zeros(2)), old, 0.0, 1.0)
    kept = j.adopt(ramp, same, 0.3)
    assert isinstance(kept, Crossfade) and kept.old is ramp.old and kept.new is same
    faded = j.adopt(Constant(np.full(2, 0.7)), same, 0.3)
    assert isinstance(faded, Crossfade) and j.joins[-1].position_jump < 0.01
    with pytest.raises(ValueError, match="inpaint"):
        Joiner("blend", 3, 0.0, 0.002)


def test_inpaint_join_that_would_jerk_is_cross_faded_and_counted():
    """A chunk that arrives later than the planner assumed is switched to where it was not made to agree: that
    join is cross-faded (and flagged) instead of stepping the command; an agreeing chunk still switches directly."""
    j = Joiner("inpaint", crossfade_steps=3, ensemble_decay=0.0, servo_period=0.002)
    ramp = np.linspace(0, 1, 8)[:, None].repeat(2, 1)
    old = TimedChunk(ramp, 0.0, 0.1, "cubic", 1)
    late = TimedChunk(ramp[2:] + 0.05, 0.2, 0.1, "cubic", 2)  # disagrees by 0.05 rad where the servo switches
    direct_jump = 0.05 / 0.002  # 25 rad/s, against the plan's own 1.43 rad/s steps
    plan = j.adopt(old, late, 0.25)
    assert isinstance(plan, Crossfade) and plan.new is late
    stats = j.joins[-1]
    assert stats.inpaint_fallback and stats.direct_velocity_jump == pytest.approx(direct_jump, rel=1e-6)
    assert stats.velocity_jump <= stats.chunk_velocity  # what the servo follows is smooth
    agreeing = TimedChunk(ramp[3:], 0.3, 0.1, "cubic", 3)
    assert j.adopt(TimedChunk(ramp, 0.0, 0.1, "cubic", 1), agreeing, 0.42) is agreeing
    assert not j.joins[-1].inpaint_fallback


def test_inpaint_join_during_a_fade_is_checked_against_what_the_fade_goes_into():
    """A chunk arriving while a ramp or an earlier fallback fade runs: swapping the fade's target is seamless only
    if the chunk agrees with that target; one that does not is faded into from the blend, never swapped in."""
    j = Joiner("inpaint", crossfade_steps=3, ensemble_decay=0.0, servo_period=0.002)
    ramp = np.linspace(0, 1, 8)[:, None].repeat(2, 1)
    target = TimedChunk(ramp, 0.0, 0.1, "cubic", 1)
    fade = Crossfade(Constant(np.zeros(2)), target, 0.0, 1.0)
    agreeing = TimedChunk(ramp[2:], 0.2, 0.1, "cubic", 2)
    kept = j.adopt(fade, agreeing, 0.25)
    assert isinstance(kept, Crossfade) and kept.old is fade.old and kept.new is agreeing
    assert not j.joins[-1].inpaint_fallback
    off = TimedChunk(ramp[2:] + 0.2, 0.2, 0.1, "cubic", 3)  # 0.2 rad away from the fade's target
    plan = j.adopt(fade, off, 0.25)
    assert j.joins[-1].inpaint_fallback and plan.old is not fade.old
    assert j.joins[-1].velocity_jump <= j.joins[-1].chunk_velocity


def test_inpaint_join_inside_the_first_segment_waits_for_the_second_knot():
    """Every knot agrees, but the new chunk's first knot has a one-sided cubic tangent: switching inside its first
    segment would jerk; switching at its second knot (where its segments read only agreeing knots) does not."""
    values = np.sin(np.linspace(0, 3, 10))[:, None].repeat(2, 1)
    old = TimedChunk(values, 0.0, 0.1, "cubic", 1)
    new = TimedChunk(values[3:], 0.3, 0.1, "cubic", 2)  # the same knots from 0.3 s on
    j = Joiner("inpaint", crossfade_steps=3, ensemble_decay=0.0, servo_period=0.002)
    _, hard_jump = j.measure(old, new, 0.33)
    assert hard_jump > 1e-3  # a direct switch inside the first segment steps the velocity
    plan = j.adopt(old, new, 0.33)
    assert isinstance(plan, Deferred) and plan.t_switch == pytest.approx(0.4)
    assert j.joins[-1].velocity_jump < 1e-6 and not j.joins[-1].inpaint_fallback
    out_a, out_b = np.zeros(2), np.zeros(2)
    for t in np.linspace(0.33, 0.8, 48):  # the servo follows the old plan, then the new one, without a seam
        plan.evaluate(t, out_a)
        old.evaluate(t, out_b)
        assert np.allclose(out_a, out_b, atol=1e-12)
    assert plan.simplify(0.45) is new


# ------------------------------------------------------------ lookahead knots (the executed slice's last tangents)


def _smooth(n=16, dim=2):
    t = np.linspace(0.0, 2.5, n)
    return np.stack([np.sin(t), 0.5 * np.cos(1.3 * t)], axis=1)[:, :dim]


def test_timed_chunk_with_lookahead_ends_at_the_executed_end_with_two_sided_tangents():
    """Lookahead rows shape the tangents and are never executed: up to the last executed knot the trajectory is the
    full chunk's (two-sided tangent there), after it the plan is over (covered=False, last executed knot held)."""
    rows = _smooth(10)
    full = TimedChunk(rows, 2.0, 0.1, "cubic", 1)
    ahead = TimedChunk(rows, 2.0, 0.1, "cubic", 1, lookahead=2)
    bare = TimedChunk(rows[:8], 2.0, 0.1, "cubic", 1)  # the same executed slice without lookahead (as before)
    assert ahead.n == 8 and ahead.end_time() == pytest.approx(2.7) and ahead.values.shape == (8, 2)
    np.testing.assert_allclose(ahead.tangents[-1], 0.5 * (rows[8] - rows[6]))  # two-sided
    np.testing.assert_allclose(bare.tangents[-1], rows[7] - rows[6])           # one-sided
    a, b, c = np.empty(2), np.empty(2), np.empty(2)
    for t in np.linspace(2.0, 2.699, 71):
        assert ahead.evaluate(t, a) and full.evaluate(t, b)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    bare.evaluate(2.65, c)
    ahead.evaluate(2.65, a)
    assert float(np.abs(a - c).max()) > 1e-4  # without lookahead the last segment is another curve
    assert not ahead.evaluate(2.75, a)  # past the last executed knot: not covered (the servo holds) ...
    np.testing.assert_array_equal(a, rows[7])  # ... at that knot, never moving on to a lookahead row
    lin = TimedChunk(rows, 2.0, 0.1, "linear", 1, lookahead=2)
    assert lin.n == 8 and lin.tangents is None and lin.end_time() == pytest.approx(2.7)
    for bad in (10, -1):
        with pytest.raises(ValueError, match="lookahead"):
            TimedChunk(rows, 2.0, 0.1, "cubic", 1, lookahead=bad)


def test_lookahead_and_advance_follow_the_join_and_the_horizon():
    """MARGIN lookahead knots only with inpainting (crossfade/ensemble chunks are the executed slice alone), fewer
    when the horizon ends sooner; the replan advance is one period with them, MARGIN + 1 without (as before)."""
    dt, m = 0.1, ChunkConditioner.MARGIN
    assert ChunkConditioner.lookahead_for(_Policy({}), 1, 8) == 0
    assert ChunkConditioner.lookahead_for(_Policy({"warm_start_level": 0.5}), 1, 8) == 0
    assert ChunkConditioner.lookahead_for(_Policy({"inpaint": "guided"}), 1, 8) == m
    assert ChunkConditioner.lookahead_for(_Policy({"inpaint": "guided"}), 1, 14) == 1  # horizon 16: one left
    assert ChunkConditioner.lookahead_for(_Policy({"inpaint": "guided"}), 1, 15) == 0
    c = ChunkConditioner(_Policy({"inpaint": "replace"}), dt, first=1, n_action_steps=8, warm=False, inpaint=True)
    assert c.lookahead == m and c.replan_advance == pytest.approx(dt)
    short = ChunkConditioner(_Policy({"inpaint": "replace"}), dt, first=1, n_action_steps=15, warm=False,
                             inpaint=True)
    assert short.lookahead == 0 and short.replan_advance == pytest.approx((m + 1) * dt)
    warm = ChunkConditioner(_Policy({"warm_start_level": 0.5}), dt, first=1, n_action_steps=8, warm=True,
                            inpaint=False)
    assert warm.lookahead == 0 and warm.replan_advance == 0.0


def test_conditioner_decides_up_to_the_previous_lookahead_knots():
    """n_fixed is capped at the previous chunk's executed slice + the lookahead knots it published with it (old
    knots, all of them), never at knots it did not publish."""
    prev = np.stack([np.arange(16.0), -np.arange(16.0)], axis=1)
    c = ChunkConditioner(_Policy({}), 0.1, first=1, n_action_steps=8, warm=False, inpaint=True)
    c.remember(prev, 5.0, lookahead=ChunkConditioner.MARGIN)
    t0 = c.snap(5.3)
    slow = c.inputs(t0, t0 + 2.0)  # the switch far past the previous slice: everything it published is decided
    assert int(slow["n_fixed"]) == 1 + 8 - 3 + ChunkConditioner.MARGIN
    late = c.inputs(t0, t0 + 0.4)  # switch at the previous chunk's last executed knot: its margin is lookahead
    assert int(late["n_fixed"]) == 1 + 4 + ChunkConditioner.MARGIN == 1 + 8 - 3 + 1
    c.remember(prev, 5.0)  # a chunk published without lookahead (synchronous mode): capped at its executed slice
    assert int(c.inputs(t0, t0 + 2.0)["n_fixed"]) == 1 + 8 - 3


def _published(actions, first, n, lookahead, t0, seq):
    return TimedChunk(actions[first: first + n + lookahead], t0, 0.1, "cubic", seq, lookahead=lookahead)


@pytest.mark.parametrize("t_s", [5.55, 5.61, 5.65, 5.69, 5.697])  # (the join is measured one servo period on)
def test_switch_in_the_old_slices_last_segment_is_seamless_with_lookahead_knots(t_s):
    """The whole chain without a sampler: the old chunk is published with its lookahead knots, the new chunk agrees
    with it on exactly the indices the conditioner decides and is something else after them. A switch anywhere up
    to the old slice's last executed knot is then seamless, and the servo switches directly. Without lookahead
    (old last tangent one-sided, decided capped at the executed slice) a switch in that last segment jerks."""
    first, ta, m, dt = 1, 8, ChunkConditioner.MARGIN, 0.1
    prev = _smooth(16)

    def new_chunk(lookahead_prev):
        c = ChunkConditioner(_Policy({}), dt, first=first, n_action_steps=ta, warm=False, inpaint=True)
        c.remember(prev, 5.0, lookahead_prev)
        t0 = c.snap(5.3)
        n_fixed = int(c.inputs(t0, 5.7)["n_fixed"])  # planned to arrive at the old slice's last knot (no advance)
        new = shift_chunk(prev, 3) + 0.3 * np.linspace(0, 1, 16)[:, None] ** 2  # its own plan ...
        new[:n_fixed] = shift_chunk(prev, 3)[:n_fixed]                           # ... after the decided knots
        return t0, n_fixed, new

    t0, n_fixed, new = new_chunk(m)
    assert n_fixed == first + 4 + m  # the decided margin reaches into the old lookahead knots
    old = _published(prev, first, ta, m, 5.0, 1)
    j = Joiner("inpaint", crossfade_steps=3, ensemble_decay=0.0, servo_period=0.002)
    chunk = _published(new, first, ta, m, t0, 2)
    assert j.adopt(old, chunk, t_s) is chunk  # switched to directly
    assert j.joins[-1].velocity_jump < 1e-6 and j.joins[-1].position_jump < 1e-9
    assert not j.joins[-1].inpaint_fallback

    _, n_fixed0, new0 = new_chunk(0)  # before lookahead knots: same timing, capped decided range
    assert n_fixed0 == first + ta - 3
    old0 = _published(prev, first, ta, 0, 5.0, 1)
    _, jump = j.measure(old0, _published(new0, first, ta, 0, t0, 3), t_s)
    if t_s > 5.6:  # the last executed segment: it reads a knot the old chunk did not publish
        assert jump > 1e-2
    else:  # a segment earlier it was seamless already: that is what MARGIN + 1 periods of advance bought
        assert jump < 1e-6


def test_servo_loop_executes_only_the_executed_rows_of_a_chunk_with_lookahead():
    """The servo side builds its plan from the ring header: tangents from every row, the plan ending at the last
    executed knot (real ServoLoop, ring and control block; the bus is never touched before connect)."""
    from edgedp.runtime.control import Control
    from edgedp.runtime.ring import ChunkRing
    from edgedp.runtime.servo_loop import ServoLoop, ServoParams

    rows = _smooth(10)
    chunks, states, control = ChunkRing.create(10, 2), ChunkRing.create(64, 3, slots=3, timed=False), Control.create()
    try:
        params = ServoParams(servo_hz=500, lower=[-3, -3], upper=[3, 3], max_velocity=[9, 9], max_acceleration=[99, 99],
                             interpolation="cubic", join="inpaint", realtime_priority=0)
        loop = ServoLoop(None, chunks, states, control, params)
        chunks.publish(rows, t0=10.0, dt=0.1, lookahead=2)
        loop.update(10.0)
        plan = loop.plan.new  # the start ramp fades into the chunk
        assert isinstance(plan, TimedChunk) and plan.n == 8 and plan.end_time() == pytest.approx(10.7)
        full, got, want = TimedChunk(rows, 10.0, 0.1, "cubic"), np.empty(2), np.empty(2)
        for t in (10.05, 10.62, 10.699):
            assert plan.evaluate(t, got) and full.evaluate(t, want)
            np.testing.assert_allclose(got, want, atol=1e-12)
        assert not plan.evaluate(10.72, got)
    finally:
        for x in (chunks, states, control):
            x.close()
