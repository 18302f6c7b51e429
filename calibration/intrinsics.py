"""Camera intrinsics: from a RealSense's factory calibration, or from ChArUco images.

OpenCV 4.12's aruco module no longer has calibrateCameraCharuco, so corners are matched to board
points (detector + board geometry) and passed to cv2.calibrateCamera. Views whose reprojection RMS
is far above the rest (blur, a mis-detected corner) are dropped and the solve repeated.
Coverage: the image is cut into a grid; a cell counts as covered when a corner fell in it in any
kept view — uncovered borders mean the distortion there is extrapolated.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from calibration.charuco import BoardDetector, BoardSpec
from calibration.errors import CalibrationError
from calibration.samples import CameraModel

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# RealSense distortion model names (rs2_distortion) and what they mean for an OpenCV user.
_RS_MODELS_OPENCV_COMPATIBLE = ("none", "brown_conrady", "inverse_brown_conrady", "modified_brown_conrady")


@dataclass
class IntrinsicsResult:
    camera: CameraModel
    rms: float
    names: list[str]
    per_view_rms: np.ndarray
    rejected: list[bool]
    coverage: np.ndarray
    coverage_fraction: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = self.camera.to_dict()
        d["source"] = "charuco"
        d["rms_px"] = float(self.rms)
        d["views_used"] = int(sum(not r for r in self.rejected))
        d["views_rejected"] = [n for n, r in zip(self.names, self.rejected) if r]
        d["per_view_rms_px"] = {n: round(float(e), 4) for n, e in zip(self.names, self.per_view_rms)}
        d["coverage"] = round(float(self.coverage_fraction), 3)
        d["warnings"] = list(self.warnings)
        return d


def from_realsense(intr) -> dict:
    """camera.yaml content from a firmware_bridge.types.Intrinsics read off the device.

    D400 color streams report inverse Brown-Conrady with zero coefficients (so `dist` is zeros);
    for non-zero coefficients of the inverse model the OpenCV forward model is only approximate,
    and the file says so.
    """
    coeffs = [float(c) for c in intr.coeffs]
    model = str(intr.model).lower().replace(" ", "_")
    d = {
        "fx": float(intr.fx), "fy": float(intr.fy), "cx": float(intr.cx), "cy": float(intr.cy),
        "dist": coeffs if any(coeffs) else [0.0] * 5,
        "width": int(intr.width), "height": int(intr.height),
        "source": "realsense factory",
        "distortion_model": model,
    }
    if any(coeffs) and model not in ("brown_conrady", "none", "modified_brown_conrady"):
        d["warnings"] = [f"the device reports '{model}' with non-zero coefficients; OpenCV's model treats them as forward Brown-Conrady (approximate)"]
    return d


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"images directory not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise CalibrationError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    return files


def calibrate_charuco(
    images: Sequence[Path], board: BoardSpec, reject_factor: float = 3.0, reject_min_px: float = 1.0,
    grid: tuple[int, int] = (8, 6), min_corners: int = 8, min_views: int = 4,
) -> IntrinsicsResult:
    """Calibrate from ChArUco images; views above max(reject_min_px, reject_factor × median) are dropped."""
    det = BoardDetector(board)
    names, objs, imgs, size = [], [], [], None
    skipped = []
    for p in images:
        im = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if im is None:
            raise CalibrationError(f"cannot read image {p}")
        if size is None:
            size = (im.shape[1], im.shape[0])
        elif size != (im.shape[1], im.shape[0]):
            raise CalibrationError(f"image {p.name} is {im.shape[1]}x{im.shape[0]}, the others {size[0]}x{size[1]}")
        d = det.detect(im, min_corners=min_corners)
        if d is None:
            skipped.append(p.name)
            continue
        names.append(p.stem)
        objs.append(d.object_points.astype(np.float32))
        imgs.append(d.corners.astype(np.float32))
    if not names:
        raise CalibrationError(f"the board was not detected in any of the {len(images)} images (check board.yaml: size, dictionary, legacy_pattern)")
    if len(names) < min_views:
        raise CalibrationError(f"the board was detected in only {len(names)} images; intrinsics need at least {min_views} (better 15+ at varied tilts)")
    keep = np.ones(len(names), bool)
    for _ in range(3):
        idx = np.flatnonzero(keep)
        rms, K, dist, errs = _solve([objs[i] for i in idx], [imgs[i] for i in idx], size)
        per = np.full(len(names), np.nan)
        per[idx] = errs
        all_err = _per_view(objs, imgs, K, dist, size)
        thr = max(reject_min_px, reject_factor * float(np.median(all_err[keep])))
        new_keep = keep & (all_err <= thr)
        if new_keep.sum() < min_views or new_keep.sum() == keep.sum():
            break
        keep = new_keep
    idx = np.flatnonzero(keep)
    rms, K, dist, _ = _solve([objs[i] for i in idx], [imgs[i] for i in idx], size)
    per = _per_view(objs, imgs, K, dist, size)
    cov = np.zeros((grid[1], grid[0]), int)
    for i in idx:
        cx = np.clip((imgs[i][:, 0] / size[0] * grid[0]).astype(int), 0, grid[0] - 1)
        cy = np.clip((imgs[i][:, 1] / size[1] * grid[1]).astype(int), 0, grid[1] - 1)
        np.add.at(cov, (cy, cx), 1)
    frac = float((cov > 0).mean())
    warnings = [f"board not detected in {n}" for n in skipped]
    if frac < 0.6:
        warnings.append(f"corners cover only {frac:.0%} of the image grid: move the board into the corners and edges")
    if len(idx) < 10:
        warnings.append(f"only {len(idx)} views used; 15 or more at different tilts give stabler intrinsics")
    cam = CameraModel(size[0], size[1], K, dist.reshape(-1))
    return IntrinsicsResult(cam, rms, names, per, [not k for k in keep], cov, frac, warnings)


def _solve(objs, imgs, size):
    flags = 0
    rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(objs, imgs, size, None, None, flags=flags)
    errs = []
    for o, p, r, t in zip(objs, imgs, rvecs, tvecs):
        proj, _ = cv2.projectPoints(o, r, t, K, dist)
        errs.append(float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - p) ** 2, axis=1)))))
    return float(rms), K, dist, np.array(errs)


def _per_view(objs, imgs, K, dist, size) -> np.ndarray:
    """Each view's RMS after fitting only its own pose with the shared intrinsics."""
    out = []
    for o, p in zip(objs, imgs):
        ok, r, t = cv2.solvePnP(o, p, K, dist)
        r, t = cv2.solvePnPRefineLM(o, p, K, dist, r, t)
        proj, _ = cv2.projectPoints(o, r, t, K, dist)
        out.append(float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - p) ** 2, axis=1)))))
    return np.array(out)
