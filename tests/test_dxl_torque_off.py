"""Torque off on a failing bus: every servo is switched off and asked to confirm, and one error names the
servos that did not. Real dynamixel-sdk against the emulator; a failing servo is the emulator's fault
injection dropping every status packet of one id (it still executes what it hears, as a servo whose
reply line is broken does)."""
from __future__ import annotations

import logging

import pytest

from firmware_bridge.dynamixel.bus import BusSpec, DynamixelBus, JointSpec
from firmware_bridge.dynamixel.emulator import Emulator
from firmware_bridge.dynamixel.errors import BusTimeout

BAUD = 1_000_000
IDS = (1, 2, 3, 4)


@pytest.fixture
def emu():
    with Emulator({i: "xm430-w350" for i in IDS}, baud=BAUD, seed=5) as e:
        yield e


def _bus(emu) -> DynamixelBus:
    bus = DynamixelBus(BusSpec(emu.port_name, baud=BAUD, tick_budget_s=0.5),
                       [JointSpec(f"j{i}", i, "xm430-w350") for i in IDS])
    bus.connect()
    bus.set_torque(True)
    assert all(emu.servo(i).torque for i in IDS)
    return bus


@pytest.mark.parametrize("silent", [(1,), (2, 4)])
def test_torque_off_reaches_every_servo_and_names_the_silent_ones(emu, silent):
    bus = _bus(emu)
    try:
        emu.faults.set(silent_ids=set(silent))
        with pytest.raises(BusTimeout) as e:
            bus.set_torque(False)
        assert e.value.ids == silent
        msg = str(e.value)
        assert "\n" not in msg and "torque off not confirmed" in msg
        for sid in silent:
            assert f"servo {sid}" in msg
        for sid in set(IDS) - set(silent):
            assert f"servo {sid}:" not in msg
        # Every servo after the silent one(s) was still switched off, and so were the silent ones themselves
        # (they hear the sync write; only their replies are lost).
        assert not any(emu.servo(i).torque for i in IDS)
        assert bus.connected
    finally:
        emu.faults.clear()
        bus.close()


def test_transient_losses_are_retried_until_every_servo_confirms(emu):
    bus = _bus(emu)
    try:
        emu.faults.reset_counts()
        emu.faults.set(drop_rate=0.5, seed=11)
        before = bus.counters["retries"]
        bus.set_torque(False)  # no error: every servo confirmed within the retries
        assert not any(emu.servo(i).torque for i in IDS)
        assert emu.faults.counts.dropped > 0  # losses happened ...
        assert bus.counters["retries"] > before  # ... and were retried
    finally:
        emu.faults.clear()
        bus.close()


def test_close_after_an_unconfirmed_torque_off_tries_again_and_does_not_raise(emu, caplog):
    bus = _bus(emu)
    emu.faults.set(silent_ids={2})
    with pytest.raises(BusTimeout):
        bus.set_torque(False)
    with caplog.at_level(logging.WARNING, logger="firmware_bridge.dynamixel.bus"):
        bus.close()  # torque_off_on_close: tries again, logs, closes the port anyway
    emu.faults.clear()
    assert not bus.connected
    assert any("servo 2" in r.getMessage() for r in caplog.records)


def test_healthy_bus_switches_off_without_error(emu):
    bus = _bus(emu)
    try:
        bus.set_torque(False)
        assert not any(emu.servo(i).torque for i in IDS)
        bus.set_torque(True)
        assert all(emu.servo(i).torque for i in IDS)
    finally:
        bus.close()
    assert not any(emu.servo(i).torque for i in IDS)
