"""The X-series Protocol 2.0 control table: addresses, sizes, EEPROM/RAM split, access and value ranges.

One table serves the emulator (which enforces it like the firmware does) and the driver (which addresses
registers by name). Addresses follow the ROBOTIS e-Manual for the X series; the few model differences
(XL430 has Present Load instead of Present Current and no current registers) live in `models.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Register:
    """One control-table item. `lo`/`hi` bound what a WRITE may store (data range error outside)."""

    name: str
    address: int
    size: int
    eeprom: bool
    writable: bool
    default: int = 0
    lo: int = 0
    hi: int = 0
    signed: bool = False

    @property
    def end(self) -> int:
        return self.address + self.size


def _e(name: str, addr: int, size: int, default: int = 0, lo: int = 0, hi: Optional[int] = None,
       rw: bool = True, signed: bool = False) -> Register:
    return Register(name, addr, size, True, rw, default, lo, hi if hi is not None else (1 << (8 * size)) - 1, signed)


def _r(name: str, addr: int, size: int, default: int = 0, lo: int = 0, hi: Optional[int] = None,
       rw: bool = True, signed: bool = False) -> Register:
    return Register(name, addr, size, False, rw, default, lo, hi if hi is not None else (1 << (8 * size)) - 1, signed)


# Defaults here are the XM430-W350's; per-model overrides are in models.py.
X_SERIES: tuple[Register, ...] = (
    # EEPROM area (writes refused with an access error while torque is on)
    _e("Model_Number", 0, 2, rw=False),
    _e("Model_Information", 2, 4, rw=False),
    _e("Firmware_Version", 6, 1, rw=False),
    _e("ID", 7, 1, 1, 0, 252),
    _e("Baud_Rate", 8, 1, 1, 0, 7),
    _e("Return_Delay_Time", 9, 1, 250, 0, 254),
    _e("Drive_Mode", 10, 1, 0, 0, 13),
    _e("Operating_Mode", 11, 1, 3, 0, 16),
    _e("Secondary_ID", 12, 1, 255, 0, 255),
    _e("Protocol_Type", 13, 1, 2, 1, 2),
    _e("Homing_Offset", 20, 4, 0, -1044479, 1044479, signed=True),
    _e("Moving_Threshold", 24, 4, 10, 0, 1023),
    _e("Temperature_Limit", 31, 1, 80, 0, 100),
    _e("Max_Voltage_Limit", 32, 2, 160, 95, 160),
    _e("Min_Voltage_Limit", 34, 2, 95, 95, 160),
    _e("PWM_Limit", 36, 2, 885, 0, 885),
    _e("Current_Limit", 38, 2, 1193, 0, 1193),
    _e("Velocity_Limit", 44, 4, 200, 0, 1023),
    _e("Max_Position_Limit", 48, 4, 4095, 0, 4095),
    _e("Min_Position_Limit", 52, 4, 0, 0, 4095),
    _e("Startup_Configuration", 60, 1, 0, 0, 3),
    _e("Shutdown", 63, 1, 52, 0, 63),
    # RAM area
    _r("Torque_Enable", 64, 1, 0, 0, 1),
    _r("LED", 65, 1, 0, 0, 1),
    _r("Status_Return_Level", 68, 1, 2, 0, 2),
    _r("Registered_Instruction", 69, 1, 0, rw=False),
    _r("Hardware_Error_Status", 70, 1, 0, rw=False),
    _r("Velocity_I_Gain", 76, 2, 1920, 0, 16383),
    _r("Velocity_P_Gain", 78, 2, 100, 0, 16383),
    _r("Position_D_Gain", 80, 2, 0, 0, 16383),
    _r("Position_I_Gain", 82, 2, 0, 0, 16383),
    _r("Position_P_Gain", 84, 2, 800, 0, 16383),
    _r("Feedforward_2nd_Gain", 88, 2, 0, 0, 16383),
    _r("Feedforward_1st_Gain", 90, 2, 0, 0, 16383),
    _r("Bus_Watchdog", 98, 1, 0, 0, 127),
    _r("Goal_PWM", 100, 2, 0, -885, 885, signed=True),
    _r("Goal_Current", 102, 2, 0, -1193, 1193, signed=True),
    _r("Goal_Velocity", 104, 4, 0, -1023, 1023, signed=True),
    _r("Profile_Acceleration", 108, 4, 0, 0, 32767),
    _r("Profile_Velocity", 112, 4, 0, 0, 32767),
    _r("Goal_Position", 116, 4, 0, -1048575, 1048575, signed=True),
    _r("Realtime_Tick", 120, 2, 0, rw=False),
    _r("Moving", 122, 1, 0, rw=False),
    _r("Moving_Status", 123, 1, 0, rw=False),
    _r("Present_PWM", 124, 2, 0, rw=False, signed=True),
    _r("Present_Current", 126, 2, 0, rw=False, signed=True),
    _r("Present_Velocity", 128, 4, 0, rw=False, signed=True),
    _r("Present_Position", 132, 4, 0, rw=False, signed=True),
    _r("Velocity_Trajectory", 136, 4, 0, rw=False, signed=True),
    _r("Position_Trajectory", 140, 4, 0, rw=False, signed=True),
    _r("Present_Input_Voltage", 144, 2, 0, rw=False),
    _r("Present_Temperature", 146, 1, 0, rw=False),
    _r("Backup_Ready", 147, 1, 0, rw=False),
)

# One past the last address a READ may touch (the indirect-data area ends at 661 on X-series).
TABLE_END = 148

# Baud Rate register value -> bits per second.
BAUD_CODES: dict[int, int] = {
    0: 9600, 1: 57600, 2: 115200, 3: 1_000_000, 4: 2_000_000, 5: 3_000_000, 6: 4_000_000, 7: 4_500_000,
}
BAUD_TO_CODE: dict[int, int] = {v: k for k, v in BAUD_CODES.items()}

# Operating Mode register values.
OPERATING_MODES: dict[str, int] = {
    "current": 0, "velocity": 1, "position": 3, "extended_position": 4, "current_based_position": 5, "pwm": 16,
}
OPERATING_MODE_NAMES: dict[int, str] = {v: k for k, v in OPERATING_MODES.items()}

# Hardware Error Status bits (register 70) and their names, as the e-Manual lists them.
HARDWARE_ERROR_BITS: dict[int, str] = {
    0: "input voltage",
    2: "overheating",
    3: "motor encoder",
    4: "electrical shock",
    5: "overload",
}


def hardware_error_names(bits: int) -> list[str]:
    """Decode Hardware Error Status into the e-Manual's names (unknown bits as 'bit N')."""
    names = [name for bit, name in HARDWARE_ERROR_BITS.items() if bits & (1 << bit)]
    known = sum(1 << b for b in HARDWARE_ERROR_BITS)
    for bit in range(8):
        if bits & ~known & (1 << bit):
            names.append(f"bit {bit}")
    return names


