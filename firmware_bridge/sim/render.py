"""Top-down rendering of the planar arm with OpenCV, and the pinhole camera that sees it.

The camera looks straight down at the table from ``camera_height`` metres, centred on the arm's
base, at a focal length chosen so that ``workspace`` metres span the image width. World +x points
right in the image and world +y points up (camera +y is down, so v grows as world y shrinks).
Pixel centres are at integer coordinates (OpenCV convention), so the principal point of a W x H
image is ((W-1)/2, (H-1)/2) and the base sits exactly there.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from firmware_bridge.types import Intrinsics

_SHIFT = 4  # sub-pixel bits for cv2 drawing: positions are exact to 1/16 px
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class TopDownView:
    width: int = 96
    height: int = 96
    workspace: float = 0.3  # metres across the image width
    camera_height: float = 0.5  # metres from the camera to the table

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if self.workspace <= 0 or self.camera_height <= 0:
            raise ValueError("workspace and camera_height must be positive metres")

    @property
    def focal(self) -> float:
        return self.width * self.camera_height / self.workspace

    @property
    def pixels_per_metre(self) -> float:
        return self.width / self.workspace

    @property
    def intrinsics(self) -> Intrinsics:
        f = self.focal
        return Intrinsics(self.width, self.height, f, f, (self.width - 1) / 2, (self.height - 1) / 2, "none",
                          (0.0, 0.0, 0.0, 0.0, 0.0))

    @property
    def half_extent(self) -> tuple[float, float]:
        """Half of the visible table, metres (x, y)."""
        return self.workspace / 2, self.workspace * self.height / self.width / 2

    def to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """World (x, y) metres on the table → image (u, v) pixels; works on (..., 2) arrays."""
        xy = np.asarray(xy, dtype=np.float64)
        k = self.pixels_per_metre
        u = (self.width - 1) / 2 + k * xy[..., 0]
        v = (self.height - 1) / 2 - k * xy[..., 1]
        return np.stack([u, v], axis=-1)


# RGB colours: the target is the only green thing, the tip the only red one, so a policy (or a test)
# can find each by colour.
BACKGROUND = (214, 206, 190)
BASE = (60, 60, 60)
LINK = (40, 90, 200)
JOINT = (30, 30, 30)
TIP = (220, 40, 40)
TARGET = (40, 170, 60)


class TopDownRenderer:
    """Draws into preallocated images: a copy of the empty table, then a few anti-aliased primitives."""

    def __init__(self, view: TopDownView, link_width: float = 0.014, base_radius: float = 0.02,
                 tip_radius: float = 0.009, target_radius: float = 0.012, arm_height: float = 0.03):
        self.view = view
        k = view.pixels_per_metre
        self.link_px = max(1, int(round(link_width * k)))
        self.base_px = max(2.0, base_radius * k)
        self.tip_px = max(1.5, tip_radius * k)
        self.joint_px = max(1.0, 0.4 * link_width * k)
        self.target_px = max(1.5, target_radius * k)
        self.arm_height = arm_height
        self._table = np.empty((view.height, view.width, 3), np.uint8)
        self._table[:] = BACKGROUND
        self._table_depth = np.full((view.height, view.width), view.camera_height, np.float32)

    @staticmethod
    def _fixed(p: np.ndarray) -> tuple[int, int]:
        return int(round(p[0] * _ONE)), int(round(p[1] * _ONE))

    def rgb(self, joints_xy: np.ndarray, targets_xy: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        img = out if out is not None else np.empty_like(self._table)
        np.copyto(img, self._table)
        px = self.view.to_pixel(joints_xy)
        aa = cv2.LINE_AA
        for t in self.view.to_pixel(targets_xy).reshape(-1, 2):
            cv2.circle(img, self._fixed(t), int(round(self.target_px * _ONE)), TARGET, -1, aa, _SHIFT)
        cv2.circle(img, self._fixed(px[0]), int(round(self.base_px * _ONE)), BASE, -1, aa, _SHIFT)
        for a, b in zip(px[:-1], px[1:]):
            cv2.line(img, self._fixed(a), self._fixed(b), LINK, self.link_px, aa, _SHIFT)
        for j in px[1:-1]:
            cv2.circle(img, self._fixed(j), int(round(self.joint_px * _ONE)), JOINT, -1, aa, _SHIFT)
        cv2.circle(img, self._fixed(px[-1]), int(round(self.tip_px * _ONE)), TIP, -1, aa, _SHIFT)
        return img

    def depth(self, joints_xy: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Metres from the camera: the table everywhere, the arm ``arm_height`` above it (no anti-aliasing:
        a blended depth would invent surfaces that are not there)."""
        d = out if out is not None else np.empty_like(self._table_depth)
        np.copyto(d, self._table_depth)
        z = float(self.view.camera_height - self.arm_height)
        px = self.view.to_pixel(joints_xy)
        cv2.circle(d, self._fixed(px[0]), int(round(self.base_px * _ONE)), z, -1, cv2.LINE_8, _SHIFT)
        for a, b in zip(px[:-1], px[1:]):
            cv2.line(d, self._fixed(a), self._fixed(b), z, self.link_px, cv2.LINE_8, _SHIFT)
        cv2.circle(d, self._fixed(px[-1]), int(round(self.tip_px * _ONE)), z, -1, cv2.LINE_8, _SHIFT)
        return d
