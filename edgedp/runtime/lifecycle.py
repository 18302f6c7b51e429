"""Start, supervise and stop one run: devices, servo loop, planner, telemetry.

Start: (the config and the policy were validated by the caller before anything opened) devices start, the
servo loop connects and reads the pose (it refuses to enable torque before that), the planner starts.
Stop, for whatever reason (duration reached, Ctrl-C, SIGTERM, servo watchdog, planner or servo error, a
camera lost): the planner stops publishing, the servo loop decelerates to a hold and applies `on_stop` (hold
or torque off) and closes the port, cameras and simulators stop, telemetry is written. Every thread is
joined with a timeout and a servo process that does not exit is terminated, so nothing is left behind.

Every stop path runs the servo loop's safe stop or says loudly that it could not: when the servo loop did
not report a complete safe stop (it died, deceleration or torque off failed), one line per failure goes to
stderr and the exit code is EXIT_UNSAFE_STOP, whatever else happened. Signals: Ctrl-C and SIGTERM are
handled from the first line of `run()`; the helper processes ignore them (see signals.py) so they are still
there for the safe stop.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from edgedp.runtime.control import Control
from edgedp.runtime.observation import FrameHistory, ObservationWindow, StateHistory
from edgedp.runtime.planner import Planner
from edgedp.runtime.ring import ChunkRing
from edgedp.runtime.servo_loop import ServoParams, ServoProcess, ServoThread
from edgedp.runtime.telemetry import Telemetry

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_WATCHDOG = 3
EXIT_UNSAFE_STOP = 4  # the safe stop could not be completed (or not confirmed): check the arm
EXIT_CAMERA_LOST = 5

SERVO_CONNECT_TIMEOUT_S = 30.0  # a first run compiles the numba kernels, and a spawned process imports numpy
MIN_CAMERA_TIMEOUT_S = 2.0


def camera_timeout(camera: Any, max_observation_age: float, configured: Optional[float] = None) -> float:
    """How long a camera may deliver no new frame before the run calls it lost.

    Configured wins. Otherwise: at least MIN_CAMERA_TIMEOUT_S and 8 observation ages, and longer than the
    driver's own recovery when it declares one (RealSense: frame timeout, then `reconnect_attempts` restarts
    with doubling backoff, each waiting one frame timeout), so a reconnect the driver can still make is not cut
    short."""
    if configured is not None:
        return float(configured)
    t = max(MIN_CAMERA_TIMEOUT_S, 8.0 * max_observation_age)
    s = getattr(camera, "settings", None)
    try:
        frame_t = float(s.timeout_s)
        attempts = int(s.reconnect_attempts)
        backoff = float(s.reconnect_backoff_s)
        recovery = frame_t + attempts * frame_t + backoff * (2 ** attempts - 1)
        t = max(t, recovery + 0.5)
    except (AttributeError, TypeError, ValueError):
        pass
    return t


@dataclass
class RunParts:
    """What edgedp/app.py assembles from the config; the runtime itself picks no concrete classes."""

    policy: Any
    sampler: Callable
    steps: int
    action_period: float
    n_action_steps: int
    state_key: str
    cameras: dict[str, Any]  # policy image key -> Camera
    image_shapes: dict[str, tuple[int, int, int]]
    make_bus: Callable[[], Any]  # picklable when the servo loop runs in its own process
    bus_errors: tuple
    servo: ServoParams
    servo_in_process: bool
    max_observation_age: float
    extra_latency: float = 0.0
    sync: bool = False  # synchronous planning: the arm holds while the policy thinks (evaluation baseline)
    camera_delay: float = 0.0  # s, calibrated: frame times are shifted back by this (robot.time_offset_file)
    command_delay: float = 0.0  # s, calibrated: actuation latency, actions are commanded this much early
    action_lead: float = 0.0  # s: the chunk's "now" action is the target this long after the observation
    inpaint_overlap: str = "soft"  # safety.inpaint_overlap: the guided inpainting's soft tail, or none (planner)
    closers: list[Callable[[], None]] = field(default_factory=list)  # simulators etc., closed last
    starters: list[Callable[[], None]] = field(default_factory=list)  # started first
    config_summary: dict = field(default_factory=dict)
    # A camera that delivers no new frame for this long is lost: the run stops (exit 5) naming it. None:
    # derived (see camera_timeout()), long enough for the driver's own reconnect attempts.
    camera_timeout: Optional[float] = None
    # Called on the planner thread with each published chunk (runtime/planner.PublishedChunk): `edgedp run
    # --record` and `--view` hand it to their own threads. Must not block.
    chunk_listeners: list[Callable[[Any], None]] = field(default_factory=list)


@dataclass
class _Rig:
    """The per-run plumbing between the runtime's parts (created in `run`, released at its end)."""

    chunks: ChunkRing
    states: ChunkRing
    control: Control
    frames: dict[str, FrameHistory]
    planner: Planner
    servo: Any = None
    started_cams: list = field(default_factory=list)


