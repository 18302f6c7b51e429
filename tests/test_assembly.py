"""edgedp/app.py: robot.calibration_file reaches the wire, and the assembled bus recipe is complete at build time.

The bus is the real driver (dynamixel-sdk) against the Protocol 2.0 emulator in its own process, exactly as
`edgedp run` builds them; what the test reads back is the emulated servo's own angle.
"""
from __future__ import annotations

import copy
import os
import pickle
import time
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from edgedp.app import (SOURCE_CONFIG, SOURCE_DEFAULT, SOURCE_FILE, BusTuning, apply_joint_calibration,
                        build_devices, validate)
from edgedp.cli import main
from edgedp.config import parse_config
from edgedp.errors import UserError
from test_check_parity import GOOD

SHOULDER_ZERO, SHOULDER_DIR = 0.3, -1  # from the calibration file
ELBOW_ZERO = 0.1  # written in the config; the file does not list the elbow


def _cfg(tmp_path, with_file: bool = True):
    data = copy.deepcopy(GOOD)
    data["robot"]["joints"][1]["zero_offset"] = ELBOW_ZERO
    if with_file:
        cal = {"convention": "q = direction * (servo_angle - zero_offset), radians",
               "joints": [{"name": "shoulder", "id": 1, "zero_offset": SHOULDER_ZERO, "direction": SHOULDER_DIR,
                           "range_min": -1.0, "range_max": 1.0}]}
        (tmp_path / "joints.yaml").write_text(yaml.safe_dump(cal))
        data["robot"]["calibration_file"] = "joints.yaml"  # relative to the config's folder
    return parse_config(data, base=tmp_path)


def test_calibration_precedence_file_then_config_then_default(tmp_path):
    joints, sources, notes = apply_joint_calibration(_cfg(tmp_path))
    assert (joints[0].zero_offset, joints[0].direction) == (SHOULDER_ZERO, SHOULDER_DIR)
    assert sources[0] == {"zero_offset": SOURCE_FILE, "direction": SOURCE_FILE}
    assert (joints[1].zero_offset, joints[1].direction) == (ELBOW_ZERO, 1)
    assert sources[1] == {"zero_offset": SOURCE_CONFIG, "direction": SOURCE_DEFAULT}
    assert notes == []
    without = apply_joint_calibration(_cfg(tmp_path, with_file=False))
    assert without[0][0].zero_offset == 0.0 and without[1][0] == {"zero_offset": SOURCE_DEFAULT,
                                                                   "direction": SOURCE_DEFAULT}


def test_a_config_value_the_file_overrides_is_reported(tmp_path):
    cfg = _cfg(tmp_path)
    cfg.robot.joints[0] = cfg.robot.joints[0].model_copy(update={"zero_offset": 0.05})
    cfg.robot.joints[0].model_fields_set.add("zero_offset")
    joints, _, notes = apply_joint_calibration(cfg)
    assert joints[0].zero_offset == SHOULDER_ZERO
    assert notes == ["robot.joints[0].zero_offset = 0.05 is overridden by the calibration file (0.3)"]


def test_check_prints_each_zero_direction_and_where_it_came_from(tmp_path, capsys):
    _cfg(tmp_path)  # writes joints.yaml
    data = copy.deepcopy(GOOD)
    data["robot"]["joints"][1]["zero_offset"] = ELBOW_ZERO
    data["robot"]["calibration_file"] = "joints.yaml"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["check", str(path)]) == 0
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[1:-1]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("│")}
    # joint | id | model | min | max | vel | acc | dir | dir from | zero | zero from
    assert rows["shoulder"][7:] == ["-1", SOURCE_FILE, "0.3000", SOURCE_FILE]
    assert rows["elbow"][7:] == ["1", SOURCE_DEFAULT, "0.1000", SOURCE_CONFIG]


def test_bad_calibration_file_is_one_line(tmp_path):
    cfg = _cfg(tmp_path)
    (tmp_path / "joints.yaml").write_text("joints:\n  - {name: shoulder, id: 1, zero_offset: .nan, direction: 1}\n")
    with pytest.raises(UserError, match=r"^robot.calibration_file: .*joints\[0\]\.zero_offset: \.nan is not a finite"):
        validate(cfg)


def _wait_for(fn, want, tol=0.01, timeout=10.0):
    """Poll until fn() is within tol of want (the emulated motor moves at its profile velocity)."""
    end = time.monotonic() + timeout
    got = fn()
    while np.max(np.abs(np.asarray(got) - want)) > tol and time.monotonic() < end:
        time.sleep(0.02)
        got = fn()
    return np.asarray(got)


