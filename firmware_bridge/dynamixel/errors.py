"""Bus errors the runtime can act on, each with one clear message.

BusError is the base; the runtime catches it per tick. BusTimeout/BusCorrupt mean a tick's read could not be
completed within its budget (values are never guessed); HardwareError names the servo's fault bits;
BusDisconnected means the port itself is gone (unplugged adapter, closed pty) and the bus must be reopened.
"""
from __future__ import annotations

from typing import Optional, Sequence


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
