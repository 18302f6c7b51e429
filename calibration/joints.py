"""Joint zero offsets, directions and ranges, so joint angle zero matches the kinematic model.

Convention (as in the run config): q = direction · (servo − zero_offset), servo angle in radians.
The bus reports q through the calibration it currently uses (direction d0, zero z0), so the raw
servo angle is recovered as servo = d0·q + z0 before the new calibration is computed.
The user holds a reference pose (default all zeros in the model), then a second pose that differs
on every joint in a known direction; the sign of the raw change gives each joint's direction.
The result is written to the robot's calibration file (YAML), never to servo EEPROM, and read back.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import yaml

from calibration.busio import read_q
from calibration.errors import CalibrationError
from calibration.samples import write_yaml_atomic

MIN_MOVE_RAD = 0.1  # a joint that moved less than this between the two poses was not moved
RATIO_TOLERANCE = 0.5  # measured/expected move outside [0.5, 1.5]: wrong pose or gearing


@dataclass
class JointCalibration:
    names: list[str]
    ids: list[int]
    zero_offset: np.ndarray
    direction: np.ndarray
    range_min: np.ndarray
    range_max: np.ndarray

    def to_dict(self) -> dict:
        return {
            "convention": "q = direction * (servo_angle - zero_offset), radians",
            "joints": [
                {
                    "name": n, "id": int(i), "zero_offset": float(z), "direction": int(d),
                    "range_min": float(lo), "range_max": float(hi),
                }
                for n, i, z, d, lo, hi in zip(self.names, self.ids, self.zero_offset, self.direction,
                                               self.range_min, self.range_max)
            ],
        }


def raw_from_reported(q: np.ndarray, direction: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Servo angles from the bus's reported q under the calibration it currently applies."""
    return np.asarray(direction) * np.asarray(q) + np.asarray(zero)


