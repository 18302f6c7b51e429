"""Find the servos on a port: a broadcast PING per baud (every Protocol 2.0 servo answers it), then a read of
each one's operating mode and torque state. Used by `edgedp scan`."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

from dynamixel_sdk import COMM_SUCCESS

from firmware_bridge.dynamixel.control_table import OPERATING_MODE_NAMES, X_TABLE
from firmware_bridge.dynamixel.errors import BusDisconnected, BusOpenError
from firmware_bridge.dynamixel.models import model_name
from firmware_bridge.dynamixel.sdk_io import SdkPacketHandler, SdkPort

DEFAULT_SCAN_BAUDS = (57600, 1_000_000, 2_000_000, 3_000_000, 4_000_000)


@dataclass(frozen=True)
class FoundServo:
    id: int
    model_number: int
    model: str
    firmware: int
    baud: int
    operating_mode: str
    torque: str  # "on", "off" or "?" when the read failed


def scan(port_name: str, bauds: Iterable[int] = DEFAULT_SCAN_BAUDS) -> list[FoundServo]:
    """Every servo that answers on `port_name` at any of `bauds`; BusOpenError when the port is unusable."""
    if not os.path.exists(port_name):
        raise BusOpenError(f"serial port {port_name} does not exist")
    is_pty = os.path.realpath(port_name).startswith("/dev/pts/")
    port = SdkPort(port_name, latency_ms=1.0 if is_pty else 16.0, margin_ms=20.0 if is_pty else 5.0)
    ph = SdkPacketHandler()
    try:
        port.openPort()
    except OSError as exc:
        raise BusOpenError(f"cannot open {port_name}: {getattr(exc, 'strerror', None) or exc}") from None
    found: list[FoundServo] = []
    try:
        for baud in bauds:
            if not port.setBaudRate(baud):
                raise BusOpenError(f"baud {baud} is not supported by dynamixel-sdk")
            answers, res = ph.broadcastPing(port)
            if res != COMM_SUCCESS and not answers:
                continue
            for sid in sorted(answers):
                number, fw = answers[sid]
                mode, r1, _ = ph.read1ByteTxRx(port, sid, X_TABLE["Operating_Mode"].address)
                torque, r2, _ = ph.read1ByteTxRx(port, sid, X_TABLE["Torque_Enable"].address)
                found.append(FoundServo(
                    sid, number, model_name(number), fw, baud,
                    OPERATING_MODE_NAMES.get(mode, str(mode)) if r1 == COMM_SUCCESS else "?",
                    ("on" if torque else "off") if r2 == COMM_SUCCESS else "?"))
    except OSError as exc:
        raise BusDisconnected(f"{port_name} disconnected during the scan: {exc}") from None
    finally:
        try:
            port.closePort()
        except Exception:
            pass
    return found
