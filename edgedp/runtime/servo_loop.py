"""The servo loop: at servo rate, follow the newest timed chunk safely and publish the joint states.

Every tick (absolute deadline, see clock.RateLoop) is three steps, as in ros2_control's read / update / write:
  read    one sync read of present positions, pushed into the state history;
  update  take the newest chunk from the ChunkRing if there is one and join it onto the current plan (steps
          already in the past are skipped by time, the join is measured); evaluate the plan at the tick's
          deadline (linear or cubic); if no chunk covers the time, decelerate to a hold instead; pass the
          target through the safety filter;
  write   one sync write of the goal positions.
What the loop measures about itself (period error, tick work, timeline, adoptions) lives in
instruments.TickInstruments; the live counters go to the control block by name (control.LiveStatus).

A tick whose read or write fails counts as failed; `watchdog_failed_ticks` consecutive failures stop the
loop, with a message naming the servo(s) and the fault (hardware error bits, CRC, timeout, port gone). On
start the pose is read first, the goal is set to it before torque is enabled, and the first chunk is
blended in from that pose over `start_ramp_time`: the arm never jumps. Every way out of the loop (stop
request, watchdog, error) runs the safe stop: decelerate to a hold, then `on_stop` (hold or torque off),
then close; what it achieved is in the report's "stop" entry.

The same `ServoLoop.run` is used as a thread or as the body of its own process (`rates.servo_in_process`,
the default), where it escapes the planner's GIL; everything it shares with the runtime is in shared
memory (the chunk ring, the state ring, the control block), and its final report goes back over a pipe.
The process ignores SIGINT/SIGTERM (a terminal's Ctrl-C and systemd's stop reach the whole process group):
the runtime asks it to stop through the control block, and it stops on its own if the runtime dies.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np

from edgedp.runtime.clock import RateLoop
from edgedp.runtime.control import Control, LiveStatus
from edgedp.runtime.instruments import HIST_BIN_US, HIST_BINS, TickInstruments  # noqa: F401 (re-exported)
from edgedp.runtime.interpolation import Constant, TimedChunk, Trajectory, warm_up
from edgedp.runtime.joins import Joiner, start_ramp
from edgedp.runtime.ring import ChunkHeader, ChunkRing, RingSpec
from edgedp.runtime.safety import SafetyFilter
from edgedp.runtime.signals import shielded_from_signals

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



class StateFeed:
    """The servo loop's recent (t, q) samples, published as one snapshot to the state ring.

    Written twice into a double-length buffer, so the newest `cap` samples are always one contiguous slice
    (one publish, no concatenation)."""

    def __init__(self, ring: ChunkRing, n_joints: int):
        self.ring = ring
        self.cap = ring.spec.capacity
        self._buf = np.zeros((2 * self.cap, 1 + n_joints))
        self._i = 0
        self._n = 0

    def push(self, t: float, q: np.ndarray) -> None:
        i = self._i
        row = self._buf[i]
        row[0] = t
        row[1:] = q
        self._buf[i + self.cap] = row
        self._i = (i + 1) % self.cap
        self._n = min(self._n + 1, self.cap)

    def publish(self) -> None:
        if self._n == 0:
            return
        end = self._i + self.cap
        self.ring.publish(self._buf[end - self._n: end], t0=0.0, dt=0.0)


class BusWatchdog:
    """Counts consecutive failed ticks; when they reach the limit, says which servo failed and how.

    The driver's CRC/timeout counters are remembered at the last good tick, so the message can tell lost
    replies from corrupt ones over exactly the failing ticks."""

    def __init__(self, limit: int, bus: Any):
        self.limit = max(1, int(limit))
        self.in_a_row = 0
        self.total = 0
        self.last: Optional[BaseException] = None
        self._counters = getattr(bus, "counters", None)
        if not isinstance(self._counters, dict):
            self._counters = None
        self._base = (0, 0)
        self.names: dict[int, str] = {}
        for j in getattr(bus, "joints", None) or []:
            sid, name = getattr(j, "id", None), getattr(j, "name", None)
            if sid is not None and name:
                self.names[int(sid)] = str(name)
        self.ok()

    def _now(self) -> tuple[int, int]:
        c = self._counters
        return (int(c.get("crc_errors", 0)), int(c.get("timeouts", 0))) if c is not None else (0, 0)

    def ok(self) -> None:
        self.in_a_row = 0
        self._base = self._now()

    def failed(self, exc: BaseException) -> bool:
        """Count one failed tick; True when the watchdog trips."""
        self.in_a_row += 1
        self.total += 1
        self.last = exc
        return self.in_a_row >= self.limit

    def message(self) -> str:
        crc, to = self._now()
        what = describe_fault(self.last, self.names, crc - self._base[0], to - self._base[1])
        return f"{self.in_a_row} consecutive failed bus ticks: {what}"


def describe_fault(exc: Optional[BaseException], names: Mapping[int, str], crc_errors: int = 0,
                   timeouts: int = 0, detail: bool = False) -> str:
    """The driver's own description when it has one (Dynamixel), else the exception in one line."""
    if exc is None:
        return "unknown fault"
    try:
        from firmware_bridge.dynamixel.errors import BusError, describe_bus_fault
    except ImportError:  # pragma: no cover - the driver ships with this package
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, BusError):
        return describe_bus_fault(exc, names, crc_errors, timeouts, detail)
    return f"{type(exc).__name__}: {exc}"