@pytest.mark.parametrize("with_file", [True, False], ids=["calibration file", "config only"])
def test_goal_on_the_wire_follows_the_calibration(tmp_path, with_file):
    plan = validate(_cfg(tmp_path, with_file))
    dev = build_devices(plan, BusTuning(torque_off_on_close=True, tick_budget_s=0.05))
    # the recipe is complete before anything starts: a link path, picklable for the servo process
    assert pickle.loads(pickle.dumps(dev.make_bus)) == dev.make_bus
    assert not os.path.exists(dev.make_bus.spec.port)
    for start in dev.starters[:1]:  # the emulator only; the virtual camera is not needed here
        start()
    try:
        assert os.path.realpath(dev.make_bus.spec.port).startswith("/dev/pts/")
        bus = dev.make_bus()
        bus.connect()
        try:
            # the emulated arm was parked at the middle of its range (0 rad) through the same calibration
            np.testing.assert_allclose(bus.read().q, [0.0, 0.0], atol=2e-3)
            bus.set_torque(True)
            q = np.array([0.1, 0.2])
            bus.write_goal(q)
            zero = np.array([SHOULDER_ZERO if with_file else 0.0, ELBOW_ZERO])
            direction = np.array([SHOULDER_DIR if with_file else 1, 1])
            servo_goal = zero + direction * q  # what the servos must be told, in servo radians
            got = _wait_for(lambda: [dev.emulator.position(1), dev.emulator.position(2)], servo_goal)
            np.testing.assert_allclose(got, servo_goal, atol=0.01)
            np.testing.assert_allclose(_wait_for(lambda: bus.read().q, q), q, atol=0.01)
        finally:
            bus.close()
    finally:
        for close in reversed(dev.closers):
            close()
    assert not os.path.exists(dev.make_bus.spec.port)


def test_calibrate_joints_then_run_config_uses_the_file(tmp_path, monkeypatch, capsys):
    """`edgedp calibrate joints` on the bus the assembly point builds, then a config pointing
    robot.calibration_file at the result: the run's bus reads the model angles the user holds."""
    import edgedp.app
    from edgedp.app import build_devices, calibration_bus

    true_zero, true_dir = np.array([0.4, -0.8]), np.array([1, -1])
    data = copy.deepcopy(GOOD)
    data["robot"]["calibration_file"] = "joints.yaml"  # not written yet: calibration may start without it
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    buses = []

    def recording_bus(cfg):
        buses.append(calibration_bus(cfg))
        return buses[-1]

    monkeypatch.setattr(edgedp.app, "calibration_bus", recording_bus)

    def hold(q):  # the user holds the arm at model angles q (servo angle = zero + direction * q)
        for k, sid in enumerate((1, 2)):
            buses[0].emulator.servo(sid).set_external_position(angle_rad=float(true_zero[k] + true_dir[k] * q[k]))
        time.sleep(0.05)

    steps = iter([lambda: hold(np.zeros(2)), lambda: hold(np.full(2, 0.5))])
    monkeypatch.setattr("builtins.input", lambda text="": (next(steps)(), "")[1])
    assert main(["calibrate", "joints", str(cfg_path), "--out", str(tmp_path / "joints.yaml"),
                 "--range-seconds", "0.1"]) == 0
    capsys.readouterr()

    plan = validate(parse_config(yaml.safe_load(cfg_path.read_text()), base=tmp_path))
    assert [s["zero_offset"] for s in plan.joint_sources] == [SOURCE_FILE, SOURCE_FILE]
    np.testing.assert_allclose([j.zero_offset for j in plan.joints], true_zero, atol=0.005)
    assert [j.direction for j in plan.joints] == list(true_dir)
    dev = build_devices(plan, BusTuning(torque_off_on_close=True, tick_budget_s=0.05))
    dev.starters[0]()
    try:
        bus = dev.make_bus()
        bus.connect()
        try:
            # the emulator process parked the arm at the range middle through the calibrated zero
            np.testing.assert_allclose(bus.read().q, [0.0, 0.0], atol=0.01)
            np.testing.assert_allclose(dev.emulator.position(1), true_zero[0], atol=0.01)
        finally:
            bus.close()
    finally:
        for close in reversed(dev.closers):
            close()


def test_run_hands_the_run_settings_to_the_runtime(tmp_path, monkeypatch):
    """telemetry.path/plot/live and duration reach Runtime through app.RunSettings (the --options override)."""
    import edgedp.runtime.lifecycle as lifecycle

    seen = {}

    class Recorder:
        def __init__(self, parts, duration, telemetry_path=None, plot=True, live=True, console=None):
            seen.update(duration=duration, path=telemetry_path, plot=plot, live=live)
            self.parts = parts
            self.tel = SimpleNamespace(servo={})  # what run reads after the run

        def run(self):
            for close in reversed(self.parts.closers):
                close()
            return 0

    monkeypatch.setattr(lifecycle, "Runtime", Recorder)
    data = copy.deepcopy(GOOD)
    data["telemetry"] = {"path": "tel.json", "plot": False, "live": True}
    data["duration"] = 7.0
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 0
    assert seen == {"duration": 7.0, "path": tmp_path / "tel.json", "plot": False, "live": True}
    assert main(["run", str(path), "--duration", "2", "--telemetry", str(tmp_path / "x.json"), "--no-live"]) == 0
    assert seen == {"duration": 2.0, "path": tmp_path / "x.json", "plot": False, "live": False}
