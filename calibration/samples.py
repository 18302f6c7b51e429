"""The hand-eye samples directory and camera.yaml: reading, validating and writing them.

Layout:
  samples.yaml  samples: [{image: a.png, joints: [rad, ...]} | {image: a.png, gripper_pose:
                 {translation: [x, y, z] m, quaternion: [qx, qy, qz, qw]}}, ...]   (base←gripper)
  camera.yaml   fx, fy, cx, cy, dist: [k1, k2, p1, p2, k3], width, height   (OpenCV distortion model)
  board.yaml    squares_x, squares_y, square_length, marker_length (m), dictionary, legacy_pattern
Files are written to a temporary name and renamed, so an interrupted run leaves no half file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import yaml

from calibration.charuco import BoardSpec, load_board
from calibration.errors import CalibrationError
from calibration.se3 import R_to_quat, make_T, quat_to_R
from firmware_bridge.atomic_file import atomic_write_text, default_mode


@dataclass
class CameraModel:
    width: int
    height: int
    K: np.ndarray
    dist: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "fx": float(self.K[0, 0]), "fy": float(self.K[1, 1]),
            "cx": float(self.K[0, 2]), "cy": float(self.K[1, 2]),
            "dist": [float(v) for v in np.asarray(self.dist).reshape(-1)],
            "width": int(self.width), "height": int(self.height),
        }


def camera_from_dict(data: object, where: str = "camera.yaml") -> CameraModel:
    if not isinstance(data, dict):
        raise CalibrationError(f"{where}: expected a mapping with fx, fy, cx, cy, dist, width, height")
    for key in ("fx", "fy", "cx", "cy", "width", "height"):
        if key not in data:
            raise CalibrationError(f"{where}: missing key '{key}'")
    try:
        fx, fy, cx, cy = (float(data[k]) for k in ("fx", "fy", "cx", "cy"))
        w, h = int(data["width"]), int(data["height"])
        dist = np.array([float(v) for v in (data.get("dist") or [])], dtype=np.float64)
    except (TypeError, ValueError):
        raise CalibrationError(f"{where}: fx, fy, cx, cy must be numbers, width/height integers, dist a list of numbers") from None
    if fx <= 0 or fy <= 0 or w <= 0 or h <= 0:
        raise CalibrationError(f"{where}: fx, fy, width and height must be positive")
    if len(dist) not in (0, 4, 5, 8, 12, 14):
        raise CalibrationError(f"{where}: dist has {len(dist)} values (OpenCV takes 4, 5, 8, 12 or 14)")
    if len(dist) == 0:
        dist = np.zeros(5)
    return CameraModel(w, h, np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), dist)


def load_camera(path: str | Path) -> CameraModel:
    return camera_from_dict(_read_yaml(Path(path), "camera file"), str(path))


@dataclass
class Sample:
    name: str
    image: Path
    T_base_gripper: np.ndarray
    joints: Optional[np.ndarray] = None


def _read_yaml(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CalibrationError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CalibrationError(f"{path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None


def load_samples(
    folder: str | Path, fk: Optional[Callable[[Sequence[float]], np.ndarray]] = None, n_joints: Optional[int] = None
) -> tuple[list[Sample], CameraModel, BoardSpec]:
    """Read samples.yaml, camera.yaml and board.yaml from a samples directory; check every entry."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CalibrationError(f"samples directory not found: {folder}")
    data = _read_yaml(folder / "samples.yaml", "samples.yaml")
    camera = load_camera(folder / "camera.yaml")
    board = load_board(folder / "board.yaml")
    if not isinstance(data, dict) or not isinstance(data.get("samples"), list):
        raise CalibrationError(f"{folder / 'samples.yaml'}: expected a top-level list 'samples'")
    out: list[Sample] = []
    for i, entry in enumerate(data["samples"]):
        where = f"samples.yaml: samples[{i}]"
        if not isinstance(entry, dict) or "image" not in entry:
            raise CalibrationError(f"{where}: each sample needs 'image' and 'joints' or 'gripper_pose'")
        img = folder / str(entry["image"])
        if not img.is_file():
            raise CalibrationError(f"{where}: image not found: {img}")
        has_j, has_p = "joints" in entry, "gripper_pose" in entry
        if has_j == has_p:
            raise CalibrationError(f"{where}: give exactly one of 'joints' or 'gripper_pose'")
        if has_j:
            if fk is None:
                raise CalibrationError(f"{where}: joint angles need a robot model (--robot CONFIG with robot.dh, or --urdf)")
            try:
                q = np.array([float(v) for v in entry["joints"]])
            except (TypeError, ValueError):
                raise CalibrationError(f"{where}: joints must be a list of numbers (radians)") from None
            if n_joints is not None and len(q) != n_joints:
                raise CalibrationError(f"{where}: {len(q)} joint values, the robot model has {n_joints}")
            out.append(Sample(img.stem, img, np.asarray(fk(q), float), q))
        else:
            out.append(Sample(img.stem, img, _pose(entry["gripper_pose"], where)))
    if not out:
        raise CalibrationError(f"{folder / 'samples.yaml'}: no samples")
    return out, camera, board


def _pose(p: object, where: str) -> np.ndarray:
    try:
        t = [float(v) for v in p["translation"]]  # type: ignore[index]
        q = [float(v) for v in p["quaternion"]]  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        raise CalibrationError(f"{where}: gripper_pose needs translation [x, y, z] (m) and quaternion [qx, qy, qz, qw]") from None
    if len(t) != 3 or len(q) != 4:
        raise CalibrationError(f"{where}: gripper_pose needs 3 translation values and 4 quaternion values")
    try:
        R = quat_to_R(q)
    except ValueError:
        raise CalibrationError(f"{where}: gripper_pose quaternion has zero length") from None
    return make_T(R, t)


def pose_dict(T: np.ndarray) -> dict[str, list[float]]:
    return {"translation": [float(v) for v in T[:3, 3]], "quaternion": [float(v) for v in R_to_quat(T[:3, :3])]}


def file_mode() -> int:
    """The mode a plain open() would give a new file (mkstemp makes 0600, too strict for shared results)."""
    return default_mode()


def write_yaml_atomic(path: str | Path, data: Any) -> None:
    """YAML through the project's one atomic-write recipe (firmware_bridge.atomic_file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def write_samples_dir(
    folder: str | Path, entries: list[dict[str, Any]], camera: CameraModel, board: BoardSpec
) -> None:
    """Write samples.yaml (entries already hold image names), camera.yaml and board.yaml."""
    folder = Path(folder)
    write_yaml_atomic(folder / "camera.yaml", camera.to_dict())
    write_yaml_atomic(folder / "board.yaml", board.to_dict())
    write_yaml_atomic(folder / "samples.yaml", {"samples": entries})
