"""Which RealSense devices are connected, and finding one by serial (USB first, then virtual ones)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pyrealsense2 as rs

from firmware_bridge.realsense import virtual
from firmware_bridge.realsense.errors import CameraNotFound


@dataclass(frozen=True)
class DeviceInfo:
    serial: str
    name: str
    firmware: str
    usb_type: str
    product_line: str
    virtual: bool = False


def _info(dev: rs.device, key: rs.camera_info) -> str:
    return dev.get_info(key) if dev.supports(key) else "-"


def describe(dev: rs.device, is_virtual: bool = False) -> DeviceInfo:
    return DeviceInfo(
        serial=_info(dev, rs.camera_info.serial_number),
        name=_info(dev, rs.camera_info.name),
        firmware=_info(dev, rs.camera_info.firmware_version),
        usb_type=_info(dev, rs.camera_info.usb_type_descriptor),
        product_line=_info(dev, rs.camera_info.product_line),
        virtual=is_virtual,
    )


def list_devices(include_virtual: bool = False, ctx: Optional[rs.context] = None) -> list[DeviceInfo]:
    """USB RealSense devices (and, when asked, the virtual ones plugged in inside this process)."""
    ctx = ctx or rs.context()
    found = [describe(d) for d in ctx.query_devices()]
    if include_virtual:
        found += [describe(v.device, True) for v in virtual.registered_devices()]
    return found


def find_device(serial: Optional[str], ctx: Optional[rs.context] = None) -> rs.device:
    """The device with this serial; with serial None, the only connected device.

    Raises CameraNotFound naming the serial and what is connected instead.
    """
    ctx = ctx or rs.context()
    usb = list(ctx.query_devices())
    if serial is None:
        if len(usb) == 1:
            return usb[0]
        if not usb:
            raise CameraNotFound("no RealSense camera connected")
        serials = ", ".join(d.get_info(rs.camera_info.serial_number) for d in usb)
        raise CameraNotFound(f"{len(usb)} RealSense cameras connected ({serials}): choose one by serial")
    for d in usb:
        if d.get_info(rs.camera_info.serial_number) == serial:
            return d
    v = virtual.registered(serial)
    if v is not None:
        return v.device
    present = [d.get_info(rs.camera_info.serial_number) for d in usb]
    present += [v.serial for v in virtual.registered_devices()]
    have = ", ".join(present) if present else "none"
    raise CameraNotFound(f"RealSense camera with serial '{serial}' not found (connected: {have})")


@dataclass(frozen=True)
class StreamMode:
    sensor: str
    stream: str
    format: str
    width: int
    height: int
    fps: int


def stream_modes(dev: rs.device) -> list[StreamMode]:
    """Every video mode the device offers, for choosing width/height/fps in a run config."""
    modes = set()
    for sensor in dev.query_sensors():
        name = sensor.get_info(rs.camera_info.name) if sensor.supports(rs.camera_info.name) else "-"
        for p in sensor.get_stream_profiles():
            if not p.is_video_stream_profile():
                continue
            v = p.as_video_stream_profile()
            modes.add(StreamMode(name, p.stream_type().name, p.format().name, v.width(), v.height(), v.fps()))
    return sorted(modes, key=lambda m: (m.sensor, m.stream, m.format, -m.width * m.height, -m.fps))

