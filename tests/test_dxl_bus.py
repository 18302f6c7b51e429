"""The bus driver (real dynamixel-sdk) against the emulator: configuration, conversion, torque, faults."""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest

from firmware_bridge.dynamixel.bus import BusSpec, DynamixelBus, JointSpec
from firmware_bridge.dynamixel.emulator import Emulator
from firmware_bridge.dynamixel.errors import BusConfigError, BusDisconnected, BusOpenError, BusTimeout, HardwareError
from firmware_bridge.dynamixel.units import RAD_PER_TICK
from firmware_bridge.types import ServoBus

BAUD = 1_000_000


def joints(n=3, model="xm430-w350", **kw):
    return [JointSpec(f"j{i}", i, model, **kw) for i in range(1, n + 1)]


def spec(emu, **kw):
    kw.setdefault("tick_budget_s", 0.5)
    return BusSpec(emu.port_name, baud=BAUD, **kw)


def wait_for(cond, timeout=2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def emu():
    with Emulator({1: "xm430-w350", 2: "xm430-w350", 3: "xm430-w350"}, baud=BAUD, seed=3) as e:
        yield e


def test_connect_configures_servos_without_reboot(emu):
    js = [JointSpec("a", 1, "xm430-w350", max_velocity=2.0, max_acceleration=10.0),
          JointSpec("b", 2, "xm430-w350", operating_mode="extended_position"),
          JointSpec("c", 3, "xm430-w350", max_velocity=100.0)]
    emu.servo(2).set("Drive_Mode", 1)
    with DynamixelBus(spec(emu), js) as bus:
        assert isinstance(bus, ServoBus)
        s1, s2, s3 = (emu.servo(i) for i in (1, 2, 3))
        assert [s.get("Return_Delay_Time") for s in (s1, s2, s3)] == [0, 0, 0]
        assert (s1.get("Operating_Mode"), s2.get("Operating_Mode")) == (3, 4)
        assert s2.get("Drive_Mode") == 0
        assert s1.get("Profile_Velocity") == round(2.0 / (0.229 * 2 * math.pi / 60))
        assert s1.get("Profile_Acceleration") == round(10.0 / (214.577 * 2 * math.pi / 3600))
        assert s3.get("Profile_Velocity") == 167  # capped at the servo's Velocity Limit
        assert s2.get("Profile_Velocity") == 0  # no limit configured
        assert not any(s.torque for s in (s1, s2, s3))


def test_model_mismatch_and_missing_servo_are_clear_errors(emu):
    with pytest.raises(BusConfigError, match=r"joint 'j2': config says xl430-w250 \(model 1060\) but servo id 2 "
                                             r"reports model 1020 \(xm430-w350\)"):
        DynamixelBus(spec(emu), [JointSpec("j1", 1, "xm430-w350"), JointSpec("j2", 2, "xl430-w250")]).connect()
    with pytest.raises(BusConfigError, match="servo id 9 did not answer"):
        DynamixelBus(spec(emu), [JointSpec("j9", 9, "xm430-w350")]).connect()
    with pytest.raises(BusOpenError, match="does not exist"):
        DynamixelBus(BusSpec("/dev/ttyNOPE0"), joints(1)).connect()


def test_tick_to_radian_conversion_with_direction_zero_and_homing(emu):
    emu.servo(1).set_external_position(ticks=3072)  # +90 deg of servo angle
    emu.servo(2).set_external_position(ticks=3072)
    emu.servo(3).set("Homing_Offset", -1024)  # Present = actual + Homing Offset
    emu.servo(3).set_external_position(ticks=2048)
    js = [JointSpec("a", 1, "xm430-w350"),
          JointSpec("b", 2, "xm430-w350", direction=-1, zero_offset=0.5),
          JointSpec("c", 3, "xm430-w350")]
    with DynamixelBus(spec(emu), js) as bus:
        q = bus.read().q
        assert q[0] == pytest.approx(math.pi / 2)
        assert q[1] == pytest.approx(-(math.pi / 2 - 0.5))
        assert q[2] == pytest.approx(0.0)  # the servo reads its own homed position
        assert emu.servo(3).position_ticks == 2048


def test_extended_position_reads_signed_multi_turn_values(emu):
    js = [JointSpec("a", 1, "xm430-w350", operating_mode="extended_position", direction=-1, zero_offset=0.25)]
    with DynamixelBus(spec(emu, read_velocity=True), js) as bus:
        emu.servo(1).set_external_position(ticks=-3 * 4096 - 100)
        q = bus.read().q[0]
        servo_angle = (-3 * 4096 - 100 - 2048) * RAD_PER_TICK
        assert q == pytest.approx(-(servo_angle - 0.25))
        bus.set_torque(True)
        target = q + 0.3
        bus.write_goal([target])
        want = round((-target + 0.25) / RAD_PER_TICK + 2048)
        assert wait_for(lambda: emu.servo(1).get("Goal_Position") == want)  # a sync write has no reply
        assert want < 0
        deadline = time.monotonic() + 3
        while abs(bus.read().q[0] - target) > 2 * RAD_PER_TICK and time.monotonic() < deadline:
            time.sleep(0.02)
        assert bus.read().q[0] == pytest.approx(target, abs=2 * RAD_PER_TICK)


def test_write_goal_moves_joints_and_clips_to_servo_limits(emu):
    emu.servo(1).set("Max_Position_Limit", 3000)
    with DynamixelBus(spec(emu, read_velocity=True, read_current=True), joints(3, max_velocity=1.0)) as bus:
        start = bus.read()
        assert np.allclose(start.q, 0.0) and np.allclose(start.dq, 0.0) and np.allclose(start.current, 0.0)
        bus.set_torque(True)
        assert all(emu.servo(i).torque for i in (1, 2, 3))
        bus.write_goal([1.5, -0.8, 0.6])  # joint 1 limited at tick 3000 (1.46 rad)
        time.sleep(0.1)
        mid = bus.read()
        assert (mid.dq[1:] != 0).all() and np.sign(mid.dq[1]) == -1
        target = np.array([(3000 - 2048) * RAD_PER_TICK, -0.8, 0.6])
        assert wait_for(lambda: np.allclose(bus.read().q, target, atol=RAD_PER_TICK), timeout=5.0)
        assert bus.stats()["goal_clipped"] == 1
        with pytest.raises(ValueError):
            bus.write_goal([0.0, float("nan"), 0.0])
        with pytest.raises(ValueError):
            bus.write_goal([0.0, 0.0])


def test_torque_on_holds_the_present_pose_and_close_switches_it_off(emu):
    emu.servo(2).set_external_position(angle_rad=0.7)
    bus = DynamixelBus(spec(emu), joints(3))
    bus.connect()
    emu.servo(1).set("Goal_Position", 100)  # a stale goal must not make the arm jump
    bus.set_torque(True)
    time.sleep(0.1)
    assert bus.read().q == pytest.approx([0.0, 0.7, 0.0], abs=RAD_PER_TICK)
    bus.close()
    assert not any(emu.servo(i).torque for i in (1, 2, 3))
    keep = DynamixelBus(spec(emu, torque_off_on_close=False), joints(3))
    keep.connect()
    keep.set_torque(True)
    keep.close()
    assert all(emu.servo(i).torque for i in (1, 2, 3))


@pytest.mark.parametrize("mode,firmware,expect", [("auto", 52, True), ("auto", 44, False), ("off", 52, False)])
def test_fast_sync_read_chosen_by_firmware(mode, firmware, expect):
    with Emulator({1: "xm430-w350", 2: "xl330-m288"}, baud=BAUD, firmware={2: firmware}) as emu:
        emu.servo(2).set_external_position(ticks=1000)
        js = [JointSpec("a", 1, "xm430-w350"), JointSpec("b", 2, "xl330-m288")]
        with DynamixelBus(spec(emu, fast_sync_read=mode, read_current=True), js) as bus:
            assert bus.fast is expect
            assert bus.read().q[1] == pytest.approx((1000 - 2048) * RAD_PER_TICK)
    with Emulator({1: "xm430-w350"}, baud=BAUD, firmware={1: 44}) as emu:
        with pytest.raises(BusConfigError, match="older than v45"):
            DynamixelBus(spec(emu, fast_sync_read="on"), joints(1)).connect()


def test_hardware_error_is_surfaced_by_name(emu):
    with DynamixelBus(spec(emu), joints(3)) as bus:
        bus.set_torque(True)
        emu.faults.set(hardware_error={2: 0x24})
        with pytest.raises(HardwareError) as info:
            bus.read()
        err = info.value
        assert err.id == 2 and err.names == ["overheating", "overload"]
        assert "servo 2 hardware error: overheating, overload" in str(err)
        assert err.state is not None and err.state.q.shape == (3,)
        assert not emu.servo(2).torque  # the firmware's shutdown switched it off
        assert bus.stats()["hardware_errors"][2] == 1
        with pytest.raises(HardwareError, match="servo 2 hardware error: overheating, overload"):
            bus.set_torque(True)  # refused until the servo is rebooted


def test_health_reports_voltage_temperature_and_errors():
    with Emulator({1: "xm430-w350", 2: "xl330-m288"}, baud=BAUD) as emu:
        with DynamixelBus(spec(emu), [JointSpec("a", 1, "xm430-w350"), JointSpec("b", 2, "xl330-m288")]) as bus:
            emu.faults.set(hardware_error={2: 0x01})
            h = bus.health()
    assert h[1] == {"voltage_v": 12.0, "temperature_c": 35, "hardware_errors": []}
    assert h[2] == {"voltage_v": 5.0, "temperature_c": 35, "hardware_errors": ["input voltage"]}


def test_hardware_errors_at_a_rate_are_all_reported(emu):
    with DynamixelBus(spec(emu), joints(3)) as bus:
        emu.faults.set(hardware_error_rate=0.05, hardware_error_bits=0x01, seed=2)  # input voltage: no shutdown
        seen = 0
        for _ in range(200):
            try:
                bus.read()
            except HardwareError as err:
                assert err.names == ["input voltage"]
                seen += 1
        emu.faults.clear()
    raised = emu.faults.counts.hardware_errors
    assert sum(raised.values()) > 0 and seen > 0
    assert set(bus.stats()["hardware_errors"]) == {1, 2, 3}


def test_bus_vanishing_mid_run_raises_bus_disconnected(emu):
    bus = DynamixelBus(spec(emu, tick_budget_s=0.004), joints(3))
    bus.connect()
    bus.read()
    emu.disconnect()
    with pytest.raises(BusDisconnected, match="disconnected"):
        for _ in range(3):
            bus.read()
            bus.write_goal([0.0, 0.0, 0.0])
    assert not bus.connected  # it knows the port is gone: later calls fail at once, without touching the port
    with pytest.raises(BusDisconnected):
        bus.read()
    bus.close()


def test_delayed_answers_within_the_timeout_are_accepted_and_late_ones_retried(emu):
    with DynamixelBus(spec(emu, timeout_margin_ms=40.0, tick_budget_s=1.0), joints(3)) as bus:
        emu.faults.set(delay_rate=1.0, delay_s=0.005)
        assert bus.read().q == pytest.approx([0, 0, 0])
        assert bus.stats()["timeouts"] == 0
        emu.faults.set(delay_rate=0.0)
    with Emulator({1: "xm430-w350"}, baud=BAUD) as emu1:
        with DynamixelBus(spec(emu1, timeout_margin_ms=20.0, tick_budget_s=0.01, max_retries=2), joints(1)) as bus:
            emu1.faults.set(drop_rate=1.0)
            with pytest.raises(BusTimeout, match=r"servo\(s\) \[1\]"):
                bus.read()
            assert bus.stats()["failed_reads"] == 1


@pytest.mark.parametrize("fast", [False, True])
def test_fault_soak_counts_match_and_no_corrupt_value_is_accepted(fast):
    """1 % CRC corruption + 1 % dropped answers over >= 2000 answers (10 s in benchmarks/bus_cycle.py --soak).

    The status timeout margin is 100 ms so that a busy shared CPU never produces a timeout of its own: every
    timeout the driver counts must be an injected drop."""
    ids = [1, 2, 3, 4]
    with Emulator({i: "xm430-w350" for i in ids}, baud=BAUD, seed=11) as emu:
        bs = spec(emu, fast_sync_read="on" if fast else "off", timeout_margin_ms=100.0, tick_budget_s=5.0,
                  max_retries=50, read_velocity=True, read_current=True)
        with DynamixelBus(bs, joints(4)) as bus:
            rng = np.random.default_rng(5)
            emu.faults.reset_counts()
            emu.faults.set(crc_rate=0.01, drop_rate=0.01)
            reads = 0
            t_end = time.monotonic() + 30.0
            while emu.faults.counts.responses < 2000 and time.monotonic() < t_end:
                # torque off: the joints sit exactly where we put them, so every value read has one right answer;
                # -131073 ticks is FF FF FD FF on the wire (stuffing in every answer that carries it)
                truth = rng.integers(-20000, 20000, size=len(ids))
                if reads % 7 == 0:
                    truth[reads % len(ids)] = -131073
                with emu.lock:
                    for sid, t in zip(ids, truth):
                        emu._find(sid).set_external_position(ticks=float(t))
                q = bus.read().q
                ticks = np.rint(q / RAD_PER_TICK + 2048).astype(np.int64)
                expect = (truth - 2048) * RAD_PER_TICK
                assert np.array_equal(ticks, truth) and np.allclose(q, expect, rtol=0, atol=1e-9), \
                    f"read ticks {ticks} but the servos are at {truth}"
                reads += 1
            emu.faults.clear()
        injected = emu.faults.counts
        got = bus.stats()
    assert injected.responses >= 2000
    assert injected.dropped > 0 and injected.crc_corrupted > 0
    assert got["crc_errors"] == injected.crc_corrupted
    assert got["timeouts"] == injected.dropped
    assert got["failed_reads"] == 0 and got["retries"] >= 1


def test_bus_rejects_bad_specs():
    with pytest.raises(ValueError, match="duplicate"):
        DynamixelBus(BusSpec("x"), [JointSpec("a", 1, "xm430-w350"), JointSpec("b", 1, "xm430-w350")])
    with pytest.raises(KeyError, match="unknown servo model"):
        DynamixelBus(BusSpec("x"), [JointSpec("a", 1, "xm999")])
    with pytest.raises(ValueError, match="fast_sync_read"):
        DynamixelBus(BusSpec("x", fast_sync_read="maybe"), joints(1))


def test_emulator_port_starts_the_built_in_emulator():
    bus = DynamixelBus(BusSpec("emulator", baud=BAUD, tick_budget_s=0.5), joints(2, model="xl330-m288"))
    bus.connect()
    try:
        assert bus.emulator is not None and bus.read().q.shape == (2,)
    finally:
        bus.close()
    assert bus.emulator is None


def test_low_latency_warning_is_one_line_and_not_fatal_on_a_pty(emu, caplog):
    with caplog.at_level(logging.WARNING):
        with DynamixelBus(spec(emu, low_latency=True), joints(1)) as bus:
            bus.read()
    assert not [r for r in caplog.records if "low-latency" in r.getMessage()]  # a pty needs none
