"""Camera errors. firmware_bridge cannot import edgedp, so the CLI/runtime maps these onto UserError."""
from __future__ import annotations


class CameraError(RuntimeError):
    """Base class: something about a camera the user can act on (message names the camera)."""


class CameraNotFound(CameraError):
    """No device with the requested serial (or no device at all) is connected."""


class CameraSettingError(CameraError):
    """The device cannot do what the settings ask (resolution, fps, option, file type)."""


class CameraDisconnected(CameraError):
    """Frames stopped and the driver gave up after its reconnect attempts."""
