"""The Dynamixel emulator in its own process, for simulated runs and benchmarks.

On a robot the servos are hardware: they answer the bus on time whatever the computer is doing. An emulator
thread inside the runtime process would instead wait for the planner's GIL before answering, and its delays
would show up as servo-loop jitter that a real robot does not have. So simulated runs serve the emulated
servos from a separate process (with real-time priority when the system allows it), on a pseudo-terminal
the bus driver opens by name exactly like a serial port.

The scene renderer needs the true servo angles: the emulator process writes them into a small shared-memory
array every millisecond. Fault injection and state queries (used by tests) go over a pipe.
"""
from __future__ import annotations

import multiprocessing as mp
import secrets
import threading
from multiprocessing import shared_memory
from typing import Any, Optional

import numpy as np

from edgedp.runtime.ring import _attach_shm


def _serve(servos: dict, baud: int, shm_name: str, conn, realtime: bool, initial: dict) -> None:
    import os
    import time

    from edgedp.runtime.signals import ignore_stop_signals
    from firmware_bridge.dynamixel.emulator import Emulator

    # The runtime decides when the emulator stops (after the servo loop's safe stop has reached the servos);
    # Ctrl-C or SIGTERM to the process group must not take the emulated servos away before that.
    ignore_stop_signals()
    if realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(60))
        except (OSError, AttributeError):
            pass
    shm = _attach_shm(shm_name)
    ids = sorted(servos)
    views = [np.ndarray((len(ids),), dtype=np.float64, buffer=shm.buf)]  # dropped before shm.close()
    emu = Emulator(servos=servos, baud=baud)
    for sid, angle in initial.items():
        emu.servo(sid).set_external_position(angle_rad=angle)
    emu.start()
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            p = emu.present_positions_rad()
            pos = views[0]
            for k, sid in enumerate(ids):
                pos[k] = p[sid]
            del pos
            time.sleep(0.001)

    t = threading.Thread(target=publish, daemon=True)
    t.start()
    conn.send(("ready", emu.port_name))
    try:
        while True:
            try:
                cmd, arg = conn.recv()
            except EOFError:
                break
            try:
                if cmd == "stop":
                    break
                if cmd == "faults":
                    emu.faults.set(**arg)
                    conn.send(("ok", None))
                elif cmd == "torque":
                    conn.send(("ok", bool(emu.servo(arg).torque)))
                elif cmd == "position":
                    conn.send(("ok", float(emu.servo(arg).position_rad)))
                elif cmd == "counts":
                    conn.send(("ok", emu.faults.counts.as_dict()))
                else:
                    conn.send(("error", f"unknown command {cmd!r}"))
            except Exception as exc:  # a bad request must not take the emulated bus down
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        stop.set()
        t.join(0.5)
        emu.stop()
        views.clear()
        shm.close()
        try:
            conn.send(("stopped", None))
        except Exception:
            pass


class _FaultsProxy:
    def __init__(self, owner: "EmulatorProcess"):
        self._owner = owner

    def set(self, **kwargs: Any) -> None:
        """Same arguments as firmware_bridge.dynamixel.faults.Faults.set (rates, hardware_error, seed)."""
        self._owner._call("faults", kwargs)

    def counts(self) -> dict:
        return self._owner._call("counts", None)


class EmulatorProcess:
    """Start/stop an emulator process; `port_name` is the pty the bus driver opens."""

    def __init__(self, servos: dict[int, str], baud: int = 1_000_000, initial: Optional[dict[int, float]] = None,
                 realtime: bool = True):
        self.servos = {int(k): str(v) for k, v in servos.items()}
        self.ids = sorted(self.servos)
        self.baud = baud
        self.initial = dict(initial or {})
        self.realtime = realtime
        self.port_name: Optional[str] = None
        self.faults = _FaultsProxy(self)
        self._proc = None
        self._conn = None
        self._lock = threading.Lock()
        self._shm: Optional[shared_memory.SharedMemory] = None
        self._pos: Optional[np.ndarray] = None
        self.final: dict[int, dict] = {}

    def start(self, timeout: float = 20.0) -> "EmulatorProcess":
        ctx = mp.get_context("spawn")
        self._shm = shared_memory.SharedMemory(name=f"edgedp_emu_{secrets.token_hex(6)}", create=True,
                                               size=8 * len(self.ids))
        self._pos = np.ndarray((len(self.ids),), dtype=np.float64, buffer=self._shm.buf)
        self._pos[:] = [self.initial.get(i, 0.0) for i in self.ids]
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, name="edgedp-emulator", daemon=True,
                                 args=(self.servos, self.baud, self._shm.name, child, self.realtime, self.initial))
        from edgedp.runtime.signals import shielded_from_signals

        with shielded_from_signals():  # blocked from the first instruction on (see runtime/signals.py)
            self._proc.start()
        child.close()
        if not self._conn.poll(timeout):
            self.stop()
            raise RuntimeError("the servo emulator process did not start")
        try:
            kind, port = self._conn.recv()
        except EOFError:
            kind, port = "error", "it exited during start"
        if kind != "ready":
            self.stop()
            raise RuntimeError(f"the servo emulator process failed: {port}")
        self.port_name = port
        return self

    def present_positions_rad(self) -> dict[int, float]:
        """{id: servo angle rad}, at most ~1 ms old (what the simulated camera renders)."""
        pos = self._pos
        if pos is None:
            return {i: self.initial.get(i, 0.0) for i in self.ids}
        return {sid: float(pos[k]) for k, sid in enumerate(self.ids)}

    def torque(self, sid: int) -> bool:
        return self._call("torque", sid)

    def position(self, sid: int) -> float:
        return self._call("position", sid)

    def _call(self, cmd: str, arg: Any) -> Any:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("emulator process is not running")
            self._conn.send((cmd, arg))
            kind, value = self._conn.recv()
        if kind != "ok":
            raise RuntimeError(f"emulator: {value}")
        return value

    def stop(self) -> None:
        """Stop serving; the servos' last state stays readable in `final` ({id: {torque, position}})."""
        if self._conn is not None and self._proc is not None and self._proc.is_alive():
            try:
                self.final = {sid: {"torque": self.torque(sid), "position": self.position(sid)} for sid in self.ids}
            except Exception:
                pass
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(("stop", None))
                    self._conn.poll(2.0)
                except (OSError, EOFError, BrokenPipeError):
                    pass
        if self._proc is not None:
            self._proc.join(2.0)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(1.0)
            self._proc = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._shm is not None:
            self._pos = None
            self._shm.close()
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
            self._shm = None