class Runtime:
    def __init__(self, parts: RunParts, duration: Optional[float], telemetry_path: Optional[Path] = None,
                 plot: bool = True, live: bool = True, console=None):
        self.parts = parts
        self.duration = duration
        self.telemetry_path = Path(telemetry_path) if telemetry_path else None
        self.plot = plot
        self.live = live
        self.console = console
        mode = "process" if parts.servo_in_process else "thread"
        self.tel = Telemetry(parts.servo.servo_hz, mode, parts.config_summary)
        self.tel.mode_reason = _mode_reason(parts)
        self._stop = threading.Event()
        self._stop_reason = "duration"
        self.stop_seconds: Optional[float] = None
        self.alerts: list[str] = []  # one line each, printed to stderr at the end (and kept in telemetry)
        self.camera_lost: Optional[str] = None

    # ---- signals ---------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
        self._stop.set()

    def _install_signals(self) -> dict:
        old = {}
        if threading.current_thread() is not threading.main_thread():
            return old
        for sig, name in ((signal.SIGINT, "ctrl-c"), (signal.SIGTERM, "sigterm")):
            old[sig] = signal.signal(sig, lambda *_a, _n=name: self.request_stop(_n))
        return old

    # ---- the run -----------------------------------------------------------------------------------
    def run(self) -> int:
        """Start, supervise, stop; returns the exit code. Ctrl-C/SIGTERM are handled throughout, the
        telemetry write included (a second Ctrl-C cannot leave a half-written file)."""
        old_handlers = self._install_signals()
        old_switch = sys.getswitchinterval()
        try:
            if not self.parts.servo_in_process:
                # A servo thread waiting for the GIL waits up to one switch interval (5 ms by default) while
                # the planner runs Python code; 0.5 ms bounds that wait at a small cost in planner throughput.
                sys.setswitchinterval(0.0005)
            rig = self._make_rig()
            code = EXIT_OK
            t_begin = time.monotonic()
            try:
                t_begin = self._start(rig)
                code = self._supervise(rig, t_begin)
            except Exception as exc:
                self._stop_reason = "error"
                self.tel.notes.append(f"runtime error: {type(exc).__name__}: {exc}")
                self.alerts.append(f"runtime error: {type(exc).__name__}: {exc}")
                code = EXIT_ERROR
            finally:
                code = self._shutdown(rig, code, t_begin)
            self._finish_output()
            return code
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            sys.setswitchinterval(old_switch)

    def _make_rig(self) -> _Rig:
        p = self.parts
        n_obs = p.policy.n_obs_steps
        keep = (n_obs - 1) * p.action_period + p.max_observation_age + 0.5
        state_cap = max(16, int(p.servo.servo_hz * keep))
        n_joints = len(p.servo.lower)
        from edgedp.runtime.conditioning import ChunkConditioner  # as the planner imports it (pulls in models/)

        # The executed slice, plus the lookahead knots an inpainting planner sends along (Planner.lookahead).
        lookahead = ChunkConditioner.lookahead_for(p.policy, n_obs - 1, p.n_action_steps)
        chunks = ChunkRing.create(capacity=max(p.n_action_steps, 1) + lookahead, dim=n_joints, slots=4)
        states = ChunkRing.create(capacity=state_cap, dim=1 + n_joints, slots=3, timed=False)
        control = Control.create()
        frames = {k: FrameHistory(k, cam, keep, camera_delay=p.camera_delay) for k, cam in p.cameras.items()}
        window = ObservationWindow(n_obs, p.action_period, p.max_observation_age, StateHistory(states), p.state_key,
                                   frames, p.image_shapes)
        planner = Planner(p.policy, p.sampler, window, chunks, self.tel, p.action_period, p.n_action_steps, p.steps,
                          extra_latency=p.extra_latency, sync=p.sync, command_delay=p.command_delay,
                          action_lead=p.action_lead, inpaint_overlap=p.inpaint_overlap)
        planner.listeners.extend(p.chunk_listeners)
        return _Rig(chunks, states, control, frames, planner)

    def _start(self, rig: _Rig) -> float:
        """Devices, cameras, the servo loop; the planner once the servo loop holds the arm. Returns t_begin."""
        p = self.parts
        if self.console is not None:
            self.console.print("starting devices and the servo loop (Ctrl-C stops safely from here on)", highlight=False)
            _flush(self.console)
        for start in p.starters:
            if self._stop.is_set():
                return time.monotonic()
            start()
        for k, cam in p.cameras.items():
            if self._stop.is_set():
                return time.monotonic()
            cam.start()
            rig.started_cams.append(cam)
            rig.frames[k].start()
        if self._stop.is_set():
            return time.monotonic()
        runner = ServoProcess if p.servo_in_process else ServoThread
        rig.servo = runner(p.make_bus, rig.chunks, rig.states, rig.control, p.servo, p.bus_errors)
        rig.servo.start()
        deadline = time.monotonic() + SERVO_CONNECT_TIMEOUT_S
        while rig.control.phase == "starting" and rig.servo.alive() and not self._stop.is_set():
            if time.monotonic() > deadline:
                raise RuntimeError(f"servo loop did not connect within {SERVO_CONNECT_TIMEOUT_S:g} s")
            self._stop.wait(0.01)
        if rig.control.phase in ("waiting", "ramping", "running") and not self._stop.is_set():
            rig.planner.start()
            if self.console is not None:
                self.console.print(f"servo loop holding the arm ({self.tel.mode}: {self.tel.mode_reason}, "
                                   f"{p.servo.servo_hz:g} Hz); planner started; Ctrl-C to stop", highlight=False)
                _flush(self.console)
        return time.monotonic()

    def _supervise(self, rig: _Rig, t_begin: float) -> int:
        last_print = 0.0
        live = self.live and self.console is not None
        timeouts = {k: camera_timeout(self.parts.cameras[k], self.parts.max_observation_age,
                                      self.parts.camera_timeout) for k in rig.frames}
        code = EXIT_OK
        while not self._stop.is_set():
            now = time.monotonic()
            if self.duration is not None and now - t_begin >= self.duration:
                self.request_stop("duration")
                break
            phase = rig.control.phase
            if phase in ("failed", "stopped") or not rig.servo.alive():
                self.request_stop("servo")
                break
            if rig.planner.fatal is not None:
                self.request_stop("planner error")
                break
            lost = self._lost_camera(rig.frames, timeouts, now)
            if lost is not None:
                self.camera_lost = lost
                self.alerts.append(lost + "; the arm was held and the run stopped")
                self.request_stop("camera lost")
                code = EXIT_CAMERA_LOST
                break
            if live and now - last_print > 0.25:
                last_print = now
                line = self.tel.live_line(rig.control.read_live(), phase, now - t_begin)
                line = line[: max(20, self.console.width - 1)].ljust(max(20, self.console.width - 1))  # one row
                self.console.print(line, end="\r", highlight=False, soft_wrap=True)
            self._stop.wait(0.05)
        if live:
            self.console.print()
        return code

    def _lost_camera(self, frames: dict[str, FrameHistory], timeouts: dict[str, float], now: float) -> Optional[str]:
        """One line naming the first camera that delivered no new frame within its timeout (None: all fine)."""
        names = self.parts.config_summary.get("cameras", {})
        for k, h in frames.items():
            silent = h.silent_for(now)
            if silent is not None and silent > timeouts[k]:
                why = f" (last driver error: {h.last_error})" if h.last_error else ""
                return (f"camera '{names.get(k, k)}' (feeding {k}) lost: no new frame for {silent:.1f} s "
                        f"(timeout {timeouts[k]:.1f} s){why}")
        return None

    # ---- stop --------------------------------------------------------------------------------------
    def _shutdown(self, rig: _Rig, code: int, t_begin: float) -> int:
        """Stop everything in order (servo safe stop first), time each part, decide the exit code."""
        p = self.parts
        t_stop = time.monotonic()
        timing: dict[str, float] = {}
        rig.planner.stop()
        rig.control.request_stop()
        report = None
        if rig.servo is not None:
            report = rig.servo.join(2.0)
            timing["servo_ms"] = (time.monotonic() - t_stop) * 1e3
            if rig.servo.alive():
                self.tel.notes.append("servo loop did not stop in time; terminated")
                rig.servo.kill()
        t = time.monotonic()
        rig.planner.join(max(0.05, 0.9 - (t - t_stop)))
        timing["planner_ms"] = (time.monotonic() - t) * 1e3
        t = time.monotonic()
        self._stop_cameras(rig)
        timing["cameras_ms"] = (time.monotonic() - t) * 1e3
        t = time.monotonic()
        for close in reversed(p.closers):
            _quiet(close)
        timing["devices_ms"] = (time.monotonic() - t) * 1e3
        self.stop_seconds = time.monotonic() - t_stop
        timing["total_ms"] = self.stop_seconds * 1e3
        done_at = ((report or {}).get("stop") or {}).get("done_at")
        if done_at is not None:  # stop requested -> arm held and on_stop applied (both clocks are CLOCK_MONOTONIC)
            timing["held_ms"] = (done_at - t_stop) * 1e3
        self.tel.stop_timing = {k: round(v, 1) for k, v in timing.items()}
        self.tel.servo = report or {}
        self.tel.sim_servos_after_stop = _sim_final(p)
        code = self._exit_code(code, report, rig.planner, rig.servo is not None)
        self.tel.duration_s = t_stop - t_begin
        self.tel.stopped_by = self._stop_reason
        self.tel.notes.append(f"stop took {self.stop_seconds * 1000:.0f} ms")
        _quiet(rig.control.close)
        for ring in (rig.chunks, rig.states):
            if not rig.planner.defer_until_exit(ring.close):
                _quiet(ring.close)
        if rig.planner.alive():
            self.tel.notes.append("planner was finishing an inference when the run stopped (arm already held)")
        self.tel.alerts = list(self.alerts)
        self.tel.exit_code = code
        return code

    def _stop_cameras(self, rig: _Rig) -> None:
        names = self.parts.config_summary.get("cameras", {})  # image feature -> camera name (from the config)
        for k, h in rig.frames.items():
            h.stop(0.2)
            driver = None
            counters = getattr(self.parts.cameras[k], "counters", None)
            if callable(counters):
                try:
                    driver = counters()
                except Exception:
                    pass
            self.tel.record_camera(str(names.get(k, k)), k, h.frames_seen, h.errors, driver)
        for cam in rig.started_cams:
            _quiet(cam.stop)

    def _exit_code(self, code: int, report: Optional[dict], planner: Planner, servo_started: bool) -> int:
        """The run's exit code; an incomplete safe stop (EXIT_UNSAFE_STOP) overrides everything else."""
        reason = (report or {}).get("reason")
        if reason == "watchdog":
            self._stop_reason = "watchdog"
            code = EXIT_WATCHDOG
            self.alerts.append(f"servo loop stopped by its watchdog: {report.get('error')}")
        elif reason == "error":
            self._stop_reason = "servo error"
            code = EXIT_ERROR
            self.alerts.append(f"servo loop failed: {report.get('error')}")
        if planner.fatal is not None and code == EXIT_OK:
            self._stop_reason = "planner error"
            code = EXIT_ERROR
            self.alerts.append(f"planner failed: {type(planner.fatal).__name__}: {planner.fatal}")
        unsafe = safe_stop_problems(report, servo_started, self.parts.servo.on_stop)
        for problem in unsafe:
            self.alerts.append(f"SAFE STOP INCOMPLETE: {problem}")
        return EXIT_UNSAFE_STOP if unsafe else code

    def _finish_output(self) -> None:
        if self.console is not None:
            self.console.print(self.tel.summary_table())
            for e in self.tel.planner_errors[:3]:
                self.console.print(f"[red]planner: {e}[/]")
        for line in self.alerts:  # loud: stderr, one line each (the exit code says it too)
            print(f"edgedp run: {line}", file=sys.stderr, flush=True)
        if self.telemetry_path is not None:
            self.tel.write_json(self.telemetry_path)
            if self.plot:
                try:
                    self.tel.plot(self.telemetry_path.with_suffix(".png"))
                except Exception as exc:  # the JSON is the record; a plot failure is only noted
                    print(f"telemetry plot failed: {exc}", file=sys.stderr)


