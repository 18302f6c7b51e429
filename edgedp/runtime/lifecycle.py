"""Start, supervise and stop one run: devices, servo loop, planner, telemetry.

Start: (the config and the policy were validated by the caller before anything opened) devices start, the
servo loop connects and reads the pose (it refuses to enable torque before that), the planner starts.
Stop, for whatever reason (duration reached, Ctrl-C, SIGTERM, servo watchdog, planner or servo error): the
planner stops publishing, the servo loop decelerates to a hold and applies `on_stop` (hold or torque off)
and closes the port, cameras and simulators stop, telemetry is written. Every thread is joined with a
timeout and a servo process that does not exit is terminated, so nothing is left behind; the whole stop
takes well under a second.
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
    closers: list[Callable[[], None]] = field(default_factory=list)  # simulators etc., closed last
    starters: list[Callable[[], None]] = field(default_factory=list)  # started first
    config_summary: dict = field(default_factory=dict)


class Runtime:
    def __init__(self, parts: RunParts, duration: Optional[float], telemetry_path: Optional[Path] = None,
                 plot: bool = True, live: bool = True, console=None):
        self.parts = parts
        self.duration = duration
        self.telemetry_path = Path(telemetry_path) if telemetry_path else None
        self.plot = plot
        self.live = live
        self.console = console
        self.tel = Telemetry(parts.servo.servo_hz, "process" if parts.servo_in_process else "thread",
                             parts.config_summary)
        self._stop = threading.Event()
        self._stop_reason = "duration"
        self.stop_seconds: Optional[float] = None

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
        p = self.parts
        n_obs = p.policy.n_obs_steps
        keep = (n_obs - 1) * p.action_period + p.max_observation_age + 0.5
        state_cap = max(16, int(p.servo.servo_hz * keep))
        n_joints = len(p.servo.lower)
        chunks = ChunkRing.create(capacity=max(p.n_action_steps, 1), dim=n_joints, slots=4)
        states = ChunkRing.create(capacity=state_cap, dim=1 + n_joints, slots=3)
        control = Control.create()
        frames = {k: FrameHistory(k, cam, keep, camera_delay=p.camera_delay) for k, cam in p.cameras.items()}
        window = ObservationWindow(n_obs, p.action_period, p.max_observation_age, StateHistory(states), p.state_key,
                                   frames, p.image_shapes)
        planner = Planner(p.policy, p.sampler, window, chunks, self.tel, p.action_period, p.n_action_steps, p.steps,
                          extra_latency=p.extra_latency, sync=p.sync, command_delay=p.command_delay)
        old_handlers = self._install_signals()
        old_switch = sys.getswitchinterval()
        if not p.servo_in_process:
            # A servo thread waiting for the GIL waits up to one switch interval (5 ms by default) while the
            # planner runs Python code; 0.5 ms bounds that wait at a small cost in planner throughput.
            sys.setswitchinterval(0.0005)
        servo = None
        started_cams: list = []
        t_begin = time.monotonic()
        code = EXIT_OK
        try:
            for start in p.starters:
                start()
            for k, cam in p.cameras.items():
                cam.start()
                started_cams.append(cam)
                frames[k].start()
            runner = ServoProcess if p.servo_in_process else ServoThread
            servo = runner(p.make_bus, chunks, states, control, p.servo, p.bus_errors)
            servo.start()
            # The planner starts once the servo loop holds the arm (pose read, torque on).
            # Generous: a first run compiles the numba kernels, and a spawned servo process imports numpy.
            deadline = time.monotonic() + 30.0
            while control.phase == "starting" and servo.alive() and not self._stop.is_set():
                if time.monotonic() > deadline:
                    raise RuntimeError("servo loop did not connect within 30 s")
                time.sleep(0.01)
            if control.phase in ("waiting", "ramping", "running"):
                planner.start()
                if self.console is not None:
                    self.console.print(f"servo loop holding the arm ({self.tel.mode}, {p.servo.servo_hz:g} Hz); "
                                       f"planner started; Ctrl-C to stop", highlight=False)
                    _flush(self.console)
            t_begin = time.monotonic()
            code = self._supervise(control, servo, planner, t_begin)
        except Exception as exc:
            self._stop_reason = "error"
            self.tel.notes.append(f"runtime error: {type(exc).__name__}: {exc}")
            code = EXIT_ERROR
        finally:
            t_stop = time.monotonic()
            planner.stop()
            control.request_stop()
            report = None
            if servo is not None:
                report = servo.join(0.8)
                if servo.alive():
                    self.tel.notes.append("servo loop did not stop in time; terminated")
                    servo.kill()
            planner.join(max(0.05, 0.9 - (time.monotonic() - t_stop)))
            if not planner.alive():
                planner.detach_step_timer()  # also when it never started
            names = p.config_summary.get("cameras", {})  # image feature -> camera name (from the config)
            for k, h in frames.items():
                h.stop(0.2)
                driver = None
                counters = getattr(p.cameras[k], "counters", None)
                if callable(counters):
                    try:
                        driver = counters()
                    except Exception:
                        pass
                self.tel.record_camera(str(names.get(k, k)), k, h.frames_seen, h.errors, driver)
            for cam in started_cams:
                _quiet(cam.stop)
            for close in reversed(p.closers):
                _quiet(close)
            self.stop_seconds = time.monotonic() - t_stop
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            sys.setswitchinterval(old_switch)
            self.tel.servo = report or {}
            if report and report.get("reason") == "watchdog":
                self._stop_reason = "watchdog"
                code = EXIT_WATCHDOG
            elif report and report.get("reason") == "error":
                self._stop_reason = "servo error"
                code = EXIT_ERROR
            if planner.fatal is not None and code == EXIT_OK:
                self._stop_reason = "planner error"
                code = EXIT_ERROR
            self.tel.duration_s = t_stop - t_begin
            self.tel.stopped_by = self._stop_reason
            self.tel.exit_code = code
            self.tel.notes.append(f"stop took {self.stop_seconds * 1000:.0f} ms")
            _quiet(control.close)
            for ring in (chunks, states):
                if not planner.defer_until_exit(ring.close):
                    _quiet(ring.close)
            if planner.alive():
                self.tel.notes.append("planner was finishing an inference when the run stopped (arm already held)")
        self._finish_output()
        return code

    def _supervise(self, control: Control, servo, planner: Planner, t_begin: float) -> int:
        last_print = 0.0
        live = self.live and self.console is not None
        while not self._stop.is_set():
            now = time.monotonic()
            if self.duration is not None and now - t_begin >= self.duration:
                self.request_stop("duration")
                break
            phase = control.phase
            if phase in ("failed", "stopped") or not servo.alive():
                self.request_stop("servo")
                break
            if planner.fatal is not None:
                self.request_stop("planner error")
                break
            if live and now - last_print > 0.25:
                last_print = now
                line = self.tel.live_line(control.read_live(), phase, now - t_begin)
                line = line[: max(20, self.console.width - 1)].ljust(max(20, self.console.width - 1))  # one row
                self.console.print(line, end="\r", highlight=False, soft_wrap=True)
            self._stop.wait(0.05)
        if live:
            self.console.print()
        return EXIT_OK

    def _finish_output(self) -> None:
        if self.console is not None:
            self.console.print(self.tel.summary_table())
            err = self.tel.servo.get("error")
            if err:
                self.console.print(f"[red]servo loop stopped: {err}[/]")
            for e in self.tel.planner_errors[:3]:
                self.console.print(f"[red]planner: {e}[/]")
        if self.telemetry_path is not None:
            self.tel.write_json(self.telemetry_path)
            if self.plot:
                try:
                    self.tel.plot(self.telemetry_path.with_suffix(".png"))
                except Exception as exc:  # the JSON is the record; a plot failure is only noted
                    print(f"telemetry plot failed: {exc}", file=sys.stderr)


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
