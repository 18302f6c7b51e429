"""Joining a new chunk onto the one being executed, and measuring how smooth the join was.

A new chunk is planned from a newer observation, so it rarely agrees exactly with the old one at the switch
time. Switching hard would step the commanded position (and velocity) by the disagreement. Two remedies:

* crossfade (default): for `steps` action periods after the switch the command is
  (1 - w) old(t) + w new(t) with w a smoothstep from 0 to 1; w and dw/dt are 0 at the switch, so position
  and velocity stay continuous whatever the two chunks say.
* ensemble (ACT temporal ensembling): every chunk still covering a time votes for it with weight
  exp(-decay * i), i = 0 for the oldest; the new plan is the weighted mean on the new chunk's time grid.
* inpaint (real-time inpainting, models/inpainting.py): the planner made the new chunk agree with the old
  one on every step that runs while it was being computed, so the servo switches to it directly: no blend,
  and nothing of the new plan is delayed or averaged away. That agreement rests on the planner's guess of
  when the chunk arrives; a chunk that arrives later than guessed (a slow inference, a late frame) is switched
  to where it is free, not decided. So the switch is checked: when switching directly would jerk more than
  the new plan itself does (velocity jump over one servo period above the chunk's largest step velocity),
  that join is cross-faded instead and counted (``inpaint_fallback``), so the table says how often
  inpainting alone did not suffice.

Each join is measured the same way whatever the method: one servo period h after the switch, the largest
difference between what the new plan commands and what the old plan would have commanded (position jump,
rad), and the largest difference of their finite-difference velocities over that period (velocity jump,
rad/s). A hard switch shows the full disagreement; a crossfade shows almost none.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgedp.runtime.interpolation import Constant, TimedChunk, Trajectory, blend_into


def smoothstep(x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    return x * x * (3.0 - 2.0 * x)


class Crossfade(Trajectory):
    """(1 - w) old + w new, with w rising smoothly from 0 at t_s to 1 at t_s + duration."""

    def __init__(self, old: Trajectory, new: Trajectory, t_s: float, duration: float):
        self.old = old
        self.new = new
        self.t_s = float(t_s)
        self.duration = float(duration)
        self.dim = new.dim
        self._tmp = np.empty(self.dim)

    def evaluate(self, t: float, out: np.ndarray) -> bool:
        if t < self.t_s:  # not started: the old plan alone, and its coverage (the new one may not have begun)
            return self.old.evaluate(t, out)
        w = smoothstep((t - self.t_s) / self.duration) if self.duration > 0 else 1.0
        covered = self.new.evaluate(t, out)
        if w < 1.0:
            self.old.evaluate(t, self._tmp)
            blend_into(out, self._tmp, w)
        return covered

    def end_time(self) -> float:
        return self.new.end_time()

    def simplify(self, t: float) -> Trajectory:
        if t >= self.t_s + self.duration:
            return self.new.simplify(t)
        self.old = self.old.simplify(t)
        return self


class Deferred(Trajectory):
    """The old plan until ``t_switch``, the new one from then on (inpaint joins on a cubic plan).

    Why: a published chunk's first knot has a one-sided Catmull-Rom tangent (there is no knot before it), so its
    first segment differs from the old plan even where every knot agrees. From its second knot on, the segments
    read only agreeing knots and equal the old plan's: switching there instead of mid-first-segment is seamless.
    The old plan must still run at that second knot: the inpainting planner's one period of advance
    (ChunkConditioner.replan_advance) keeps it inside the old executed slice."""

    def __init__(self, old: Trajectory, new: Trajectory, t_switch: float):
        self.old = old
        self.new = new
        self.t_switch = float(t_switch)
        self.dim = new.dim

    def evaluate(self, t: float, out: np.ndarray) -> bool:
        return (self.old if t < self.t_switch else self.new).evaluate(t, out)

    def end_time(self) -> float:
        return self.new.end_time()

    def simplify(self, t: float) -> Trajectory:
        if t >= self.t_switch:
            return self.new.simplify(t)
        self.old = self.old.simplify(t)
        return self


@dataclass
class JoinStats:
    t: float
    seq: int
    position_jump: float
    velocity_jump: float
    dropped_steps: int
    # The largest step between consecutive actions of the new chunk, as a velocity (rad/s): the yardstick a
    # join's velocity jump is compared with (a join is seamless when it jerks no more than the plan itself).
    chunk_velocity: float = 0.0
    # inpaint only: this join was cross-faded because the direct switch would have jerked more than the plan
    # (the chunk came later than the planner assumed); direct_velocity_jump is what the direct switch had.
    inpaint_fallback: bool = False
    direct_velocity_jump: float = 0.0


class Joiner:
    """Turns each arriving chunk into the plan the servo loop follows, and measures every join."""

    def __init__(self, method: str, crossfade_steps: int, ensemble_decay: float, servo_period: float,
                 interpolation: str = "linear"):
        if method not in ("crossfade", "ensemble", "inpaint", "switch"):
            raise ValueError(f"unknown join '{method}' (allowed: crossfade, ensemble, inpaint)")
        self.method = method
        self.crossfade_steps = crossfade_steps
        self.decay = ensemble_decay
        self.h = servo_period
        self.interpolation = interpolation
        self._history: list[TimedChunk] = []  # raw chunks still covering the future (ensemble)
        self.joins: list[JoinStats] = []
        self._a = np.empty(0)
        self._b = np.empty(0)

    def adopt(self, current: Trajectory | None, chunk: TimedChunk, t_s: float) -> Trajectory:
        """Return the new plan starting at t_s; record the join's discontinuity when there was an old plan."""
        dropped = max(0, min(chunk.n, int(np.floor((t_s - chunk.t0) / chunk.dt)) + 1)) if t_s > chunk.t0 else 0
        step = chunk_step_velocity(chunk)
        # A chunk can arrive before its own first step is due (policy.action_lead_periods times it after the
        # observation; a fast sampler delivers it sooner than that). The old plan keeps running until then:
        # starting the join at arrival would follow a chunk that does not cover "now" yet, and the servo would
        # brake (uncovered) and then fade in from a hold.
        t_join = max(t_s, chunk.t0) if current is not None else t_s
        fallback, direct = False, None  # inpaint: whether the join was cross-faded, what switching would have had
        if self.method == "ensemble":
            new = self._ensemble(chunk, t_s)
            if isinstance(current, Crossfade) and t_s < current.t_s + current.duration:
                # Still ramping in (start ramp or a crossfade): keep the ramp, swap what it ramps into.
                new = Crossfade(current.old, new, current.t_s, current.duration)
            elif current is not None and t_join > t_s:
                new = Deferred(current.simplify(t_s), new, t_join)
        elif self.method == "crossfade" and current is not None and self.crossfade_steps > 0:
            new = Crossfade(current.simplify(t_s), chunk, t_join, self.crossfade_steps * chunk.dt)
        elif self.method == "inpaint":
            new, fallback, direct = self._inpaint_join(current, chunk, t_s, t_join, step)
        else:
            new = chunk if t_join <= t_s else Deferred(current.simplify(t_s), chunk, t_join)
        if isinstance(current, Constant) and not isinstance(new, Crossfade):
            # Joining from a hold (the arm ran out of plan and stopped): never jump, whatever the method. Done
            # here rather than by the caller so that the join is measured on what the servo will follow.
            new = Crossfade(current, new, t_join, max(1, self.crossfade_steps) * chunk.dt)
        if current is not None:
            pj, vj = self.measure(current, new, t_s)
            if isinstance(new, Deferred):  # the switch really happens later: measure it there too
                pj, vj = (max(a, b) for a, b in zip((pj, vj), self.measure(current, new.new, new.t_switch)))
            self.joins.append(JoinStats(t_s, chunk.seq, pj, vj, dropped, step, fallback,
                                        vj if direct is None else direct))
        return new

    def _inpaint_join(self, current: Trajectory | None, chunk: TimedChunk, t_s: float, t_join: float, step: float
                      ) -> tuple[Trajectory, bool, float | None]:
        """Switch straight to an inpainted chunk, unless that would jerk more than the chunk's own ``step``
        (then cross-fade from ``t_join``, when the chunk's first step is due: adopt says why).

        Returns the plan, whether it is a fallback cross-fade, and the velocity jump a direct switch would have
        had (None when there was nothing to check: no plan yet, or a hold, which adopt fades in from anyway)."""
        if current is None or isinstance(current, Constant):
            return chunk, False, None
        fading = isinstance(current, Crossfade) and t_s < current.t_s + current.duration
        second_knot = chunk.t0 + chunk.dt
        # Inside the first segment, switch at the second knot instead (Deferred says why): judge the join there.
        deferred = not fading and chunk.kind == "cubic" and chunk.n > 1 and t_s < second_knot
        # While a ramp or fade runs, the new chunk was made to agree with what it fades into, not with the blend.
        _, direct = self.measure(current.new if fading else current, chunk, second_knot if deferred else t_s)
        if direct > step:
            fade = Crossfade(current.simplify(t_s), chunk, t_join, max(1, self.crossfade_steps) * chunk.dt)
            return fade, True, direct
        if fading:  # keep fading, into the new chunk (it equals the old target where the fade is now)
            return Crossfade(current.old, chunk, current.t_s, current.duration), False, direct
        return (Deferred(current.simplify(t_s), chunk, second_knot) if deferred else chunk), False, direct

    def measure(self, old: Trajectory, new: Trajectory, t_s: float) -> tuple[float, float]:
        if self._a.shape[0] != new.dim:
            self._a = np.empty((4, new.dim))
        a = self._a
        h = self.h
        old.evaluate(t_s, a[0])
        old.evaluate(t_s + h, a[1])
        new.evaluate(t_s, a[2])
        new.evaluate(t_s + h, a[3])
        # The servo was following `old` up to t_s: compare the first command under `new` with what `old`
        # would have commanded, and the velocity over the first period with the old plan's velocity.
        pos = float(np.max(np.abs(a[3] - a[1])))
        vel = float(np.max(np.abs((a[3] - a[0]) - (a[1] - a[0])))) / h
        return pos, vel

    def _ensemble(self, chunk: TimedChunk, t_s: float) -> TimedChunk:
        self._history = [c for c in self._history if c.end_time() >= t_s]
        self._history.append(chunk)
        times = chunk.times()
        acc = np.zeros_like(chunk.values)
        wsum = np.zeros(chunk.n)
        tmp = np.empty(chunk.dim)
        rank = np.zeros(chunk.n)
        for c in self._history:  # oldest first: ACT gives the oldest prediction weight exp(0)
            for j, tj in enumerate(times):
                if c is chunk:
                    covered = True
                    tmp[:] = chunk.values[j]
                else:
                    covered = c.t0 <= tj <= c.end_time()
                    if covered:
                        c.evaluate(tj, tmp)
                if covered:
                    w = np.exp(-self.decay * rank[j])
                    acc[j] += w * tmp
                    wsum[j] += w
                    rank[j] += 1
        values = acc / wsum[:, None]
        return TimedChunk(values, chunk.t0, chunk.dt, self.interpolation, chunk.seq)

    def max_jumps(self) -> tuple[float, float]:
        if not self.joins:
            return 0.0, 0.0
        return max(j.position_jump for j in self.joins), max(j.velocity_jump for j in self.joins)


def chunk_step_velocity(chunk: TimedChunk) -> float:
    """The largest step between consecutive actions of a chunk, as a velocity (rad/s): how much the plan itself
    jerks, the yardstick for a join."""
    return float(np.max(np.abs(np.diff(chunk.values, axis=0)))) / chunk.dt if chunk.n > 1 else 0.0


def start_ramp(q0: np.ndarray, plan: Trajectory, t_s: float, duration: float) -> Trajectory:
    """Blend from the pose read at connect time into the first plan: the arm never jumps to action 0."""
    return Crossfade(Constant(q0), plan, t_s, duration)