def safe_stop_problems(report: Optional[dict], servo_started: bool, on_stop: str) -> list[str]:
    """What the servo loop's safe stop did not achieve, one line each (empty: it completed).

    Nothing to do when the servo loop never started (no port was opened) or never connected."""
    if not servo_started:
        return []
    if not report:
        return ["the servo loop did not report a safe stop (it did not stop in time, or its process died): the "
                "arm may not have been brought to a controlled stop and torque may still be on"]
    notes = report.get("stop") or {}
    if not notes:
        return ["the servo loop reported no safe stop: the arm's state is unknown"]
    problems = []
    if notes.get("decelerate_error"):
        problems.append(f"deceleration failed: {notes['decelerate_error']}")
    if on_stop == "torque_off" and notes.get("torque_off_error"):
        problems.append(f"torque off failed: {notes['torque_off_error']}")
    elif on_stop == "torque_off" and notes.get("torque_was_on") and not notes.get("torque_off"):
        problems.append("torque off was not confirmed")
    if notes.get("close_error"):
        problems.append(f"closing the bus failed: {notes['close_error']}")
    return problems


def _mode_reason(parts: RunParts) -> str:
    if parts.servo_in_process:
        return "own process (rates.servo_in_process: true), the planner cannot delay its ticks"
    return ("thread (rates.servo_in_process: false): shares the GIL with the planner, whose Python code can "
            "delay ticks by up to the 0.5 ms switch interval")


def _sim_final(parts: RunParts) -> Optional[dict]:
    """The emulated servos' torque and position after the stop (sim runs): the bus's side of the safe stop."""
    emu = getattr(parts, "emulator", None)
    final = getattr(emu, "final", None)
    if not final:
        return None
    return {str(k): {"torque": bool(v.get("torque")), "position_rad": float(v.get("position", 0.0))}
            for k, v in final.items()}


def _flush(console) -> None:
    try:
        console.file.flush()
    except Exception:
        pass


def _quiet(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:
        pass
