"""Render a ChArUco board as a pinhole camera at a known pose would see it (ground truth for tests,
and `edgedp calibrate render-board` for printing a board).

The printed board image is mapped onto the camera with the plane homography K [r1 r2 t] and drawn
with cv2.warpPerspective at `supersample` times the camera resolution, then area-averaged down, so
edges are anti-aliased like a real sensor's; optional blur and Gaussian noise follow.
Lens distortion is not rendered: ground-truth images are made with a distortion-free camera.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from calibration.charuco import BoardSpec


def board_image(spec: BoardSpec, px_per_square: int = 60, margin_px: int = 0) -> np.ndarray:
    """The printable board (grey uint8) at an exact whole number of pixels per square."""
    board = spec.build()
    size = (spec.squares_x * px_per_square + 2 * margin_px, spec.squares_y * px_per_square + 2 * margin_px)
    return board.generateImage(size, marginSize=margin_px, borderBits=1)


def render_view(
    spec: BoardSpec,
    K: np.ndarray,
    T_cam_board: np.ndarray,
    size: tuple[int, int] = (640, 480),
    noise_sigma: float = 0.0,
    blur_sigma: float = 0.0,
    background: int = 128,
    supersample: int = 3,
    px_per_square: int = 80,
    rng: Optional[np.random.Generator] = None,
) -> np.ndarray:
    """Grey uint8 image of the board seen from camera←board pose `T_cam_board` with intrinsics K."""
    tex = board_image(spec, px_per_square)
    s = spec.square_length / px_per_square  # metres per texture pixel
    # Texture pixel centres sit at integer coordinates, so pixel u spans board x in [u*s, (u+1)*s).
    A = np.array([[s, 0.0, 0.5 * s], [0.0, s, 0.5 * s], [0.0, 0.0, 1.0]])
    Ks = K.astype(np.float64).copy()
    Ks[:2, :] *= supersample
    # Camera pixel centres are at integers too: scaling by f maps centre c to f*c + (f-1)/2.
    Ks[0, 2] += (supersample - 1) / 2.0
    Ks[1, 2] += (supersample - 1) / 2.0
    H = Ks @ np.column_stack([T_cam_board[:3, 0], T_cam_board[:3, 1], T_cam_board[:3, 3]]) @ A
    W, Hh = size
    big = cv2.warpPerspective(
        tex, H, (W * supersample, Hh * supersample), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=background,
    )
    img = cv2.resize(big, (W, Hh), interpolation=cv2.INTER_AREA).astype(np.float64)
    if blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur_sigma)
    if noise_sigma > 0:
        rng = rng or np.random.default_rng(0)
        img = img + rng.normal(0.0, noise_sigma, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, -1.0, 0.0])) -> np.ndarray:
    """world←camera transform of a camera at `eye` looking at `target` (camera z forward, y down)."""
    z = np.asarray(target, float) - np.asarray(eye, float)
    z /= np.linalg.norm(z)
    x = np.cross(up, z)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(np.array([1.0, 0.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.column_stack([x, y, z])
    T[:3, 3] = eye
    return T


def random_views(
    spec: BoardSpec, n: int, rng: np.random.Generator, distance: tuple[float, float] = (0.35, 0.55),
    tilt_rad: float = 0.5, roll_rad: float = 0.6, offset: float = 0.03,
) -> list[np.ndarray]:
    """camera←board poses that keep the board in front of the camera, tilted and rolled at random."""
    from calibration.se3 import make_T, rotvec_to_R

    center = np.array([spec.squares_x * spec.square_length / 2, spec.squares_y * spec.square_length / 2, 0.0])
    views = []
    for _ in range(n):
        tilt = rng.uniform(-tilt_rad, tilt_rad, 2)
        R = rotvec_to_R(np.array([tilt[0], tilt[1], 0.0])) @ rotvec_to_R(np.array([0.0, 0.0, rng.uniform(-roll_rad, roll_rad)]))
        p = np.array([rng.uniform(-offset, offset), rng.uniform(-offset, offset), rng.uniform(*distance)])
        views.append(make_T(R, p - R @ center))
    return views


def robot_poses_for_views(views: list[np.ndarray], X: np.ndarray, W: np.ndarray, mode: str) -> list[np.ndarray]:
    """base←gripper poses that produce the given camera←board views for hand-eye X and board pose W.

    eye_in_hand: W = base←board, X = gripper←camera: G = W C⁻¹ X⁻¹.
    eye_to_hand: W = gripper←board, X = base←camera: G = X C W⁻¹.
    """
    from calibration.se3 import inv_T

    if mode == "eye_in_hand":
        return [W @ inv_T(C) @ inv_T(X) for C in views]
    return [X @ C @ inv_T(W) for C in views]


def views_for_robot_poses(G: list[np.ndarray], X: np.ndarray, W: np.ndarray, mode: str) -> list[np.ndarray]:
    """camera←board seen at robot poses G (the inverse of robot_poses_for_views)."""
    from calibration.se3 import inv_T

    if mode == "eye_in_hand":
        return [inv_T(X) @ inv_T(g) @ W for g in G]
    return [inv_T(X) @ g @ W for g in G]


def write_handeye_dataset(
    folder, spec: BoardSpec, K: np.ndarray, size: tuple[int, int], X: np.ndarray, W: np.ndarray, mode: str,
    views: list[np.ndarray] | None = None, robot_poses: list[np.ndarray] | None = None, joints: list | None = None,
    noise_sigma: float = 0.0, blur_sigma: float = 0.0, seed: int = 0,
) -> list[np.ndarray]:
    """Render a complete samples directory with known hand-eye X and board pose W; returns the views.

    Give either camera←board `views` (robot poses are derived) or `robot_poses` (views derived);
    with `joints`, samples.yaml stores those joint lists instead of gripper poses.
    """
    from pathlib import Path

    from calibration.samples import CameraModel, pose_dict, write_samples_dir

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if robot_poses is None:
        robot_poses = robot_poses_for_views(views, X, W, mode)
    if views is None:
        views = views_for_robot_poses(robot_poses, X, W, mode)
    entries = []
    for k, (C, G) in enumerate(zip(views, robot_poses)):
        name = f"view_{k:02d}.png"
        img = render_view(spec, K, C, size, noise_sigma=noise_sigma, blur_sigma=blur_sigma, rng=rng)
        cv2.imwrite(str(folder / name), img)
        e = {"image": name}
        if joints is not None:
            e["joints"] = [float(v) for v in joints[k]]
        else:
            e["gripper_pose"] = pose_dict(G)
        entries.append(e)
    write_samples_dir(folder, entries, CameraModel(size[0], size[1], K, np.zeros(5)), spec)
    return views
