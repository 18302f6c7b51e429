"""Servo models the driver and the emulator know: model numbers, units, physical limits, default overrides.

Model numbers are those ROBOTIS publishes (DynamixelSDK / dynamixel_workbench item tables). Names are the
lowercase keys used by the robot config (edgedp.config.SERVO_MODELS). Physical speeds are no-load speeds at
the nominal voltage; the emulator caps motion at them when the profile leaves it unlimited.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from firmware_bridge.dynamixel.control_table import X_SERIES, ControlTable, Register

TICKS_PER_REV = 4096
RAD_PER_TICK = 2.0 * math.pi / TICKS_PER_REV
# Velocity registers: 0.229 rpm per unit.
RAD_S_PER_VELOCITY_UNIT = 0.229 * 2.0 * math.pi / 60.0
# Profile Acceleration: 214.577 rev/min^2 per unit.
RAD_S2_PER_ACCEL_UNIT = 214.577 * 2.0 * math.pi / 3600.0
# Fast Sync Read (0x8A) is answered by X-series firmware from this version on.
FAST_SYNC_READ_MIN_FIRMWARE = 45


@dataclass(frozen=True)
class ServoModel:
    name: str
    number: int
    current_unit_a: Optional[float]  # amperes per Present_Current unit; None: the model reports load, not current
    no_load_rpm: float
    nominal_voltage: float
    stall_current_a: float
    overrides: dict = field(default_factory=dict)
    default_firmware: int = 52
    table: ControlTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        regs = []
        for r in X_SERIES:
            if self.current_unit_a is None and r.name in ("Current_Limit", "Goal_Current"):
                continue
            if self.current_unit_a is None and r.name == "Present_Current":
                r = Register("Present_Load", r.address, r.size, r.eeprom, r.writable, 0, r.lo, r.hi, True)
            if r.name in self.overrides:
                r = _override(r, self.overrides[r.name])
            regs.append(r)
        regs = [_override(r, {"default": self.number}) if r.name == "Model_Number" else r for r in regs]
        object.__setattr__(self, "table", ControlTable(tuple(regs)))

    @property
    def max_speed_rad_s(self) -> float:
        return self.no_load_rpm * 2.0 * math.pi / 60.0


def _override(r: Register, spec) -> Register:
    if isinstance(spec, int):
        spec = {"default": spec}
    return Register(r.name, r.address, r.size, r.eeprom, r.writable, spec.get("default", r.default),
                    spec.get("lo", r.lo), spec.get("hi", r.hi), r.signed)


_V12 = {"Max_Voltage_Limit": {"default": 160, "lo": 95, "hi": 160}, "Min_Voltage_Limit": {"default": 95, "lo": 95, "hi": 160}}
_V5 = {"Max_Voltage_Limit": {"default": 70, "lo": 31, "hi": 70}, "Min_Voltage_Limit": {"default": 35, "lo": 31, "hi": 70},
       "Temperature_Limit": 70}
_V24 = {"Max_Voltage_Limit": {"default": 300, "lo": 150, "hi": 300}, "Min_Voltage_Limit": {"default": 150, "lo": 150, "hi": 300}}
_XL330_CURRENT = {"Current_Limit": {"default": 1750, "hi": 1750}, "Goal_Current": {"lo": -1750, "hi": 1750}}
_XC330_CURRENT = {"Current_Limit": {"default": 1193, "hi": 2352}, "Goal_Current": {"lo": -2352, "hi": 2352}}
_X540_CURRENT = {"Current_Limit": {"default": 2047, "hi": 2047}, "Goal_Current": {"lo": -2047, "hi": 2047}}

MODELS: dict[str, ServoModel] = {m.name: m for m in (
    ServoModel("xl330-m077", 1190, 0.001, 383.0, 5.0, 1.47, {**_V5, **_XL330_CURRENT, "Velocity_Limit": 1023, "Position_P_Gain": 400}),
    ServoModel("xl330-m288", 1200, 0.001, 104.0, 5.0, 1.47, {**_V5, **_XL330_CURRENT, "Velocity_Limit": 445, "Position_P_Gain": 400}),
    ServoModel("xc330-m181", 1230, 0.001, 129.0, 5.0, 1.8, {**_V5, **_XC330_CURRENT, "Velocity_Limit": 445, "Position_P_Gain": 400}),
    ServoModel("xc330-m288", 1240, 0.001, 81.0, 5.0, 1.8, {**_V5, **_XC330_CURRENT, "Velocity_Limit": 445, "Position_P_Gain": 400}),
    ServoModel("xc330-t181", 1210, 0.001, 129.0, 12.0, 1.8, {**_V12, **_XC330_CURRENT, "Velocity_Limit": 445, "Position_P_Gain": 400}),
    ServoModel("xc330-t288", 1220, 0.001, 81.0, 12.0, 1.8, {**_V12, **_XC330_CURRENT, "Velocity_Limit": 445, "Position_P_Gain": 400}),
    ServoModel("xl430-w250", 1060, None, 57.0, 11.1, 1.4, {"Max_Voltage_Limit": {"default": 140, "lo": 60, "hi": 140},
                                                            "Min_Voltage_Limit": {"default": 60, "lo": 60, "hi": 140},
                                                            "Temperature_Limit": 72, "Velocity_Limit": 265, "Position_P_Gain": 640}),
    ServoModel("xm430-w350", 1020, 0.00269, 46.0, 12.0, 4.1, {**_V12, "Velocity_Limit": 167}),
    ServoModel("xm540-w270", 1120, 0.00269, 30.0, 12.0, 7.6, {**_V12, **_X540_CURRENT, "Velocity_Limit": 128}),
    ServoModel("xh540-w150", 1110, 0.00269, 70.0, 24.0, 9.9, {**_V24, **_X540_CURRENT, "Velocity_Limit": 128}),
    ServoModel("xh540-w270", 1100, 0.00269, 37.0, 24.0, 9.9, {**_V24, **_X540_CURRENT, "Velocity_Limit": 128}),
)}

BY_NUMBER: dict[int, ServoModel] = {m.number: m for m in MODELS.values()}


def get_model(name: str) -> ServoModel:
    """Look a model up by its config name; the error lists the names that exist."""
    key = name.lower()
    if key not in MODELS:
        raise KeyError(f"unknown servo model '{name}' (known: {', '.join(MODELS)})")
    return MODELS[key]


def model_name(number: int) -> str:
    """Config name for a model number, or 'model N' for servos this package has no table for."""
    m = BY_NUMBER.get(number)
    return m.name if m else f"model {number}"