def solve_zero_and_direction(
    raw_ref: np.ndarray, raw_second: np.ndarray, q_ref: np.ndarray, q_second: np.ndarray, names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Directions from the sign of the raw move, zero offsets so that raw_ref reads q_ref."""
    raw_ref, raw_second = np.asarray(raw_ref, float), np.asarray(raw_second, float)
    q_ref, q_second = np.asarray(q_ref, float), np.asarray(q_second, float)
    expected = q_second - q_ref
    measured = raw_second - raw_ref
    direction = np.ones(len(raw_ref), dtype=int)
    for k, name in enumerate(names):
        if abs(expected[k]) < MIN_MOVE_RAD:
            raise CalibrationError(f"joint '{name}': the second pose must differ from the reference by at least {MIN_MOVE_RAD} rad")
        if abs(measured[k]) < MIN_MOVE_RAD:
            raise CalibrationError(f"joint '{name}' did not move between the two poses ({measured[k]:+.3f} rad); move it and retry")
        ratio = abs(measured[k]) / abs(expected[k])
        if not (1 - RATIO_TOLERANCE <= ratio <= 1 + RATIO_TOLERANCE):
            raise CalibrationError(
                f"joint '{name}' moved {abs(measured[k]):.3f} rad but the poses differ by {abs(expected[k]):.3f} rad; "
                "check the poses (or the servo's gearing)"
            )
        direction[k] = 1 if measured[k] * expected[k] > 0 else -1
    zero = raw_ref - direction * q_ref
    return zero, direction


def model_angles(raw: np.ndarray, zero: np.ndarray, direction: np.ndarray) -> np.ndarray:
    return np.asarray(direction) * (np.asarray(raw) - np.asarray(zero))


def write_joint_calibration(path: str | Path, cal: JointCalibration) -> None:
    write_yaml_atomic(path, cal.to_dict())


def read_joint_calibration(path: str | Path) -> JointCalibration:
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"joint calibration file not found: {path}")
    data = yaml.safe_load(path.read_text())
    try:
        js = data["joints"]
        return JointCalibration(
            [str(j["name"]) for j in js], [int(j["id"]) for j in js],
            np.array([float(j["zero_offset"]) for j in js]), np.array([int(j["direction"]) for j in js]),
            np.array([float(j["range_min"]) for j in js]), np.array([float(j["range_max"]) for j in js]),
        )
    except (TypeError, KeyError, ValueError):
        raise CalibrationError(f"{path}: not a joint calibration file (joints: [{{name, id, zero_offset, direction, range_min, range_max}}])") from None


def verify_joint_calibration(path: str | Path, cal: JointCalibration) -> None:
    """Read the written file back and compare every value (catches a full disk or a bad mount)."""
    back = read_joint_calibration(path)
    same = (
        back.names == cal.names and back.ids == cal.ids
        and np.allclose(back.zero_offset, cal.zero_offset, atol=1e-9)
        and np.array_equal(back.direction, cal.direction)
        and np.allclose(back.range_min, cal.range_min, atol=1e-9)
        and np.allclose(back.range_max, cal.range_max, atol=1e-9)
    )
    if not same:
        raise CalibrationError(f"{path}: read-back differs from what was written")


class JointCalibrator:
    """Drives the sequence on a ServoBus (firmware_bridge.types): torque off, poses, range recording."""

    def __init__(self, bus, names: Sequence[str], ids: Sequence[int],
                 current_direction: Optional[Sequence[int]] = None, current_zero: Optional[Sequence[float]] = None,
                 samples_per_reading: int = 10):
        self.bus = bus
        self.names = list(names)
        self.ids = list(ids)
        n = len(self.names)
        self.d0 = np.asarray(current_direction if current_direction is not None else np.ones(n), float)
        self.z0 = np.asarray(current_zero if current_zero is not None else np.zeros(n), float)
        self.samples_per_reading = samples_per_reading

    def read_raw(self) -> np.ndarray:
        """Average a few readings: the user's hand shakes, the encoder does not."""
        qs = [read_q(self.bus) for _ in range(self.samples_per_reading)]
        q = np.mean(qs, axis=0)
        if len(q) != len(self.names):
            raise CalibrationError(f"the bus reports {len(q)} joints, the config has {len(self.names)}")
        return raw_from_reported(q, self.d0, self.z0)

    def record_range(self, stop: Callable[[], None], period: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
        """Raw min/max while `stop()` blocks (waits for Enter, or sleeps for a fixed time)."""
        lo = np.full(len(self.names), np.inf)
        hi = np.full(len(self.names), -np.inf)
        done = threading.Event()
        lock = threading.Lock()

        def poll() -> None:
            while not done.is_set():
                raw = raw_from_reported(read_q(self.bus), self.d0, self.z0)
                with lock:
                    np.minimum(lo, raw, out=lo)
                    np.maximum(hi, raw, out=hi)
                time.sleep(period)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        try:
            stop()
        finally:
            done.set()
            th.join(timeout=2.0)
        return lo, hi

    def run_interactive(
        self, q_ref: Optional[np.ndarray], q_second: Optional[np.ndarray], range_seconds: float,
        prompt: Callable[[str], str], say: Callable[[str], None],
    ) -> JointCalibration:
        n = len(self.names)
        q_ref = np.zeros(n) if q_ref is None else np.asarray(q_ref, float)
        q_second = q_ref + 0.5 if q_second is None else np.asarray(q_second, float)
        self.bus.set_torque(False)
        say("torque is OFF: support the arm.")
        prompt("Hold the arm in the REFERENCE pose (" + ", ".join(f"{v:+.2f}" for v in q_ref) + " rad), then press Enter ")
        raw_ref = self.read_raw()
        prompt("Now hold the SECOND pose (" + ", ".join(f"{v:+.2f}" for v in q_second) + " rad), then press Enter ")
        raw_second = self.read_raw()
        zero, direction = solve_zero_and_direction(raw_ref, raw_second, q_ref, q_second, self.names)
        if range_seconds > 0:
            say(f"Move every joint through its full range now ({range_seconds:g} s).")
            lo, hi = self.record_range(lambda: time.sleep(range_seconds))
        else:
            lo, hi = self.record_range(lambda: prompt("Move every joint through its full range, then press Enter "))
        a, b = model_angles(lo, zero, direction), model_angles(hi, zero, direction)
        rmin, rmax = np.minimum(a, b), np.maximum(a, b)
        for k, name in enumerate(self.names):
            if rmax[k] - rmin[k] < MIN_MOVE_RAD:
                say(f"warning: joint '{name}' range only {rmax[k] - rmin[k]:.3f} rad; was it moved?")
        return JointCalibration(self.names, self.ids, zero, direction, rmin, rmax)
