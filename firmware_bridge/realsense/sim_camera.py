"""A camera that owns its virtual RealSense: what a `kind: virtual` camera in a run config becomes.

The picture comes from a render callable (normally ``Scene.render``), goes through the
``rs.software_device`` and is read back by the ordinary RealSense driver, so a simulated run
exercises the same frame, timestamp, drop and intrinsics code as a real camera.
"""
from __future__ import annotations

from typing import Optional

from firmware_bridge.realsense.camera import RealSenseCamera, RealSenseSettings
from firmware_bridge.realsense.virtual import RenderFn, VirtualRealSense
from firmware_bridge.types import Intrinsics


class VirtualCamera(RealSenseCamera):
    def __init__(self, render: RenderFn, intrinsics: Intrinsics, settings: Optional[RealSenseSettings] = None):
        settings = settings or RealSenseSettings()
        if (settings.width, settings.height) != (intrinsics.width, intrinsics.height):
            raise ValueError(
                f"camera '{settings.name}': settings ask {settings.width}x{settings.height} but the scene renders "
                f"{intrinsics.width}x{intrinsics.height}"
            )
        self.virtual = VirtualRealSense(render, intrinsics, fps=settings.fps, depth=settings.depth,
                                        serial=settings.serial)
        settings.serial = self.virtual.serial
        settings.file = None
        super().__init__(settings)

    def start(self) -> None:
        self.virtual.start()
        try:
            super().start()
        except Exception:
            self.virtual.close()
            raise

    def stop(self, keep_recording: bool = True) -> None:
        super().stop(keep_recording)
        self.virtual.close()
