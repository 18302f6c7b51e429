"""Joint zero/direction/range calibration, on the real dynamixel-sdk bus driver against the pty emulator.

The "user" is simulated by moving the emulated servo horns by hand (torque off), exactly where a person
would hold the arm: servo angle = true_zero + true_direction · model angle.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import yaml

from calibration.errors import CalibrationError
from calibration.joints import (JointCalibration, JointCalibrator, model_angles, read_joint_calibration,
                                solve_zero_and_direction, verify_joint_calibration, write_joint_calibration)
from firmware_bridge.dynamixel.bus import BusSpec, DynamixelBus, JointSpec

TRUE_ZERO = np.array([0.4, -0.8, 1.2])
TRUE_DIR = np.array([1, -1, 1])
NAMES = ["shoulder", "elbow", "wrist"]


def test_zero_and_direction_math():
    q_ref = np.array([0.0, 0.3, -0.2])
    q2 = q_ref + np.array([0.5, -0.4, 0.6])
    raw_ref = TRUE_ZERO + TRUE_DIR * q_ref
    raw2 = TRUE_ZERO + TRUE_DIR * q2
    zero, d = solve_zero_and_direction(raw_ref, raw2, q_ref, q2, NAMES)
    assert np.allclose(zero, TRUE_ZERO) and list(d) == list(TRUE_DIR)
    assert np.allclose(model_angles(raw2, zero, d), q2)
    with pytest.raises(CalibrationError, match="'elbow' did not move"):
        solve_zero_and_direction(raw_ref, np.where([1, 0, 1], raw2, raw_ref), q_ref, q2, NAMES)
    with pytest.raises(CalibrationError, match="'wrist' moved"):
        solve_zero_and_direction(raw_ref, raw2 + np.array([0, 0, 1.0]), q_ref, q2, NAMES)


def test_file_round_trip_and_verify(tmp_path):
    cal = JointCalibration(NAMES, [1, 2, 3], TRUE_ZERO, TRUE_DIR, np.array([-1.0, -2, -3]), np.array([1.0, 2, 3]))
    p = tmp_path / "calib.yaml"
    write_joint_calibration(p, cal)
    verify_joint_calibration(p, cal)
    back = read_joint_calibration(p)
    assert back.names == NAMES and np.allclose(back.zero_offset, TRUE_ZERO)
    data = yaml.safe_load(p.read_text())
    data["joints"][1]["direction"] = 1
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(CalibrationError, match="read-back differs"):
        verify_joint_calibration(p, cal)
    assert not list(tmp_path.glob(".calib.yaml*"))  # no temp files left behind


@pytest.fixture
def bus():
    # The bus starts uncalibrated except joint 3, which carries a stale calibration the tool must undo.
    joints = [JointSpec("shoulder", 1, "xm430-w350"), JointSpec("elbow", 2, "xm430-w350"),
              JointSpec("wrist", 3, "xm430-w350", direction=-1, zero_offset=0.25)]
    b = DynamixelBus(BusSpec("emulator", tick_budget_s=0.05), joints)
    b.connect()
    yield b
    b.close()


def _hold(bus, q_model):
    """The user holds the arm at model angles q (servo angle = true zero + true direction · q)."""
    for k, sid in enumerate((1, 2, 3)):
        bus.emulator.servo(sid).set_external_position(angle_rad=float(TRUE_ZERO[k] + TRUE_DIR[k] * q_model[k]))
    time.sleep(0.02)


def test_interactive_session_on_emulated_bus(bus, tmp_path):
    q_ref = np.zeros(3)
    q2 = np.array([0.5, 0.5, 0.5])
    lo_true = np.array([-1.0, -1.5, -0.7])
    hi_true = np.array([1.2, 0.9, 1.6])
    script = iter([
        lambda: _hold(bus, q_ref),
        lambda: _hold(bus, q2),
        lambda: [(_hold(bus, lo_true + (hi_true - lo_true) * s), time.sleep(0.03)) for s in np.linspace(0, 1, 15)],
    ])
    prompts = []

    def prompt(text):
        prompts.append(text)
        next(script)()
        return ""

    cal = JointCalibrator(bus, NAMES, [1, 2, 3], current_direction=[1, 1, -1], current_zero=[0, 0, 0.25],
                          samples_per_reading=3)
    res = cal.run_interactive(None, None, 0.0, prompt=prompt, say=lambda s: None)
    assert len(prompts) == 3 and "REFERENCE" in prompts[0]
    assert not any(bus.emulator.servo(i).torque for i in (1, 2, 3))  # torque stayed off
    tick = 2 * np.pi / 4096
    assert np.allclose(res.zero_offset, TRUE_ZERO, atol=2 * tick)
    assert list(res.direction) == list(TRUE_DIR)
    assert np.allclose(res.range_min, lo_true, atol=3 * tick) and np.allclose(res.range_max, hi_true, atol=3 * tick)
    out = tmp_path / "calib.yaml"
    write_joint_calibration(out, res)
    verify_joint_calibration(out, res)

    # Applying the result: a bus configured with it reads the model angles the user holds.
    bus.close()
    spec = [JointSpec(n, i, "xm430-w350", direction=int(d), zero_offset=float(z))
            for n, i, d, z in zip(NAMES, (1, 2, 3), res.direction, res.zero_offset)]
    b2 = DynamixelBus(BusSpec("emulator", tick_budget_s=0.05), spec)
    b2.connect()
    try:
        probe = np.array([0.3, -0.6, 0.9])
        for k, sid in enumerate((1, 2, 3)):
            b2.emulator.servo(sid).set_external_position(angle_rad=float(TRUE_ZERO[k] + TRUE_DIR[k] * probe[k]))
        time.sleep(0.02)
        assert np.allclose(b2.read().q, probe, atol=3 * tick)
    finally:
        b2.close()


def test_cli_joints_session(tmp_path, monkeypatch, bus):
    """`edgedp calibrate joints` end to end, with input() answered by the simulated user."""
    from edgedp import cli
    import edgedp.commands.calibrate as cmd

    cfg = {"robot": {"bus": {"port": "emulator"}, "joints": [
        {"name": n, "id": i, "model": "xm430-w350", "min": -3, "max": 3, "max_velocity": 2, "max_acceleration": 10,
         **({"direction": -1, "zero_offset": 0.25} if i == 3 else {})} for n, i in zip(NAMES, (1, 2, 3))]},
        "policy": {"checkpoint": "preset:small"}}
    cfg_path = tmp_path / "robot.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(cmd, "_open_robot", lambda c: bus)
    steps = iter([lambda: _hold(bus, np.zeros(3)), lambda: _hold(bus, np.full(3, 0.5))])
    monkeypatch.setattr("builtins.input", lambda text="": (next(steps)(), "")[1])
    out = tmp_path / "joints.yaml"
    code = cli.main(["calibrate", "joints", str(cfg_path), "--out", str(out), "--range-seconds", "0.1"])
    assert code == 0
    res = read_joint_calibration(out)
    assert list(res.direction) == list(TRUE_DIR)
    assert np.allclose(res.zero_offset, TRUE_ZERO, atol=0.005)

    assert cli.main(["calibrate", "joints", str(cfg_path), "--out", str(out), "--write-eeprom"]) == 2
