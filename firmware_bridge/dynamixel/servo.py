"""One emulated servo: its control table memory, the firmware's write rules, and its motor.

Write rules follow the X-series firmware: whole registers only (data length error), read-only or undefined
addresses refused (access error), EEPROM refused while torque is on (access error), values outside a
register's range refused (data range error), goals beyond the position/current/velocity limits refused
(data limit error). A refused write changes nothing.
"""
from __future__ import annotations

import math
import struct
import threading
import time
from typing import Optional

from firmware_bridge.dynamixel import protocol as P
from firmware_bridge.dynamixel.control_table import OPERATING_MODE_NAMES, TABLE_END
from firmware_bridge.dynamixel.models import RAD_S_PER_VELOCITY_UNIT, ServoModel
from firmware_bridge.dynamixel.motor_model import TICKS_PER_RAD, MotorModel
from firmware_bridge.dynamixel.units import CENTER_TICK, RAD_PER_TICK

# Realtime Tick, Moving, Moving Status, Present PWM, Present Current, Present Velocity, Present Position,
# Velocity Trajectory, Position Trajectory, Present Input Voltage, Present Temperature (addresses 120..146)
_PRESENT = struct.Struct("<HBBhhiiiiHB")
_PRESENT_FIRST, _PRESENT_END = 120, 147
_VALID_MODES_CURRENT = {0, 1, 3, 4, 5, 16}
_VALID_MODES_NO_CURRENT = {1, 3, 4, 16}


