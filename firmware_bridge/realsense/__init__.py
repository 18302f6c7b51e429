"""RealSense cameras on pyrealsense2: the driver, a virtual device, recording and discovery."""
from __future__ import annotations

from firmware_bridge.realsense.camera import RealSenseCamera, RealSenseFrame, RealSenseSettings, intrinsics_of
from firmware_bridge.realsense.errors import CameraDisconnected, CameraError, CameraNotFound, CameraSettingError

__all__ = [
    "RealSenseCamera", "RealSenseFrame", "RealSenseSettings", "intrinsics_of",
    "CameraError", "CameraNotFound", "CameraSettingError", "CameraDisconnected",
]
