"""Guided collection of hand-eye samples on a connected robot and camera.

Works against the firmware_bridge.types protocols only (ServoBus: read/write_goal/set_torque;
Camera: latest() -> Frame with an RGB image and host time t), so it runs the same on the real arm,
the emulator, or test doubles. Each candidate sample is taken only when the robot has stopped, a
frame newer than the stop is in hand, the board is seen with enough corners, and the pose differs
from every sample kept so far (so the set stays diverse); the motion check runs at the end.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from calibration.charuco import BoardDetector, BoardSpec, board_pose
from calibration.degeneracy import analyse_motion
from calibration.busio import read_q
from calibration.errors import CalibrationError
from calibration.samples import CameraModel, write_samples_dir
from calibration.se3 import T_error, inv_T


class HandEyeCollector:
    def __init__(
        self, bus, camera, board: BoardSpec, camera_model: CameraModel, out_dir: str | Path,
        min_corners: int = 10, min_step_deg: float = 5.0, min_step_m: float = 0.02,
        settle_s: float = 0.3, reach_tol: float = 0.01, reach_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
    ):
        self.bus, self.camera, self.board, self.cam = bus, camera, board, camera_model
        self.out = Path(out_dir)
        self.det = BoardDetector(board)
        self.min_corners, self.min_step_deg, self.min_step_m = min_corners, min_step_deg, min_step_m
        self.settle_s, self.reach_tol, self.reach_timeout_s = settle_s, reach_tol, reach_timeout_s
        self.clock, self.sleep = clock, sleep
        self.entries: list[dict] = []
        self._views: list[np.ndarray] = []  # camera←board of kept samples (diversity check)

    def _fresh_frame(self, after: float, timeout: float = 2.0):
        end = self.clock() + timeout
        while self.clock() < end:
            f = self.camera.latest()
            if f is not None and f.t >= after:
                return f
            self.sleep(0.01)
        raise CalibrationError("the camera delivered no new frame within 2 s")

    def try_take(self, say: Callable[[str], None]) -> bool:
        """Take one sample at the current pose if the board is seen and the view is new enough."""
        q = read_q(self.bus)
        frame = self._fresh_frame(self.clock())
        img = frame.image
        gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
        d = self.det.detect(gray, min_corners=self.min_corners)
        if d is None:
            say(f"board not seen (need {self.min_corners} corners): not taken")
            return False
        C, rms = board_pose(d, self.cam.K, self.cam.dist)
        for k, V in enumerate(self._views):
            dr, dt = T_error(V, C)
            if dr < self.min_step_deg and dt < self.min_step_m:
                say(f"too close to sample {k} ({dr:.1f} deg, {dt * 1000:.0f} mm): not taken")
                return False
        name = f"sample_{len(self.entries):03d}.png"
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / f".{name}"
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
        if not cv2.imwrite(str(tmp), bgr):
            raise CalibrationError(f"cannot write {self.out / name}")
        tmp.replace(self.out / name)
        self._views.append(C)
        self.entries.append({"image": name, "joints": [float(v) for v in q]})
        write_samples_dir(self.out, self.entries, self.cam, self.board)
        say(f"took {name}: {len(d.ids)} corners, PnP RMS {rms:.2f} px")
        return True

    def _wait_reached(self, goal: np.ndarray) -> bool:
        end = self.clock() + self.reach_timeout_s
        while self.clock() < end:
            q = read_q(self.bus)
            if np.max(np.abs(q - goal)) < self.reach_tol:
                return True
            self.sleep(0.02)
        return False

    def run_poses(self, poses: Sequence[Sequence[float]], say: Callable[[str], None]) -> list[dict]:
        """Visit each pose with torque on, take a sample at each; torque stays on for the caller to end."""
        self.bus.set_torque(True)
        for k, pose in enumerate(poses):
            goal = np.asarray(pose, float)
            self.bus.write_goal(goal)
            if not self._wait_reached(goal):
                say(f"pose {k}: not reached within {self.reach_timeout_s:g} s; skipped")
                continue
            self.sleep(self.settle_s)
            self.try_take(say)
        return self.finish(say)

    def run_manual(self, prompt: Callable[[str], str], say: Callable[[str], None]) -> list[dict]:
        """Torque off; the user moves the arm and presses Enter per sample, 'q' to finish."""
        self.bus.set_torque(False)
        say("torque is OFF: move the arm so the board is in view, hold still, press Enter. Type q to finish.")
        while True:
            ans = prompt(f"[{len(self.entries)} samples] Enter = take, q = finish: ").strip().lower()
            if ans == "q":
                break
            self.try_take(say)
        return self.finish(say)

    def finish(self, say: Callable[[str], None]) -> list[dict]:
        """Check the diversity of the collected camera motion (the robot side equals it up to X)."""
        if len(self._views) >= 2:
            rep = analyse_motion([inv_T(V) for V in self._views])
            for e in rep.errors:
                say(f"warning: {e}")
            for w in rep.warnings:
                say(f"warning: {w}")
        say(f"{len(self.entries)} samples in {self.out}")
        return self.entries