class EmulatedServo:
    def __init__(self, dxl_id: int, model: ServoModel, firmware: Optional[int] = None,
                 baud_code: int = 1, position_ticks: float = CENTER_TICK, lock=None):
        self.lock = lock if lock is not None else threading.RLock()  # shared with the emulator's serving thread
        self.model = model
        self.table = model.table
        self.firmware = model.default_firmware if firmware is None else int(firmware)
        self.mem = bytearray(TABLE_END)
        self.registered: Optional[tuple[int, bytes]] = None
        self.motor = MotorModel(model, position_ticks)
        self.voltage = model.nominal_voltage
        self.temperature = 35
        self._factory(keep_id=None, keep_baud=None)
        self.set("ID", dxl_id)
        self.set("Baud_Rate", baud_code)
        self.t0 = time.monotonic()
        self._vel_unit_scale = 1.0 / TICKS_PER_RAD / RAD_S_PER_VELOCITY_UNIT
        self._pwm_scale = 1.0 / (model.max_speed_rad_s * TICKS_PER_RAD)

    # ---- raw register access -------------------------------------------------------------------------
    def get(self, name: str) -> int:
        r = self.table[name]
        return int.from_bytes(self.mem[r.address:r.end], "little", signed=r.signed)

    def set(self, name: str, value: int) -> None:
        r = self.table[name]
        self.mem[r.address:r.end] = int(value).to_bytes(r.size, "little", signed=r.signed)

    @property
    def id(self) -> int:
        return self.get("ID")

    @property
    def torque(self) -> bool:
        return bool(self.get("Torque_Enable"))

    def _factory(self, keep_id: Optional[int], keep_baud: Optional[int]) -> None:
        for r in self.table.registers:
            self.mem[r.address:r.end] = int(r.default).to_bytes(r.size, "little", signed=r.signed)
        self.set("Firmware_Version", self.firmware)
        if keep_id is not None:
            self.set("ID", keep_id)
        if keep_baud is not None:
            self.set("Baud_Rate", keep_baud)
        self._sync_motor_from_registers()
        self.set("Goal_Position", round(self._present_from_phys(self.motor.position)))

    def _reset_ram(self) -> None:
        for r in self.table.registers:
            if not r.eeprom:
                self.mem[r.address:r.end] = int(r.default).to_bytes(r.size, "little", signed=r.signed)
        self.registered = None
        self._sync_motor_from_registers()
        self.set("Goal_Position", round(self._present_from_phys(self.motor.position)))

    # ---- frames: physical shaft ticks <-> Present/Goal Position --------------------------------------
    def _reverse(self) -> bool:
        return bool(self.get("Drive_Mode") & 1)  # bit 0: reverse direction

    def _present_from_phys(self, phys: float) -> float:
        base = (2 * CENTER_TICK - phys) if self._reverse() else phys
        return base + self.get("Homing_Offset")

    def _phys_from_present(self, present: float) -> float:
        base = present - self.get("Homing_Offset")
        return (2 * CENTER_TICK - base) if self._reverse() else base

    def _sync_motor_from_registers(self) -> None:
        m = self.motor
        m.torque = self.torque
        m.profile_velocity = self.get("Profile_Velocity")
        m.profile_acceleration = self.get("Profile_Acceleration")
        if not m.torque:
            m.goal = m.position

    # ---- time ----------------------------------------------------------------------------------------
    def refresh(self, now: float) -> None:
        """Advance the motor to `now` and update the Present_* registers (120..146) from it, in one pack."""
        m = self.motor
        m.advance(now)
        reverse = self._reverse()
        homing = self.get("Homing_Offset")
        present = (2 * CENTER_TICK - m.position if reverse else m.position) + homing
        goal_present = (2 * CENTER_TICK - m.goal if reverse else m.goal) + homing
        sign = -1.0 if reverse else 1.0
        vel_units = sign * m.velocity * self._vel_unit_scale
        cur = sign * m.current_a()
        model = self.model
        if model.current_unit_a is not None:
            cur_units = max(-32768, min(32767, int(round(cur / model.current_unit_a))))
        else:  # XL430: Present Load in 0.1 % of the stall torque
            cur_units = max(-1000, min(1000, int(round(1000 * cur / model.stall_current_a))))
        pwm = int(round(885 * min(1.0, abs(m.velocity) * self._pwm_scale)))
        vel = int(round(vel_units))
        moving = abs(vel_units) > self.get("Moving_Threshold")
        status = (1 if abs(m.goal - m.position) < 1 else 0) | (2 if moving else 0)
        _PRESENT.pack_into(self.mem, self.table["Realtime_Tick"].address, int((now - self.t0) * 1000) % 32768, int(moving), status, pwm, cur_units,
                           vel, int(round(present)), vel, int(round(goal_present)),
                           int(round(self.voltage * 10)), int(self.temperature))

    # ---- firmware behaviour --------------------------------------------------------------------------
    def error_byte(self, code: int = 0) -> int:
        return code | (P.ERR_ALERT if self.get("Hardware_Error_Status") else 0)

    def read(self, address: int, length: int, now: Optional[float] = None) -> tuple[int, bytes]:
        if length <= 0:
            return P.ERR_DATA_LENGTH, b""
        if address + length > TABLE_END:
            return P.ERR_ACCESS, b""
        if address < _PRESENT_END and address + length > _PRESENT_FIRST:
            self.refresh(time.monotonic() if now is None else now)  # present values only when asked
        return 0, bytes(self.mem[address:address + length])

    def check_write(self, address: int, data: bytes) -> int:
        """Error code a WRITE of `data` at `address` would get (0: accepted)."""
        length = len(data)
        if length == 0:
            return P.ERR_DATA_LENGTH
        if address + length > TABLE_END:
            return P.ERR_ACCESS
        owner = self.table.owner
        if any(owner[a] is None for a in range(address, address + length)):
            return P.ERR_ACCESS
        regs, whole = self.table.covered(address, length)
        for r in regs:
            if not r.writable or (r.eeprom and self.torque):
                return P.ERR_ACCESS
        if not whole:
            return P.ERR_DATA_LENGTH
        values: dict[str, int] = {}
        for r in regs:
            off = r.address - address
            v = int.from_bytes(data[off:off + r.size], "little", signed=r.signed)
            if not r.lo <= v <= r.hi:
                return P.ERR_DATA_RANGE
            values[r.name] = v
        return self._check_limits(values)

    def _check_limits(self, values: dict[str, int]) -> int:
        def cur(name: str) -> int:
            return values[name] if name in values else self.get(name)

        if "Operating_Mode" in values:
            valid = _VALID_MODES_NO_CURRENT if self.model.current_unit_a is None else _VALID_MODES_CURRENT
            if values["Operating_Mode"] not in valid:
                return P.ERR_DATA_RANGE
        if "Goal_Position" in values and cur("Operating_Mode") == 3:
            if not cur("Min_Position_Limit") <= values["Goal_Position"] <= cur("Max_Position_Limit"):
                return P.ERR_DATA_LIMIT
        if "Profile_Velocity" in values and values["Profile_Velocity"] > cur("Velocity_Limit"):
            return P.ERR_DATA_LIMIT
        if "Goal_Velocity" in values and abs(values["Goal_Velocity"]) > cur("Velocity_Limit"):
            return P.ERR_DATA_LIMIT
        if "Goal_Current" in values and abs(values["Goal_Current"]) > cur("Current_Limit"):
            return P.ERR_DATA_LIMIT
        if values.get("Torque_Enable") == 1 and (self.get("Hardware_Error_Status") & self.get("Shutdown")):
            return P.ERR_RESULT_FAIL  # a shutdown error holds the torque off until reboot
        return 0

    def write(self, address: int, data: bytes) -> int:
        """Validate then apply a WRITE; returns the error code (0 = done)."""
        err = self.check_write(address, data)
        if err:
            return err
        self.motor.advance(time.monotonic())  # the motion so far happened under the old settings
        torque_before = self.torque
        end = address + len(data)
        self.mem[address:end] = data
        if self.torque and not torque_before:
            # the firmware starts holding where the joint is: Goal Position follows Present Position
            self.motor.goal = self.motor.position
            self.set("Goal_Position", round(self._present_from_phys(self.motor.position)))
        self._sync_motor_from_registers()
        if address <= self.table["Goal_Position"].address < end and self.torque:
            self.motor.goal = self._phys_from_present(self.get("Goal_Position"))
        return 0

    def raise_hardware_error(self, bits: int) -> None:
        self.set("Hardware_Error_Status", self.get("Hardware_Error_Status") | (bits & 0xFF))
        if self.get("Hardware_Error_Status") & self.get("Shutdown"):
            self.set("Torque_Enable", 0)
            self._sync_motor_from_registers()

    def reboot(self) -> None:
        self._reset_ram()  # clears Hardware Error Status and torque; EEPROM stays

    def factory_reset(self, option: int) -> None:
        keep_id = self.id if option in (0x01, 0x02) else None
        keep_baud = self.get("Baud_Rate") if option == 0x02 else None
        self._factory(keep_id, keep_baud)

    def clear_multi_turn(self) -> None:
        m = self.motor
        m.position = m.position % 4096
        m.goal = m.position

    # ---- accessors for tests and the simulated scene -------------------------------------------------
    @property
    def position_ticks(self) -> int:
        """Present_Position now (advanced to this instant)."""
        with self.lock:
            self.refresh(time.monotonic())
            return self.get("Present_Position")

    @property
    def position_rad(self) -> float:
        """Servo angle in radians now: (Present_Position - 2048) * 2*pi/4096 (see units.py)."""
        return (self.position_ticks - CENTER_TICK) * RAD_PER_TICK

    @property
    def operating_mode(self) -> str:
        mode = self.get("Operating_Mode")
        return OPERATING_MODE_NAMES.get(mode, str(mode))

    def set_external_position(self, angle_rad: Optional[float] = None, ticks: Optional[float] = None) -> None:
        """Move the horn by hand (torque off only), as in a calibration session; in servo radians or ticks."""
        with self.lock:
            self._move_by_hand(angle_rad, ticks)

    def _move_by_hand(self, angle_rad: Optional[float], ticks: Optional[float]) -> None:
        if self.torque:
            raise RuntimeError(f"servo {self.id}: torque is on, the horn cannot be moved by hand")
        if (angle_rad is None) == (ticks is None):
            raise ValueError("give exactly one of angle_rad or ticks")
        present = ticks if ticks is not None else angle_rad / RAD_PER_TICK + CENTER_TICK
        if not math.isfinite(present):
            raise ValueError("position must be finite")
        self.motor.position = self.motor.goal = self._phys_from_present(present)
        self.motor.velocity = 0.0
