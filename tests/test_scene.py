"""The simulated scene: kinematics, where things land in the picture, targets and success."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from firmware_bridge.sim import PlanarArm, Scene, TopDownView
from firmware_bridge.sim import render as R


def _blob_centroids(rgb: np.ndarray, colour: tuple[int, int, int], tol: int = 30) -> list[np.ndarray]:
    """Centroids (u, v) of the connected regions close to a colour, largest first."""
    mask = (np.abs(rgb.astype(int) - np.array(colour)).max(axis=2) <= tol).astype(np.uint8)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(mask)
    order = np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1
    return [cents[i] for i in order]


class Holder:
    """Joint angles the test can change, as the servo emulator would."""

    def __init__(self, q):
        self.q = np.asarray(q, float)

    def __call__(self):
        return self.q


def test_forward_kinematics_two_and_three_links():
    arm = PlanarArm([0.12, 0.10])
    np.testing.assert_allclose(arm.end_effector([0.0, 0.0]), [0.22, 0.0], atol=1e-12)
    np.testing.assert_allclose(arm.end_effector([np.pi / 2, 0.0]), [0.0, 0.22], atol=1e-12)
    np.testing.assert_allclose(arm.end_effector([0.0, np.pi / 2]), [0.12, 0.10], atol=1e-12)
    pts = arm.joint_positions([0.3, -0.5])
    assert pts.shape == (3, 2)
    np.testing.assert_allclose(pts[0], [0, 0])
    np.testing.assert_allclose(np.linalg.norm(pts[1] - pts[0]), 0.12)
    np.testing.assert_allclose(np.linalg.norm(pts[2] - pts[1]), 0.10)
    arm3 = PlanarArm([0.1, 0.08, 0.05])
    np.testing.assert_allclose(arm3.end_effector([np.pi, 0, 0]), [-0.23, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="1 to 3 links"):
        PlanarArm([0.1] * 4)
    with pytest.raises(ValueError, match="expected 2 joint angles"):
        arm.end_effector([0.1, 0.2, 0.3])


def test_inverse_kinematics_round_trip_and_out_of_reach():
    arm = PlanarArm([0.12, 0.10])
    for xy in ([0.15, 0.05], [-0.05, 0.18], [0.03, -0.1]):
        for up in (True, False):
            np.testing.assert_allclose(arm.end_effector(arm.inverse(xy, up)), xy, atol=1e-9)
    with pytest.raises(ValueError, match="out of reach"):
        arm.inverse([0.3, 0.0])


def test_intrinsics_project_world_points_where_the_renderer_puts_them():
    view = TopDownView(width=160, height=120, workspace=0.4, camera_height=0.5)
    K = view.intrinsics.matrix()
    assert view.intrinsics.fx == pytest.approx(160 * 0.5 / 0.4)
    for xy in ([0.0, 0.0], [0.1, 0.05], [-0.17, -0.02]):
        cam = np.array([xy[0], -xy[1], view.camera_height])  # camera y points down the image
        uvw = K @ cam
        np.testing.assert_allclose(uvw[:2] / uvw[2], view.to_pixel(np.array(xy)), atol=1e-9)
    # the workspace spans the image width
    left, right = view.to_pixel(np.array([[-0.2, 0.0], [0.2, 0.0]]))
    assert right[0] - left[0] == pytest.approx(160)


@pytest.mark.parametrize("size", [(96, 96), (640, 480)])
def test_end_effector_base_and_target_land_where_geometry_says(size):
    w, h = size
    q = Holder([0.4, 0.9])
    scene = Scene(q, task="reach", width=w, height=h, workspace=0.5, seed=3)
    rgb, depth = scene.render(0.0)
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
    tol = max(0.6, 0.02 * w / 96)  # anti-aliased discs: centroid within a fraction of a pixel
    tip = _blob_centroids(rgb, R.TIP)[0]
    np.testing.assert_allclose(tip, scene.view.to_pixel(scene.end_effector()), atol=tol)
    # the first link hides part of the base disc: the visible parts of four arm headings 90° apart
    # average out to the disc's centre, which must be the image centre
    saved = q.q
    bases = []
    for heading in (0.0, np.pi / 2, np.pi, 3 * np.pi / 2):
        q.q = np.array([heading, 0.0])
        bases.append(_blob_centroids(scene.render()[0], R.BASE, tol=12)[0])
    q.q = saved
    np.testing.assert_allclose(np.mean(bases, axis=0), [(w - 1) / 2, (h - 1) / 2], atol=tol)
    target = _blob_centroids(rgb, R.TARGET)[0]
    np.testing.assert_allclose(target, scene.view.to_pixel(scene.targets[0]), atol=tol)
    # depth: table at camera height, arm raised above it
    assert depth.dtype == np.float32 and depth.shape == (h, w)
    u, v = np.round(scene.view.to_pixel(scene.end_effector())).astype(int)
    assert depth[v, u] == pytest.approx(0.5 - scene.renderer.arm_height)
    assert depth[0, 0] == pytest.approx(0.5)


def test_picture_follows_the_joint_angles():
    q = Holder([0.0, 0.0])
    scene = Scene(q, task="none", workspace=0.5)
    a, _ = scene.render()
    q.q = np.array([1.2, -0.4])
    b, _ = scene.render()
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(_blob_centroids(b, R.TIP)[0], scene.view.to_pixel(scene.end_effector()), atol=0.6)
    assert _blob_centroids(b, R.TARGET) == []


def test_targets_are_seeded_reachable_and_visible():
    scene = Scene(Holder([0, 0]), task="reach", seed=7)
    first = scene.targets.copy()
    assert np.array_equal(scene.reset(7), first)
    seen = {tuple(np.round(scene.reset(s)[0], 6)) for s in range(20)}
    assert len(seen) == 20
    hx, hy = scene.view.half_extent
    for s in range(50):
        (p,) = scene.reset(s)
        r = np.hypot(*p)
        assert scene.arm.inner_reach < r < scene.arm.reach
        assert abs(p[0]) < hx and abs(p[1]) < hy
        scene.arm.inverse(p)  # reachable: IK has a solution
    nxt = scene.reset()  # no seed: next episode, different from the last
    assert scene.episode == 1 and not np.array_equal(nxt, scene.reset(50))


def test_success_is_reaching_any_target():
    q = Holder([0.0, 0.0])
    scene = Scene(q, task="reach", seed=1)
    assert not scene.success()
    q.q = scene.arm.inverse(scene.targets[0])
    assert scene.distance_to_target() < 1e-9 and scene.success()
    q.q = scene.arm.inverse(scene.targets[0] + [scene.success_radius * 1.5, 0.0])
    assert not scene.success()

    multi = Scene(q, task="reach_multimodal", seed=2)
    assert multi.targets.shape == (2, 2)
    np.testing.assert_allclose(multi.targets[1], multi.targets[0] * [1, -1])  # mirrored about the home direction (+x)
    blobs = _blob_centroids(multi.render()[0], R.TARGET)
    assert len(blobs) == 2
    for t in multi.targets:
        q.q = multi.arm.inverse(t)
        assert multi.success()

    none = Scene(q, task="none")
    assert none.targets.shape == (0, 2) and not none.success()
    with pytest.raises(ValueError, match="unknown scene task"):
        Scene(q, task="push")
