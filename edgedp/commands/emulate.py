"""`edgedp emulate --servos "1:xm430-w350,2:xm430-w350" [--baud B] [--wire-time]`: serve emulated Dynamixel
servos on a pseudo-terminal until Ctrl-C or SIGTERM, printing the pty path to give to `edgedp scan --port`
or to a robot config's `bus.port`."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from edgedp.config import DYNAMIXEL_BAUDS
from edgedp.errors import UserError
from firmware_bridge.dynamixel.emulator import Emulator, parse_servo_spec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("emulate", help="emulate Dynamixel servos on a pseudo-terminal",
                       description="Serve a chain of emulated Protocol 2.0 servos (real control tables, motor "
                                   "model) on a pty until interrupted.")
    p.add_argument("--servos", required=True, help='ID:MODEL list, e.g. "1:xm430-w350,2:xl330-m288" '
                                                   '(ID:MODEL@FW sets the firmware version)')
    p.add_argument("--baud", type=int, default=1_000_000, help="the servos' baud rate (default 1000000)")
    p.add_argument("--wire-time", action="store_true", help="take as long as the bytes would on a real bus")
    p.add_argument("--seed", type=int, default=None, help="seed for fault injection")
    p.add_argument("--port-file", default=None, help="also write the pty path to this file (for scripts)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.baud not in DYNAMIXEL_BAUDS:
        raise UserError(f"--baud {args.baud} is not a Dynamixel baud rate (allowed: {', '.join(map(str, DYNAMIXEL_BAUDS))})")
    try:
        spec = parse_servo_spec(args.servos)
    except (ValueError, KeyError) as exc:
        raise UserError(f"--servos: {exc.args[0] if exc.args else exc}") from None
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    emu = Emulator(spec, baud=args.baud, wire_time=args.wire_time, seed=args.seed, precise_timing=args.wire_time)
    emu.start()
    try:
        if args.port_file:
            _write_atomic(args.port_file, emu.port_name + "\n")
        ids = ", ".join(str(i) for i in emu.ids())
        print(f"emulating {len(spec)} servo(s) (ids {ids}) at {args.baud} baud on {emu.port_name}"
              f"{' with wire time' if args.wire_time else ''}; Ctrl-C to stop", flush=True)
        try:
            while not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        emu.stop()
        signal.signal(signal.SIGTERM, previous)
        if args.port_file:
            try:
                os.unlink(args.port_file)
            except OSError:
                pass
    print("emulator stopped", file=sys.stderr)
    return 0


def _write_atomic(path: str, text: str) -> None:
    from firmware_bridge.atomic_file import atomic_write_text

    atomic_write_text(os.path.abspath(path), text)
