"""Bus errors the runtime can act on, each with one clear message.

BusError is the base; the runtime catches it per tick. BusTimeout/BusCorrupt mean a tick's read could not be
completed within its budget (values are never guessed); HardwareError names the servo's fault bits;
BusDisconnected means the port itself is gone (unplugged adapter, closed pty) and the bus must be reopened.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence


class BusError(Exception):
    """Any failure talking to the servo bus."""


class BusOpenError(BusError):
    """The port could not be opened or configured (bad path, permissions, unsupported baud)."""


class BusConfigError(BusError):
    """The servos found do not match the configuration (missing id, wrong model, unsupported feature)."""


class BusTimeout(BusError):
    """Status packets stayed missing or corrupt after the retries the tick's budget allowed."""

    def __init__(self, message: str, ids: Sequence[int] = ()):
        super().__init__(message)
        self.ids = tuple(ids)


class ServoStatusError(BusError):
    """A servo answered with a non-zero error field (access, data range, ...)."""

    def __init__(self, dxl_id: int, error: int, what: str):
        from firmware_bridge.dynamixel.control_table import describe_error_field

        self.id = dxl_id
        self.error = error
        super().__init__(f"servo {dxl_id} refused {what}: {describe_error_field(error)} (error field 0x{error:02x})")


class HardwareError(BusError):
    """A servo raised its hardware alert; `names` are the Hardware Error Status bits in words."""

    def __init__(self, dxl_id: int, names: Sequence[str], bits: int, state: Optional[object] = None):
        self.id = dxl_id
        self.names = list(names)
        self.bits = bits
        self.state = state  # the JointState read in the same tick, when there was one
        what = ", ".join(self.names) or "unknown"
        super().__init__(f"servo {dxl_id} hardware error: {what} (Hardware Error Status 0x{bits:02x}); "
                         "bits in the servo's Shutdown mask switch its torque off; reboot the servo to clear")


class BusDisconnected(BusError):
    """The port vanished mid-run (adapter unplugged, emulator stopped): reopen the bus to continue."""


def _servo_label(dxl_id: int, names: Mapping[int, str]) -> str:
    name = names.get(int(dxl_id))
    return f"servo {dxl_id} ({name})" if name else f"servo {dxl_id}"


def fault_kind(exc: BaseException, crc_errors: int = 0, timeouts: int = 0) -> str:
    """A short word for what went wrong on the bus: 'hardware error', 'port gone', 'CRC', 'timeout', ...

    A BusTimeout covers both lost and corrupt replies (either way no valid status packet came back); the
    driver's counters over the failing ticks (`crc_errors`, `timeouts`) say which it was."""
    if isinstance(exc, HardwareError):
        return "hardware error"
    if isinstance(exc, BusDisconnected):
        return "port gone"
    if isinstance(exc, ServoStatusError):
        return "status error"
    if isinstance(exc, BusTimeout):
        if crc_errors and timeouts:
            return "CRC errors and timeouts"
        if crc_errors:
            return "CRC"
        return "timeout"
    return type(exc).__name__


def describe_bus_fault(exc: BaseException, names: Optional[Mapping[int, str]] = None, crc_errors: int = 0,
                       timeouts: int = 0, detail: bool = False) -> str:
    """One line naming the servo(s) by id and joint name, and the fault, for the runtime's watchdog message.

    `names` maps servo id -> joint name; `crc_errors` / `timeouts` are the driver's counts over the failing
    ticks (see fault_kind). `detail`: for a timeout, the driver's own message after the names instead of the
    counts (a failed torque off says what was tried)."""
    names = names or {}
    kind = fault_kind(exc, crc_errors, timeouts)
    if isinstance(exc, HardwareError):
        bits = ", ".join(exc.names) or "unknown bits"
        return (f"{_servo_label(exc.id, names)}: hardware error {bits} (Hardware Error Status 0x{exc.bits:02x}; "
                "reboot the servo to clear)")
    if isinstance(exc, BusDisconnected):
        return f"port gone ({exc})"
    if isinstance(exc, ServoStatusError):
        from firmware_bridge.dynamixel.control_table import describe_error_field

        return f"{_servo_label(exc.id, names)}: status error {describe_error_field(exc.error)}"
    if isinstance(exc, BusTimeout):
        if exc.ids:
            who = ", ".join(_servo_label(i, names) for i in exc.ids)
            if detail:
                return f"{who}: {exc}"
            what = {"CRC": "replies failed their CRC check",
                    "timeout": "no reply (timeout)"}.get(kind, "replies lost or failed their CRC check")
            return f"{who}: {what} ({crc_errors} CRC errors, {timeouts} timeouts in the failing ticks)"
        return f"{kind}: {exc}"
    return f"{type(exc).__name__}: {exc}"
