"""The servo loop: at servo rate, follow the newest timed chunk safely and publish the joint states.

Every tick (absolute deadline, see clock.RateLoop):
  1. read present positions (one sync read) and push (t, q) into the state history;
  2. take the newest chunk from the ChunkRing if there is one and join it onto the current plan (steps
     already in the past are skipped by time, the join is measured);
  3. evaluate the plan at the tick's deadline (linear or cubic interpolation between timed actions);
     if no chunk covers the time, decelerate to a hold instead;
  4. pass the target through the safety filter and write it as the goal position (one sync write).
A tick whose read or write fails counts as failed; `watchdog_failed_ticks` consecutive failures stop the
loop (hold or torque off, per config). On start the pose is read first, the goal is set to it before torque
is enabled, and the first chunk is blended in from that pose over `start_ramp_time`: the arm never jumps.

The same `ServoLoop.run` is used as a thread (default) or as the body of its own process
(`rates.servo_in_process`), where it escapes the planner's GIL; everything it shares with the runtime is in
shared memory (the chunk ring, the state ring, the control block), and its final report goes back over a
pipe.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import numpy as np

from edgedp.runtime.clock import RateLoop
from edgedp.runtime.control import Control
from edgedp.runtime.interpolation import Constant, TimedChunk, Trajectory, warm_up
from edgedp.runtime.joins import Crossfade, Joiner, start_ramp
from edgedp.runtime.ring import ChunkRing, RingSpec
from edgedp.runtime.safety import SafetyFilter

# Period-error histogram: 5 µs bins up to 20 ms (the last bin collects everything later).
HIST_BIN_US = 5.0
HIST_BINS = 4000


@dataclass
class ServoParams:
    """Everything the loop needs besides its collaborators (plain values, so it pickles to a process)."""

    servo_hz: float
    lower: list[float]
    upper: list[float]
    max_velocity: list[float]
    max_acceleration: list[float]
    interpolation: str = "linear"
    join: str = "crossfade"
    crossfade_steps: int = 3
    ensemble_decay: float = 0.01
    start_ramp_time: float = 2.0
    watchdog_failed_ticks: int = 10
    on_stop: str = "hold"
    state_publish_hz: float = 200.0
    spin_us: float = 0.0
    timeline_hz: float = 50.0
    max_timeline: int = 200_000
    stop_decel_time: float = 0.3
    # SCHED_FIFO priority for the servo thread/process (Linux; needs root or CAP_SYS_NICE / an rtprio limit).
    # 0 leaves the default scheduler. When refused, the loop runs anyway and the report says so.
    realtime_priority: int = 50


class ServoLoop:
    """One servo loop run: connect, ramp, follow chunks, stop; returns a report dict."""

    def __init__(self, bus, chunks: ChunkRing, states: ChunkRing, control: Control, params: ServoParams,
                 bus_errors: tuple[type[BaseException], ...] = (Exception,),
                 clock: Callable[[], float] = time.monotonic):
        self.bus = bus
        self.chunks = chunks
        self.states = states
        self.control = control
        self.p = params
        self.bus_errors = bus_errors
        self.clock = clock
        n = len(params.lower)
        self.n = n
        self.period = 1.0 / params.servo_hz
        self.safety = SafetyFilter(params.lower, params.upper, params.max_velocity, params.max_acceleration,
                                   self.period)
        warm_up()
        self.joiner = Joiner(params.join, params.crossfade_steps, params.ensemble_decay, self.period,
                             params.interpolation)
        # State history, written twice so the newest `cap` samples are always one contiguous slice.
        self.cap = states.spec.capacity
        self._hist = np.zeros((2 * self.cap, 1 + n))
        self._hist_i = 0
        self._hist_n = 0
        self.hist = np.zeros(HIST_BINS + 1, dtype=np.int64)  # every tick: wake time - deadline
        self.wake_hist = np.zeros(HIST_BINS + 1, dtype=np.int64)  # ticks that slept: pure wake-up jitter
        self.work_hist = np.zeros(HIST_BINS + 1, dtype=np.int64)  # tick work (bus read + compute + write)
        self.max_wake_us = 0.0
        self.max_work_us = 0.0
        self.max_err_us = 0.0
        tl = params.max_timeline
        self.tl_t = np.zeros(tl)
        self.tl_cmd = np.zeros((tl, n))
        self.tl_meas = np.zeros((tl, n))
        self.tl_target = np.full((tl, n), np.nan)
        self.tl_err = np.zeros(tl)
        self.tl_n = 0
        self.report: dict[str, Any] = {}
        self.adoptions: list[tuple[int, float, int]] = []  # (seq, servo time it took over, steps already past)

    # ------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        ctl = self.control
        p = self.p
        ctl.set_phase("starting")
        self.report["scheduling"] = _set_realtime(p.realtime_priority)
        reason = "stopped"
        error: Optional[str] = None
        connected = torque = False
        ticks = bus_errors = failed_in_a_row = uncovered = chunks = 0
        loop = None
        try:
            self.bus.connect()
            connected = True
            js = self.bus.read()
            q0 = np.asarray(js.q, dtype=np.float64).copy()
            if q0.shape != (self.n,):
                raise ValueError(f"bus returned {q0.shape[0]} joint positions, config has {self.n} joints")
            self.safety.reset(q0)
            self.bus.write_goal(q0)  # the goal register may hold anything: make it the present pose first
            self.bus.set_torque(True)
            torque = True
            self._push_state(js.t, q0)
            self._publish_states()
            ctl.set_phase("waiting")
            cmd = q0.copy()
            target = np.empty(self.n)
            q_meas = q0.copy()
            buf = np.zeros((self.chunks.spec.capacity, self.chunks.spec.dim))
            plan: Optional[Trajectory] = None
            last_seq = 0
            holding = False
            publish_every = max(1, int(round(p.servo_hz / min(p.state_publish_hz, p.servo_hz))))
            tl_every = max(1, int(round(p.servo_hz / p.timeline_hz)))
            spin = p.spin_us * 1e-6
            loop = RateLoop(self.period, clock=self.clock, spin=spin)
            ramp_end = math.inf
            while True:
                if ctl.stop_requested():
                    break
                deadline = loop.wait()
                err_us = loop.last_error * 1e6
                b = int(err_us / HIST_BIN_US) if err_us > 0 else 0
                b = b if b < HIST_BINS else HIST_BINS
                self.hist[b] += 1
                if err_us > self.max_err_us:
                    self.max_err_us = err_us
                if loop.slept:
                    self.wake_hist[b] += 1
                    if err_us > self.max_wake_us:
                        self.max_wake_us = err_us
                t_work = self.clock()
                ticks += 1
                failed = False
                # 1. present positions
                try:
                    js = self.bus.read()
                    q_meas[:] = js.q
                    self._push_state(js.t, q_meas)
                except self.bus_errors:
                    failed = True
                # 2. newest chunk
                h = self.chunks.read_newest(buf, after_seq=last_seq)
                if h is not None:
                    last_seq = h.seq
                    chunks += 1
                    chunk = TimedChunk(buf[: h.length], h.t0, h.dt, p.interpolation, h.seq)
                    if len(self.adoptions) < 100_000:
                        late = int((deadline - h.t0) // h.dt) + 1 if deadline > h.t0 else 0
                        self.adoptions.append((h.seq, deadline, min(late, h.length)))
                    if plan is None:
                        plan = start_ramp(cmd, self.joiner.adopt(None, chunk, deadline), deadline,
                                          p.start_ramp_time)
                        ramp_end = deadline + p.start_ramp_time
                        ctl.set_phase("ramping")
                    else:
                        if holding:  # we decelerated away from the plan: fade in from where we are
                            held = Constant(cmd)
                            plan = self.joiner.adopt(held, chunk, deadline)
                            if not isinstance(plan, Crossfade):  # ensemble/switch: still never jump
                                plan = Crossfade(held, plan, deadline, max(1, p.crossfade_steps) * h.dt)
                            holding = False
                        else:
                            plan = self.joiner.adopt(plan, chunk, deadline)
                # 3. target
                tgt: Optional[np.ndarray] = None
                if plan is not None:
                    if plan.evaluate(deadline, target):
                        tgt = target
                    else:
                        uncovered += 1
                        holding = True
                    if ticks % 64 == 0:
                        plan = plan.simplify(deadline)
                        if deadline > ramp_end:
                            ctl.set_phase("running")
                            ramp_end = math.inf
                # 4. safety filter and goal
                self.safety.apply(tgt, cmd)
                try:
                    self.bus.write_goal(cmd)
                except self.bus_errors:
                    failed = True
                work_us = (self.clock() - t_work) * 1e6
                wb = int(work_us / HIST_BIN_US)
                self.work_hist[wb if wb < HIST_BINS else HIST_BINS] += 1
                if work_us > self.max_work_us:
                    self.max_work_us = work_us
                if failed:
                    bus_errors += 1
                    failed_in_a_row += 1
                    if failed_in_a_row >= p.watchdog_failed_ticks:
                        reason = "watchdog"
                        error = f"{failed_in_a_row} consecutive failed bus ticks"
                        break
                else:
                    failed_in_a_row = 0
                if ticks % publish_every == 0:
                    self._publish_states()
                if ticks % tl_every == 0 and self.tl_n < self.tl_t.shape[0]:
                    i = self.tl_n
                    self.tl_t[i] = deadline
                    self.tl_cmd[i] = cmd
                    self.tl_meas[i] = q_meas
                    if tgt is not None:
                        self.tl_target[i] = tgt
                    self.tl_err[i] = err_us
                    self.tl_n += 1
                if ticks % 16 == 0:
                    live = ctl.live
                    live[0] = ticks
                    live[1] = loop.overruns
                    live[2] = bus_errors
                    live[3] = self.safety.clamps
                    live[4] = len(self.joiner.joins)
                    live[5] = uncovered
                    live[6] = err_us
                    live[7] = chunks
                    live[8] = self.max_err_us
        except BaseException as exc:  # report, then fall through to the safe stop
            reason = "error"
            error = f"{type(exc).__name__}: {exc}"
            self.report["traceback"] = traceback.format_exc()
        ctl.set_phase("stopping")
        stop_notes = self._safe_stop(connected, torque, reason)
        self.report.update({
            "reason": reason,
            "error": error,
            "ticks": ticks,
            "overruns": loop.overruns if loop else 0,
            "skipped_ticks": loop.skipped if loop else 0,
            "bus_errors": bus_errors,
            "safety_clamps": self.safety.clamps,
            "nonfinite_targets": self.safety.nonfinite,
            "uncovered_ticks": uncovered,
            "chunks_executed": chunks,
            "joins": [asdict(j) for j in self.joiner.joins],
            "adoptions": [{"seq": a, "t": b, "dropped_steps": c} for a, b, c in self.adoptions],
            "period_error_hist": self.hist,
            "period_error_max_us": self.max_err_us,
            "wake_error_hist": self.wake_hist,
            "wake_error_max_us": self.max_wake_us,
            "tick_work_hist": self.work_hist,
            "tick_work_max_us": self.max_work_us,
            "timeline": {
                "t": self.tl_t[: self.tl_n].copy(),
                "cmd": self.tl_cmd[: self.tl_n].copy(),
                "meas": self.tl_meas[: self.tl_n].copy(),
                "target": self.tl_target[: self.tl_n].copy(),
                "err_us": self.tl_err[: self.tl_n].copy(),
            },
            "stop": stop_notes,
        })
        ctl.set_phase("failed" if reason in ("watchdog", "error") else "stopped")
        return self.report

    # ------------------------------------------------------------------------------------------------
    def _push_state(self, t: float, q: np.ndarray) -> None:
        i = self._hist_i
        row = self._hist[i]
        row[0] = t
        row[1:] = q
        self._hist[i + self.cap] = row
        self._hist_i = (i + 1) % self.cap
        self._hist_n = min(self._hist_n + 1, self.cap)

    def _publish_states(self) -> None:
        if self._hist_n == 0:
            return
        end = self._hist_i + self.cap
        self.states.publish(self._hist[end - self._hist_n: end], t0=0.0, dt=0.0)

    def _safe_stop(self, connected: bool, torque: bool, reason: str) -> dict:
        """Decelerate to a hold (briefly, while the bus answers), then torque off per config, then close."""
        notes: dict[str, Any] = {"decelerated": False, "torque_off": False, "closed": False}
        if not connected:
            return notes
        stats = getattr(self.bus, "stats", None)
        if callable(stats):
            try:
                self.report["bus_stats"] = _plain(stats())
            except Exception:
                pass
        cmd = np.empty(self.n)
        if torque and reason != "watchdog":
            t_end = self.clock() + self.p.stop_decel_time
            try:
                while self.clock() < t_end and np.any(np.abs(self.safety.v) > 1e-6):
                    self.safety.apply(None, cmd)
                    self.bus.write_goal(cmd)
                    time.sleep(self.period)
                notes["decelerated"] = True
            except BaseException:
                pass
        if torque and self.p.on_stop == "torque_off":
            try:
                self.bus.set_torque(False)
                notes["torque_off"] = True
            except BaseException as exc:
                notes["torque_off_error"] = f"{type(exc).__name__}: {exc}"
        try:
            self.bus.close()
            notes["closed"] = True
        except BaseException as exc:
            notes["close_error"] = f"{type(exc).__name__}: {exc}"
        return notes


def _plain(x):
    """Driver counters as JSON-friendly values (dict keys to str, numpy scalars to Python)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _set_realtime(priority: int) -> str:
    """Ask the kernel to run the calling thread with SCHED_FIFO, so other processes cannot delay its ticks."""
    import os

    if priority <= 0 or not hasattr(os, "sched_setscheduler"):
        return "default"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        return f"SCHED_FIFO {priority}"
    except (OSError, PermissionError) as exc:
        return f"default (SCHED_FIFO refused: {exc.strerror or exc})"