class ServoLoop:
    """One servo loop run: connect, ramp, follow chunks, stop; returns a report dict."""

    def __init__(self, bus, chunks: ChunkRing, states: ChunkRing, control: Control, params: ServoParams,
                 bus_errors: tuple[type[BaseException], ...] = (Exception,),
                 clock: Callable[[], float] = time.monotonic):
        self.bus = bus
        self.chunks = chunks
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
        self.feed = StateFeed(states, n)
        self.inst = TickInstruments(n, params.max_timeline)
        self.watchdog = BusWatchdog(params.watchdog_failed_ticks, bus)
        self.live = LiveStatus()
        self.report: dict[str, Any] = {}
        # Tick state: the command (what the safety filter let through), the measurement, the plan.
        self.cmd = np.zeros(n)
        self.q_meas = np.zeros(n)
        self._target = np.empty(n)
        self.target: Optional[np.ndarray] = None  # this tick's plan target (None: holding)
        self._chunk_buf = np.zeros((chunks.spec.capacity, chunks.spec.dim))
        self.plan: Optional[Trajectory] = None
        self.last_seq = 0
        self.holding = False
        self.ramp_end = math.inf
        self.ticks = 0
        self.uncovered = 0
        self.chunks_adopted = 0
        self.rate: Optional[RateLoop] = None
        self.reason = "stopped"
        self.error: Optional[str] = None
        self.connected = False
        self.torque = False

    # ---- the run -------------------------------------------------------------------------------------
    def run(self) -> dict:
        """Connect, loop until asked to stop (or the watchdog trips, or an error), then the safe stop."""
        self.control.set_phase("starting")
        self.report["scheduling"] = _set_realtime(self.p.realtime_priority)
        try:
            self.connect()
            self.control.set_phase("waiting")
            self._loop()
        except BaseException as exc:  # report, then fall through to the safe stop
            self.reason = "error"
            self.error = f"{type(exc).__name__}: {exc}"
            self.report["traceback"] = traceback.format_exc()
        self.control.set_phase("stopping")
        stop_notes = self.safe_stop()
        self._final_report(stop_notes)
        self.control.set_phase("failed" if self.reason in ("watchdog", "error") else "stopped")
        return self.report

    def connect(self) -> None:
        """Read the pose, make it the goal, then enable torque: the arm holds where it is."""
        self.bus.connect()
        self.connected = True
        js = self.bus.read()
        q0 = np.asarray(js.q, dtype=np.float64)
        if q0.shape != (self.n,):
            raise ValueError(f"bus returned {q0.shape[0]} joint positions, config has {self.n} joints")
        self.cmd[:] = q0
        self.q_meas[:] = q0
        self.safety.reset(q0)
        self.bus.write_goal(self.cmd)  # the goal register may hold anything: make it the present pose first
        self.bus.set_torque(True)
        self.torque = True
        self.feed.push(js.t, q0)
        self.feed.publish()

    def _loop(self) -> None:
        p = self.p
        publish_every = max(1, int(round(p.servo_hz / min(p.state_publish_hz, p.servo_hz))))
        timeline_every = max(1, int(round(p.servo_hz / p.timeline_hz)))
        rate = self.rate = RateLoop(self.period, clock=self.clock, spin=p.spin_us * 1e-6)
        ctl = self.control
        while not ctl.stop_requested():
            deadline = rate.wait()
            self.inst.woke(rate.last_error, rate.slept)
            t_work = self.clock()
            self.ticks += 1
            fault = self.read()
            self.update(deadline)
            fault = self.write() or fault
            self.inst.worked(self.clock() - t_work)
            if fault is None:
                self.watchdog.ok()
            elif self.watchdog.failed(fault):
                self.reason = "watchdog"
                self.error = self.watchdog.message()
                return
            ticks = self.ticks
            if ticks % publish_every == 0:
                self.feed.publish()
            if ticks % timeline_every == 0:
                self.inst.sample(deadline, self.cmd, self.q_meas, self.target)
            if ticks % 16 == 0:
                self._publish_live()

    # ---- read / update / write -----------------------------------------------------------------------
    def read(self) -> Optional[BaseException]:
        """Present positions into the state history; the bus error instead when the read failed."""
        try:
            js = self.bus.read()
        except self.bus_errors as exc:
            return exc
        self.q_meas[:] = js.q
        self.feed.push(js.t, self.q_meas)
        return None

    def update(self, deadline: float) -> None:
        """Adopt the newest chunk if there is one, evaluate the plan at the deadline, filter into `cmd`."""
        h = self.chunks.read_newest(self._chunk_buf, after_seq=self.last_seq)
        if h is not None:
            self._adopt(h, deadline)
        self.target = None
        plan = self.plan
        if plan is not None:
            if plan.evaluate(deadline, self._target):
                self.target = self._target
            else:
                self.uncovered += 1
                self.holding = True
            if self.ticks % 64 == 0:
                self.plan = plan.simplify(deadline)
                if deadline > self.ramp_end:
                    self.control.set_phase("running")
                    self.ramp_end = math.inf
        self.safety.apply(self.target, self.cmd)

    def write(self) -> Optional[BaseException]:
        """The filtered command as the goal position; the bus error instead when the write failed."""
        try:
            self.bus.write_goal(self.cmd)
        except self.bus_errors as exc:
            return exc
        return None

    def _adopt(self, h: ChunkHeader, deadline: float) -> None:
        """Join a new chunk onto the plan: ramp in from the pose at the start, fade in after a hold."""
        p = self.p
        self.last_seq = h.seq
        self.chunks_adopted += 1
        # Lookahead rows (inpainting) shape the tangents at the end of the executed rows; never executed.
        chunk = TimedChunk(self._chunk_buf[: h.length], h.t0, h.dt, p.interpolation, h.seq, lookahead=h.lookahead)
        late = int((deadline - h.t0) // h.dt) + 1 if deadline > h.t0 else 0
        self.inst.adopted(h.seq, deadline, min(late, chunk.n))
        # A chunk that arrives before its first step is due (an action lead longer than the inference) starts then.
        due = max(deadline, h.t0)
        if self.plan is None:
            self.plan = start_ramp(self.cmd, self.joiner.adopt(None, chunk, deadline), due, p.start_ramp_time)
            self.ramp_end = due + p.start_ramp_time
            self.control.set_phase("ramping")
        elif self.holding:  # we decelerated away from the plan: fade in from where we are
            # Joiner.adopt fades in from a Constant whatever the join method (never a jump), from the chunk's first step.
            self.plan = self.joiner.adopt(Constant(self.cmd), chunk, deadline)
            self.holding = False
        else:
            self.plan = self.joiner.adopt(self.plan, chunk, deadline)

    def _publish_live(self) -> None:
        s = self.live
        s.ticks = self.ticks
        s.overruns = self.rate.overruns if self.rate else 0
        s.bus_errors = self.watchdog.total
        s.safety_clamps = self.safety.clamps
        s.joins = len(self.joiner.joins)
        s.uncovered_ticks = self.uncovered
        s.period_error_us = self.inst.last_error_us
        s.chunks = self.chunks_adopted
        s.max_period_error_us = self.inst.max_period_us
        self.control.write_live(s)

    # ---- stop ----------------------------------------------------------------------------------------
    def safe_stop(self) -> dict:
        """Decelerate to a hold (while the bus answers), then torque off per config, then close.

        Returns what it achieved; the runtime reports any part that failed loudly (stderr, exit code)."""
        t_start = self.clock()
        notes: dict[str, Any] = {"decelerated": False, "torque_off": False, "closed": False,
                                 "on_stop": self.p.on_stop, "torque_was_on": self.torque}
        if not self.connected:
            return notes
        stats = getattr(self.bus, "stats", None)
        if callable(stats):
            try:
                self.report["bus_stats"] = _plain(stats())
            except Exception:
                pass
        notes["speed_at_stop_rad_s"] = float(np.max(np.abs(self.safety.v))) if self.n else 0.0
        if self.torque:  # also after a watchdog trip: goal writes need no reply, so they often still arrive
            notes.update(self._decelerate())
        if self.torque and self.p.on_stop == "torque_off":
            try:
                self.bus.set_torque(False)
                notes["torque_off"] = True
            except BaseException as exc:
                notes["torque_off_error"] = describe_fault(exc, self.watchdog.names, detail=True)
        try:
            self.bus.close()
            notes["closed"] = True
        except BaseException as exc:
            notes["close_error"] = f"{type(exc).__name__}: {exc}"
        notes["stop_ms"] = round((self.clock() - t_start) * 1e3, 2)
        notes["done_at"] = self.clock()  # host monotonic (shared by all processes): the runtime times the stop
        return notes

    def _decelerate(self) -> dict:
        """Brake within the acceleration limits to zero speed, on the servo period's absolute deadlines."""
        out: dict[str, Any] = {"decel_writes": 0}
        cmd = np.empty(self.n)
        rate = RateLoop(self.period, clock=self.clock)
        t_end = self.clock() + self.p.stop_decel_time
        try:
            while self.clock() < t_end and np.any(np.abs(self.safety.v) > 1e-6):
                rate.wait()
                self.safety.apply(None, cmd)
                self.bus.write_goal(cmd)
                out["decel_writes"] += 1
            out["speed_after_rad_s"] = float(np.max(np.abs(self.safety.v)))
            out["decelerated"] = out["speed_after_rad_s"] <= 1e-6
            if not out["decelerated"]:
                out["decelerate_error"] = (f"still moving at {out['speed_after_rad_s']:.3f} rad/s after "
                                           f"{self.p.stop_decel_time:g} s")
        except BaseException as exc:
            out["decelerate_error"] = describe_fault(exc, self.watchdog.names, detail=True)
        return out

    def _final_report(self, stop_notes: dict) -> None:
        rate = self.rate
        self.report.update({
            "reason": self.reason,
            "error": self.error,
            "ticks": self.ticks,
            "overruns": rate.overruns if rate else 0,
            "skipped_ticks": rate.skipped if rate else 0,
            "bus_errors": self.watchdog.total,
            "safety_clamps": self.safety.clamps,
            "nonfinite_targets": self.safety.nonfinite,
            "uncovered_ticks": self.uncovered,
            "chunks_executed": self.chunks_adopted,
            "joins": [asdict(j) for j in self.joiner.joins],
            "stop": stop_notes,
        })
        self.report.update(self.inst.report())


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
    from edgedp.runtime.signals import ignore_stop_signals, watch_parent

    # Ctrl-C and SIGTERM reach the whole process group: the parent handles them and asks us to stop through
    # the control block, so the safe stop runs here with the bus still open. If the parent dies without
    # asking (SIGKILL), we stop on our own.
    ignore_stop_signals()
    chunks = ChunkRing.attach(chunk_spec)
    states = ChunkRing.attach(state_spec)
    control = Control.attach(control_name)
    orphan_watch = watch_parent(control.request_stop)
    report: dict = {}
    try:
        report = ServoLoop(make_bus(), chunks, states, control, params, bus_errors).run()
    except BaseException as exc:
        report = {"reason": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        control.set_phase("failed")
    finally:
        orphan_watch.set()
        try:
            conn.send(report)
        except Exception:
            pass
        conn.close()
        chunks.close()
        states.close()
        control.close()
    # Everything this process holds is released above (the port closed by the safe stop); skipping the
    # interpreter's own teardown (module finalizers of numpy, numba, ...) ends it in milliseconds instead of
    # a few hundred, which the runtime's stop waits for.
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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
        with shielded_from_signals():  # the child must survive the group's Ctrl-C / SIGTERM until it stops
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
