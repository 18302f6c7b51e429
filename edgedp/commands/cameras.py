"""`edgedp cameras`: list connected RealSense cameras, show one camera's modes, or record to .db3.

Listing exits 0 with a table, or 1 with "no RealSense cameras connected" so scripts can test
for a camera. Recording goes through the same driver the runtime uses, so a recorded file is
exactly what a run would have seen; it is written under a temporary name and moved into place
only when complete.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.table import Table

from edgedp.console import make_console
from edgedp.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cameras",
        help="list connected RealSense cameras, or record one to a .db3 file",
        description="List connected RealSense cameras (exit 1 when none), or record one with --record.",
    )
    p.add_argument("--record", metavar="PATH", help="record to this .db3 file instead of listing")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--serial", help="camera to record (default: the only connected one); alone: list its modes")
    src.add_argument("--virtual", action="store_true",
                     help="record the simulated arm scene through a virtual RealSense (no camera needed)")
    p.add_argument("--seconds", type=float, default=3.0, help="how long to record (default 3)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--depth", action="store_true", help="also record depth")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.record is None:
        if args.virtual:
            raise UserError("--virtual chooses what to record: use it with --record PATH")
        if args.serial:
            return _modes(args.serial)
        return _list()
    return _record(args)


def _modes(serial: str) -> int:
    """The video modes of one camera: what width/height/fps a run config may ask of it."""
    from firmware_bridge.realsense import CameraError
    from firmware_bridge.realsense.discovery import describe, find_device, stream_modes

    try:
        dev = find_device(serial)
    except CameraError as err:
        raise UserError(str(err)) from None
    info = describe(dev)
    table = Table(title=f"{info.name} {info.serial} (firmware {info.firmware}, USB {info.usb_type})")
    for col in ("sensor", "stream", "format", "resolution", "fps"):
        table.add_column(col)
    for m in stream_modes(dev):
        table.add_row(m.sensor, m.stream, m.format, f"{m.width}x{m.height}", str(m.fps))
    make_console().print(table)
    return 0


def _list() -> int:
    from firmware_bridge.realsense.discovery import list_devices

    devices = list_devices()
    console = make_console()
    if not devices:
        console.print("no RealSense cameras connected")
        return 1
    table = Table(title=f"{len(devices)} RealSense camera{'s' if len(devices) > 1 else ''}")
    for col in ("serial", "name", "firmware", "USB", "product line"):
        table.add_column(col)
    for d in devices:
        table.add_row(d.serial, d.name, d.firmware, d.usb_type, d.product_line)
    console.print(table)
    return 0


def _check(args: argparse.Namespace) -> Path:
    out = Path(args.record)
    if out.suffix.lower() != ".db3":
        raise UserError(f"--record: pyrealsense2 records only .db3 files, got '{out.name}'")
    if not out.parent.is_dir():
        raise UserError(f"--record: folder '{out.parent}' does not exist")
    if not args.seconds > 0:
        raise UserError(f"--seconds must be positive, got {args.seconds:g}")
    if args.width <= 0 or args.height <= 0 or args.fps <= 0:
        raise UserError(f"--width/--height/--fps must be positive, got {args.width}x{args.height}@{args.fps}")
    if args.virtual and (args.width > 1920 or args.height > 1080 or args.fps > 240):
        raise UserError(f"virtual camera {args.width}x{args.height}@{args.fps} too large (at most 1920x1080, 240 fps)")
    return out


def _record(args: argparse.Namespace) -> int:
    from firmware_bridge.realsense import CameraError, RealSenseCamera, RealSenseSettings

    out = _check(args)
    settings = RealSenseSettings(serial=args.serial, width=args.width, height=args.height, fps=args.fps,
                                 depth=args.depth, record_to=str(out), name="record")
    if args.virtual:
        cam = _virtual_camera(settings)
    else:
        cam = RealSenseCamera(settings)
    console = make_console()
    ok = False
    try:
        cam.start()
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            cam.wait_for_frame(min(0.5, max(0.01, deadline - time.monotonic())))
        ok = True
    except CameraError as err:
        raise UserError(str(err)) from None
    finally:
        cam.stop(keep_recording=ok)
    c = cam.counters()
    intr = cam.intrinsics
    console.print(
        f"recorded {c['frames']} frames ({c['drops']} dropped) in {args.seconds:g} s to {out} "
        f"({out.stat().st_size / 1e6:.1f} MB)"
    )
    console.print(
        f"intrinsics {intr.width}x{intr.height} fx={intr.fx:.2f} fy={intr.fy:.2f} cx={intr.cx:.2f} "
        f"cy={intr.cy:.2f} model={intr.model}"
    )
    return 0


def _virtual_camera(settings):
    """The simulated arm swinging slowly in front of a virtual RealSense."""
    from firmware_bridge.realsense.sim_camera import VirtualCamera
    from firmware_bridge.sim import Scene

    t0 = time.monotonic()

    def joints() -> np.ndarray:
        t = time.monotonic() - t0
        return np.array([0.8 * np.sin(0.7 * t), 1.0 + 0.6 * np.sin(1.3 * t)])

    scene = Scene(joints, width=settings.width, height=settings.height, depth=settings.depth)
    return VirtualCamera(scene.render, scene.intrinsics, settings)