# Protocol 2.0 status-packet error field: bit 7 is the hardware alert, the low 7 bits a result code.
ERROR_ALERT = 0x80
ERROR_CODES: dict[int, str] = {
    1: "result fail",
    2: "instruction error",
    3: "CRC error",
    4: "data range error",
    5: "data length error",
    6: "data limit error",
    7: "access error",
}


def describe_error_field(error: int) -> str:
    """Name the status packet's error byte in words (for one-line error messages)."""
    parts = []
    code = error & 0x7F
    if code:
        parts.append(ERROR_CODES.get(code, f"unknown error {code}"))
    if error & ERROR_ALERT:
        parts.append("hardware alert")
    return ", ".join(parts) or "no error"


class ControlTable:
    """Name and address lookup over a register tuple (one instance per model)."""

    def __init__(self, registers: tuple[Register, ...]):
        self.registers = registers
        self.by_name: dict[str, Register] = {r.name: r for r in registers}
        self.by_address: dict[int, Register] = {r.address: r for r in registers}
        # byte address -> register covering it (None for gaps)
        self.owner: list[Optional[Register]] = [None] * TABLE_END
        for r in registers:
            for a in range(r.address, r.end):
                self.owner[a] = r

    def __getitem__(self, name: str) -> Register:
        return self.by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def covered(self, address: int, length: int) -> tuple[list[Register], bool]:
        """Registers inside [address, address+length) and whether every touched register is whole."""
        regs: list[Register] = []
        whole = True
        a = address
        end = address + length
        while a < end:
            r = self.owner[a] if a < TABLE_END else None
            if r is None:
                a += 1
                continue
            if r.address < address or r.end > end:
                whole = False
            regs.append(r)
            a = r.end
        return regs, whole


# The table the driver and the emulator address registers by (names are the e-Manual's).
X_TABLE = ControlTable(X_SERIES)


def block(first: str, last: str, table: ControlTable = X_TABLE) -> tuple[int, int]:
    """(address, length) of the contiguous registers from `first` to `last`, for one sync read of several."""
    a, b = table[first], table[last]
    if b.end <= a.address:
        raise ValueError(f"{last} comes before {first} in the control table")
    return a.address, b.end - a.address
