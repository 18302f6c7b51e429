"""The planner thread: newest observation -> encode once -> K-step sampler -> timed chunk -> ChunkRing.

Action j of a chunk is for time t_obs + lead + (j - (n_obs_steps - 1)) * dt: index n_obs_steps-1 is "now" at the
newest observation, or one period later when the training data's action i is the target reached one period after
frame i (`policy.action_lead_periods: 1`, edgedp record's convention: lead = one action period). The executed
slice (T_a steps from that index) is published with t0 = t_obs + lead, so the servo loop can drop the steps whose
time has passed by the time it arrives. With inpainting (asynchronous) the chunk's next few predicted actions go
along as lookahead knots, marked in the ring header: the servo uses them for its tangents and never executes them.

When to start the next chunk: it must be published before the current one runs out, so planning starts at
(end of current chunk) - (expected latency), where the expected latency is the largest of the last few
measured ones plus a margin. If that is already past, planning starts at once: denoising overlaps execution
whenever the chunk is longer than the latency.

A policy that raises PolicyUnavailable (a remote policy server that did not answer in time, see
edgedp/runtime/remote_policy.py) yields no chunk: nothing is published, so the servo loop holds the arm once the
current chunk runs out, and the planner tries again after a doubling backoff (0.1 s up to 2 s).

Every chunk comes from the Policy interface, `policy.predict_chunk(obs, sampler=..., encoder=..., timing=...)`,
the same observation -> chunk path every other caller uses; the planner passes the compiled K-step loop (and
compiled encoder) of the configured backend, and the policy reports how long each stage took (normalize,
encode, sample, unnormalize). The per-step denoising time is the sample time / K for every backend: the planner
never hooks into the networks.

Synchronous mode (`sync=True`, the evaluation baseline of edgedp/evaluation): the robot waits while the
policy thinks. The next observation is taken only after the current chunk has been fully executed and the
arm has come to rest (one action period after its last step, while the servo loop decelerates to a hold),
and the new chunk is timed from its publication, not from its observation: no step is dropped as late, the
arm simply holds for the whole inference. This is how a policy is run without a runtime that overlaps
denoising with execution.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from edgedp.runtime.observation import NotReady, ObservationWindow, StaleObservation
from edgedp.runtime.remote_policy import PolicyUnavailable
from edgedp.runtime.ring import ChunkRing
from edgedp.runtime.telemetry import Telemetry


@dataclass(frozen=True)
class PublishedChunk:
    """What the policy saw and planned for one chunk: the observation window exactly as fed to the encoder
    (feature -> (n_obs_steps, ...) arrays), the whole predicted chunk in raw action units, the executed slice
    ``[first, first + executed)`` published with t0 and dt, and the host times of planning and publication."""

    seq: int
    obs: dict
    t_obs: float
    sample_times: dict
    actions: np.ndarray  # (horizon, action_dim)
    first: int
    executed: int
    t0: float
    dt: float
    t_plan_start: float
    t_publish: float


class RefusedChunk(ValueError):
    """The policy produced a chunk the ring refuses (non-finite actions, a malformed header)."""


class Planner:
    # Retry spacing after a policy that did not answer (a remote server gone): doubling, capped.
    MIN_BACKOFF = 0.1
    MAX_BACKOFF = 2.0

    def __init__(self, policy: Any, sampler: Callable, window: ObservationWindow, ring: ChunkRing,
                 telemetry: Telemetry, action_period: float, n_action_steps: int, steps: int,
                 extra_latency: float = 0.0, margin: float = 0.02, clock: Callable[[], float] = time.monotonic,
                 sync: bool = False, command_delay: float = 0.0, action_lead: float = 0.0,
                 inpaint_overlap: str = "soft"):
        self.policy = policy
        self.sampler = sampler
        # A compiled sampler may bring its own compiled encoder (raw observation -> condition); else the policy's.
        self.encoder = sampler.encode if getattr(sampler, "encoder", None) is not None else None
        self.window = window
        self.ring = ring
        self.tel = telemetry
        self.dt = action_period
        self.ta = n_action_steps
        self.steps = steps
        self.first = policy.n_obs_steps - 1
        self.extra = extra_latency
        self.margin = margin
        self.clock = clock
        self.sync = bool(sync)
        # Motion follows a command after this long (calibrated): an action meant for time T is commanded at
        # T - command_delay, so the chunk is timed that much earlier (see plan_once).
        self.command_delay = float(command_delay)
        # policy.action_lead_periods x the action period: when the training data's action i is the target reached one
        # period after frame i (edgedp record), index `first` is for t_obs + one period, not t_obs (see plan_once).
        self.action_lead = float(action_lead)
        self._lat = deque(maxlen=5)
        self._backoff = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.next_start = 0.0
        self.fatal: Optional[BaseException] = None
        self._exit_lock = threading.Lock()
        self._exited = False
        self._on_exit: list[Callable[[], None]] = []
        # Warm start / real-time inpainting (policy.configure_sampler): the previous chunk conditions the next.
        from edgedp.runtime.conditioning import ChunkConditioner

        # inpaint_overlap (safety.inpaint_overlap): whether the guided form also softly follows the old chunk's
        # predictions past the decided steps.
        self.conditioner = ChunkConditioner.for_policy(policy, action_period, self.first, n_action_steps,
                                                       overlap=inpaint_overlap)
        # Inpainting (asynchronous): a few predicted actions past the executed slice go along, never executed, so
        # the servo's tangents at the slice's end are two-sided and the next chunk can agree with them
        # (ChunkConditioner.lookahead_for / replan_advance say why). Every other join publishes the slice alone.
        self.lookahead = 0 if self.sync or self.conditioner is None else self.conditioner.lookahead
        if ring.spec.capacity < n_action_steps + self.lookahead:
            raise ValueError(f"chunk ring holds {ring.spec.capacity} steps; the planner publishes {n_action_steps} "
                             f"executed + {self.lookahead} lookahead")
        # Recording and viewing hooks (edgedp/datasets/deploy.py, edgedp/view): called on this thread with each
        # PublishedChunk; each must only hand it to its own queue and thread, never block or write files.
        self.listeners: list[Callable[["PublishedChunk"], None]] = []
        self.listener_errors = 0

    def defer_until_exit(self, fn: Callable[[], None]) -> bool:
        """Run `fn` when the planner thread ends (False: it already ended, the caller runs fn itself).

        An inference in flight cannot be interrupted; the runtime uses this to release the rings the planner
        still holds once that inference is over, instead of pulling them from under it.
        """
        with self._exit_lock:
            if self._exited or self._thread is None:
                return False
            self._on_exit.append(fn)
            return True

    def expected_latency(self) -> float:
        return (max(self._lat) if self._lat else 0.5) * 1.2 + self.margin

    def plan_once(self) -> Optional[int]:
        """One observation -> one published chunk; None when the observation was stale or not ready.

        A chunk the ring refuses (a non-finite action, a malformed header) raises RefusedChunk: it never
        reaches the servo loop, and the run stops with that one line."""
        t_start = self.clock()
        try:
            obs = self.window.assemble(t_start)
        except StaleObservation:
            self.tel.stale_observations += 1
            return None
        except NotReady:
            self.tel.not_ready += 1
            return None
        t_obs_done = self.clock()
        # When index `first` of the new chunk is due (see the timing note at publish); with warm start or
        # inpainting it is put on the previous chunk's grid, and that chunk conditions the sampler.
        t0_plan = obs.t - self.command_delay + self.action_lead
        cond: dict = {}
        if self.conditioner is not None:
            t0_plan = self.conditioner.snap(t0_plan)
            cond = self.conditioner.inputs(t0_plan, t_start + self.expected_latency())
        stages: dict[str, float] = {}
        try:
            action = self.policy.predict_chunk(obs.data, sampler=self.sampler, encoder=self.encoder, timing=stages,
                                               conditioning=cond).astype(np.float64)
        except PolicyUnavailable as exc:  # a remote policy did not answer: publish nothing (the arm holds), retry
            self._backoff = min(self.MAX_BACKOFF, self._backoff * 2 if self._backoff else self.MIN_BACKOFF)
            self.next_start = self.clock() + self._backoff
            self.tel.note_policy(self.policy, f"no chunk: {exc}; retry in {self._backoff:.2f} s")
            return None
        self._backoff = 0.0
        self.tel.note_policy(self.policy)
        # The executed slice, plus the lookahead knots with inpainting (lookahead_for fits them in the horizon).
        published = np.ascontiguousarray(action[self.first: self.first + self.ta + self.lookahead])
        executed = published.shape[0] - self.lookahead
        if self.extra > 0:
            self._stop.wait(self.extra)
        if self._stop.is_set():  # the run is stopping: the ring may already be gone
            return None
        # Asynchronous: actions are timed from the observation, so the servo loop drops those already past.
        # Synchronous: the robot waited for this chunk; its first step is "now".
        # With a command delay d the arm reaches a command d after it is written: timing the chunk at t_obs - d
        # makes the servo loop command each action d ahead of its time, drop the ones it can no longer reach in
        # time, and (through chunk_end) start the next chunk d earlier.
        t0 = self.clock() + self.action_lead if self.sync else t0_plan
        try:
            seq = self.ring.publish(published, t0=t0, dt=self.dt, lookahead=self.lookahead)
        except ValueError as exc:
            raise RefusedChunk(f"chunk refused before it reached the servo loop: {exc}") from None
        if self.conditioner is not None:
            self.conditioner.remember(action, t0, self.lookahead)
        t_pub = self.clock()
        if self.listeners:
            self._notify(PublishedChunk(seq, obs.data, obs.t, obs.sample_times, action, self.first, executed,
                                        t0, self.dt, t_start, t_pub))
        self._lat.append(t_pub - t_start)
        decided = None
        if self.conditioner is not None and self.conditioner.inpaint:
            decided = max(0, self.conditioner.last_n_fixed - self.first)
        self.tel.record_inference(seq, obs.t, t_start, (t_obs_done - t_start) * 1e3, stages, self.steps, t_pub,
                                  obs.age * 1e3, t0=t0, decided=decided)
        chunk_end = t0 + (executed - 1) * self.dt
        if self.sync:  # plan again once the chunk is done and the arm has settled into its hold
            self.next_start = chunk_end + self.dt
        else:  # inpainting plans a period earlier still (ChunkConditioner.replan_advance says why)
            advance = self.conditioner.replan_advance if self.conditioner is not None else 0.0
            self.next_start = chunk_end - self.lead_time() - advance
        return seq

    def lead_time(self) -> float:
        """How long before the current chunk runs out the next one is started: the expected inference latency,
        or the action lead when that is longer. Why the lead: the next chunk's first step is due action_lead
        after its observation however fast the sampler is; started only `latency` before the end, a chunk that
        computes faster than the lead would begin after the current one ended, and the arm would stop in between
        (a fast sampler on Push-T did, at every chunk)."""
        return max(self.expected_latency(), self.action_lead)

    def _notify(self, event: "PublishedChunk") -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a recorder or viewer must never stop the robot
                self.listener_errors += 1

    def run(self) -> None:
        try:
            self._loop()
        finally:
            with self._exit_lock:
                self._exited = True
                todo, self._on_exit = self._on_exit, []
            for fn in todo:
                try:
                    fn()
                except Exception:
                    pass

    def _loop(self) -> None:
        while not self._stop.is_set():
            wait = self.next_start - self.clock()
            if wait > 0:
                self._stop.wait(min(wait, 0.05))
                continue
            try:
                if self.plan_once() is None:
                    self._stop.wait(0.005)
            except Exception as exc:  # the run stops on a planner error; the servo loop holds meanwhile
                self.tel.planner_errors.append(f"{type(exc).__name__}: {exc}")
                self.fatal = exc
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="planner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
