"""Bus faults as the servo loop reports them: the watchdog names the servo (id and joint name) and the fault
(CRC, timeout, port gone); the safe stop records what it could not do. Real parts: dynamixel-sdk against
the Protocol 2.0 emulator on a pty, faults injected by the emulator (firmware_bridge/dynamixel/faults.py),
the servo loop on a thread with its shared-memory rings. (The hardware-error case and the runtime's
stderr/exit code run in test_runtime_sim.py.)"""
from __future__ import annotations

import time

import numpy as np
import pytest

from edgedp.runtime.control import Control
from edgedp.runtime.ring import ChunkRing
from edgedp.runtime.servo_loop import ServoParams, ServoThread
from firmware_bridge.dynamixel.bus import BusSpec, DynamixelBus, JointSpec
from firmware_bridge.dynamixel.emulator import Emulator
from firmware_bridge.dynamixel.errors import BusError

BAUD = 1_000_000
JOINTS = [JointSpec("shoulder", 1, "xm430-w350"), JointSpec("elbow", 2, "xm430-w350")]


class Rig:
    def __init__(self, emu: Emulator, on_stop: str = "hold", fast_sync_read: str = "auto"):
        self.chunks = ChunkRing.create(8, 2)
        self.states = ChunkRing.create(64, 3, slots=3, timed=False)
        self.control = Control.create()
        params = ServoParams(servo_hz=250, lower=[-1.6, -2.2], upper=[1.6, 2.2], max_velocity=[3.0, 3.0],
                             max_acceleration=[30.0, 30.0], watchdog_failed_ticks=10, on_stop=on_stop,
                             realtime_priority=0)
        bus = DynamixelBus(BusSpec(emu.port_name, baud=BAUD, torque_off_on_close=False, fast_sync_read=fast_sync_read), JOINTS)
        self.servo = ServoThread(lambda: bus, self.chunks, self.states, self.control, params, (BusError, OSError))

    def wait_phase(self, phases: tuple[str, ...], limit: float = 30.0) -> str:
        deadline = time.monotonic() + limit  # guards against a hang; nothing asserts how long it took
        while self.control.phase not in phases and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.control.phase

    def close(self) -> dict:
        self.control.request_stop()
        report = self.servo.join(5.0)
        for x in (self.control, self.chunks, self.states):
            x.close()
        return report


@pytest.fixture
def emu():
    e = Emulator({1: "xm430-w350", 2: "xm430-w350"}, baud=BAUD, seed=3).start()
    yield e
    e.stop()


def _fail_with(emu: Emulator, inject, on_stop: str = "hold", fast_sync_read: str = "auto") -> dict:
    rig = Rig(emu, on_stop, fast_sync_read)
    rig.servo.start()
    try:
        assert rig.wait_phase(("waiting",)) == "waiting"
        # a chunk in flight, so the failure happens while the arm follows a plan
        rig.chunks.publish(np.array([[0.2, -0.2], [0.3, -0.3]]), t0=time.monotonic(), dt=0.1)
        inject(emu)
        assert rig.wait_phase(("failed",)) == "failed"
    finally:
        report = rig.close()
    assert report["reason"] == "watchdog"
    return report


def test_crc_faults_are_named_as_crc_on_every_servo(emu):
    report = _fail_with(emu, lambda e: e.faults.set(crc_rate=1.0))
    msg = report["error"]
    assert msg.startswith("10 consecutive failed bus ticks: servo 1 (shoulder), servo 2 (elbow): "
                          "replies failed their CRC check"), msg
    assert "\n" not in msg


def test_one_silent_servo_is_named_alone_as_a_timeout(emu):
    # plain Sync Read: one status packet per servo, so the driver knows which one stayed silent
    report = _fail_with(emu, lambda e: e.faults.set(silent_ids={2}), fast_sync_read="off")
    msg = report["error"]
    assert msg.startswith("10 consecutive failed bus ticks: servo 2 (elbow): no reply (timeout)"), msg
    assert "servo 1" not in msg and "0 CRC errors" in msg


def test_port_gone_is_named_and_the_safe_stop_says_torque_off_failed(emu):
    """The emulator (the adapter) disappears: the watchdog says 'port gone'; neither the deceleration nor
    torque off can be sent and the safe stop's record says so (the runtime turns that into stderr and exit 4)."""
    report = _fail_with(emu, lambda e: e.stop(), on_stop="torque_off")
    assert "consecutive failed bus ticks: port gone (servo bus on " in report["error"], report["error"]
    stop = report["stop"]
    assert stop["torque_off"] is False and "port gone" in stop["torque_off_error"]
    assert stop["decelerated"] is False and "port gone" in stop["decelerate_error"]


def test_healthy_bus_stops_by_request_with_a_complete_safe_stop(emu):
    """The control case: without a fault the same rig leaves by the stop request, brakes and switches off."""
    rig = Rig(emu, on_stop="torque_off")
    rig.servo.start()
    try:
        assert rig.wait_phase(("waiting",)) == "waiting"
        rig.chunks.publish(np.array([[0.2, -0.2], [0.3, -0.3]]), t0=time.monotonic(), dt=0.1)
        assert rig.wait_phase(("ramping", "running")) in ("ramping", "running")
    finally:
        report = rig.close()
    assert report["reason"] == "stopped" and report["error"] is None
    stop = report["stop"]
    assert stop["decelerated"] is True and stop["torque_off"] is True and stop["closed"] is True
    assert not emu.servo(1).torque and not emu.servo(2).torque


def test_safe_stop_verdict_names_every_missing_step():
    """What the runtime turns into `SAFE STOP INCOMPLETE: ...` lines (stderr) and exit 4."""
    from edgedp.runtime.lifecycle import safe_stop_problems

    complete = {"stop": {"decelerated": True, "torque_off": True, "closed": True, "torque_was_on": True}}
    assert safe_stop_problems(complete, True, "torque_off") == []
    assert safe_stop_problems(None, False, "torque_off") == []  # never started: nothing was opened
    assert "did not report a safe stop" in safe_stop_problems(None, True, "hold")[0]
    failed = {"stop": {"decelerated": False, "decelerate_error": "port gone (x)", "torque_off": False,
                       "torque_off_error": "port gone (x)", "closed": True, "torque_was_on": True}}
    assert safe_stop_problems(failed, True, "torque_off") == ["deceleration failed: port gone (x)",
                                                               "torque off failed: port gone (x)"]
    silent = {"stop": {"decelerated": True, "torque_off": False, "closed": True, "torque_was_on": True}}
    assert safe_stop_problems(silent, True, "torque_off") == ["torque off was not confirmed"]
    assert safe_stop_problems(silent, True, "hold") == []  # hold keeps torque on by design