# ---------------------------------------------------------------------------------------------------
# Runners: the loop as a thread, or in its own process.

class ServoThread:
    """Runs a ServoLoop on a thread of this process."""

    def __init__(self, make_bus: Callable[[], Any], chunks: ChunkRing, states: ChunkRing, control: Control,
                 params: ServoParams, bus_errors: tuple = (Exception,)):
        self._loop = ServoLoop(make_bus(), chunks, states, control, params, bus_errors)
        self._thread = threading.Thread(target=self._run, name="servo", daemon=True)
        self.report: Optional[dict] = None

    def _run(self) -> None:
        self.report = self._loop.run()

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> Optional[dict]:
        self._thread.join(timeout)
        return self.report

    def kill(self) -> None:
        """Threads cannot be killed; the loop checks the stop flag every tick, so join normally suffices."""


def _process_main(make_bus, chunk_spec: RingSpec, state_spec: RingSpec, control_name: str,
                  params: ServoParams, bus_errors: tuple, conn) -> None:
    import signal

    # The parent handles Ctrl-C and SIGTERM and asks us to stop through the control block.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    chunks = ChunkRing.attach(chunk_spec)
    states = ChunkRing.attach(state_spec)
    control = Control.attach(control_name)
    report: dict = {}
    try:
        report = ServoLoop(make_bus(), chunks, states, control, params, bus_errors).run()
    except BaseException as exc:
        report = {"reason": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        control.set_phase("failed")
    finally:
        try:
            conn.send(report)
        except Exception:
            pass
        conn.close()
        chunks.close()
        states.close()
        control.close()


class ServoProcess:
    """Runs a ServoLoop in a spawned process; the bus is built there from a picklable factory."""

    def __init__(self, make_bus: Callable[[], Any], chunks: ChunkRing, states: ChunkRing, control: Control,
                 params: ServoParams, bus_errors: tuple = (Exception,)):
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_process_main,
            args=(make_bus, chunks.spec, states.spec, control.name, params, bus_errors, child),
            name="edgedp-servo", daemon=True)
        self._child_conn = child
        self.report: Optional[dict] = None

    def start(self) -> None:
        self._proc.start()
        self._child_conn.close()

    def alive(self) -> bool:
        return self._proc.is_alive()

    def join(self, timeout: float) -> Optional[dict]:
        if self.report is None and self._conn.poll(timeout):
            try:
                self.report = self._conn.recv()
            except EOFError:
                pass
        self._proc.join(timeout=max(0.05, timeout))
        return self.report

    def kill(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(0.5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(0.5)
        self._conn.close()
