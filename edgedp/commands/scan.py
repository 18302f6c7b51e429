"""`edgedp scan --port PORT [--baud B ...]`: list every Dynamixel servo on a port (id, model, firmware, baud,
operating mode, torque). Exit 0 when servos were found, 1 when none answered, 2 when the port is unusable."""
from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from edgedp.config import DYNAMIXEL_BAUDS
from edgedp.errors import UserError
from firmware_bridge.dynamixel.discovery import DEFAULT_SCAN_BAUDS, scan
from firmware_bridge.dynamixel.errors import BusError

_SDK_BAUDS = tuple(b for b in DYNAMIXEL_BAUDS if b != 4_500_000)  # dynamixel-sdk cannot set 4.5 Mbps


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="list the Dynamixel servos on a serial port",
                       description="Broadcast-ping every baud rate given (default: the common ones) and list "
                                   "each servo's id, model, firmware, baud, operating mode and torque state.")
    p.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyUSB0 (or an `edgedp emulate` pty)")
    p.add_argument("--baud", type=int, nargs="+", metavar="B",
                   help=f"baud rates to try (default: {' '.join(map(str, DEFAULT_SCAN_BAUDS))})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    bauds = args.baud or list(DEFAULT_SCAN_BAUDS)
    for b in bauds:
        if b not in _SDK_BAUDS:
            raise UserError(f"--baud {b} is not a baud rate the bus can use (allowed: {', '.join(map(str, _SDK_BAUDS))})")
    try:
        found = scan(args.port, bauds)
    except BusError as exc:
        raise UserError(str(exc), exit_code=2) from None
    console = Console()
    if not found:
        console.print(f"no servos answered on {args.port} at {', '.join(map(str, bauds))} baud")
        return 1
    table = Table(title=f"{len(found)} servo(s) on {args.port}")
    for col in ("id", "model", "number", "firmware", "baud", "mode", "torque"):
        table.add_column(col)
    for s in found:
        table.add_row(str(s.id), s.model, str(s.model_number), f"v{s.firmware}", str(s.baud), s.operating_mode, s.torque)
    console.print(table)
    return 0
