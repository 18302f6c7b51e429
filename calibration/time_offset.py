"""Delays between streams, found by cross-correlating motion signals.

Camera delay: how much later the camera's timestamps show a motion than the joint stream does.
The image-motion signal is the mean absolute difference of consecutive frames (it rises whenever
the arm moves in view), the joint signal is the joint speed ‖dq‖; both are resampled to a common
grid, normalised, and cross-correlated; the peak is refined with a parabola through its neighbours
(sub-sample). Command delay: the same between commanded and measured joint velocity.
The runtime aligns observations with  t_true = t_camera − camera_delay_s, and plans with
command_delay_s as extra actuation latency.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from calibration.errors import CalibrationError

MIN_CORRELATION = 0.5


def image_motion_signal(times: Sequence[float], images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean |frame difference| between consecutive frames, stamped midway between the two frames
    (the difference measures the motion over that interval)."""
    t = np.asarray(times, float)
    if len(images) < 3 or len(t) != len(images):
        raise CalibrationError("need at least 3 frames, each with a time stamp")
    prev = np.asarray(images[0], np.float32)
    out = np.empty(len(images) - 1)
    for k in range(1, len(images)):
        cur = np.asarray(images[k], np.float32)
        out[k - 1] = float(np.mean(np.abs(cur - prev)))
        prev = cur
    return (t[1:] + t[:-1]) / 2.0, out


def joint_speed_signal(times: Sequence[float], q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times, float)
    q = np.asarray(q, float).reshape(len(t), -1)
    if len(t) < 3:
        raise CalibrationError("need at least 3 joint samples")
    dq = np.gradient(q, t, axis=0)
    return t, np.linalg.norm(dq, axis=1)


def joint_velocity_signal(times: Sequence[float], q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed velocity summed over joints with each joint normalised (keeps direction information)."""
    t = np.asarray(times, float)
    q = np.asarray(q, float).reshape(len(t), -1)
    dq = np.gradient(q, t, axis=0)
    scale = np.std(dq, axis=0)
    scale[scale == 0] = 1.0
    return t, (dq / scale).sum(axis=1)


def estimate_delay(
    t_ref: np.ndarray, s_ref: np.ndarray, t_late: np.ndarray, s_late: np.ndarray,
    max_lag: float = 0.5, dt: Optional[float] = None,
) -> tuple[float, float]:
    """Delay d (s) such that s_late(t) ≈ s_ref(t − d), and the peak normalised correlation."""
    t_ref, s_ref, t_late, s_late = (np.asarray(a, float) for a in (t_ref, s_ref, t_late, s_late))
    if dt is None:
        dt = min(np.median(np.diff(t_ref)), np.median(np.diff(t_late))) / 2.0
    t0 = max(t_ref[0], t_late[0])
    t1 = min(t_ref[-1], t_late[-1])
    if t1 - t0 < 4 * max_lag:
        raise CalibrationError(f"the streams overlap for {max(0.0, t1 - t0):.2f} s; need at least {4 * max_lag:.2f} s (4 × max lag)")
    grid = np.arange(t0, t1, dt)
    a = np.interp(grid, t_ref, s_ref)
    b = np.interp(grid, t_late, s_late)
    a = a - a.mean()
    b = b - b.mean()
    if a.std() < 1e-12 or b.std() < 1e-12:
        raise CalibrationError("one of the signals is flat: nothing moved during the recording")
    a /= a.std()
    b /= b.std()
    n = len(grid)
    L = int(round(max_lag / dt))
    lags = np.arange(-L, L + 1)
    corr = np.empty(len(lags))
    for k, lag in enumerate(lags):
        if lag >= 0:
            x, y = a[: n - lag], b[lag:]
        else:
            x, y = a[-lag:], b[: n + lag]
        # Pearson over the overlap only: a plain mean would favour lags whose overlap is louder.
        x = x - x.mean()
        y = y - y.mean()
        corr[k] = float(np.sum(x * y) / (np.sqrt(np.sum(x * x) * np.sum(y * y)) + 1e-300))
    i = int(np.argmax(corr))
    frac = 0.0
    if 0 < i < len(corr) - 1:
        y0, y1, y2 = corr[i - 1], corr[i], corr[i + 1]
        den = y0 - 2 * y1 + y2
        if abs(den) > 1e-12:
            frac = 0.5 * (y0 - y2) / den
    if i in (0, len(corr) - 1):
        raise CalibrationError(f"the correlation peaks at the edge of ±{max_lag} s; raise --max-lag")
    return float((lags[i] + frac) * dt), float(corr[i])


def estimate_camera_delay(cam_t, images, joint_t, joint_q, max_lag: float = 0.5) -> tuple[float, float]:
    tc, sc = image_motion_signal(cam_t, images)
    return _camera_delay_from_signal(tc, sc, joint_t, joint_q, max_lag)


def _camera_delay_from_signal(tc, sc, joint_t, joint_q, max_lag: float) -> tuple[float, float]:
    """Delay of an image-motion signal behind the joints.

    How many pixels change per radian differs per joint (a base joint sweeps the whole arm, a wrist
    joint a few pixels), so after a first estimate against the plain speed norm the image signal is
    regressed on the per-joint speeds |dq_k| (non-negative weights) at that delay, and the delay is
    estimated again against the weighted sum; twice.
    """
    from scipy.optimize import nnls

    tj = np.asarray(joint_t, float)
    q = np.asarray(joint_q, float).reshape(len(tj), -1)
    if len(tj) < 3:
        raise CalibrationError("need at least 3 joint samples")
    # Match what a frame difference sees: each joint's displacement over one frame period, centred.
    half = 0.5 * float(np.median(np.diff(tc))) if len(tc) > 1 else 0.0
    if half > 0:
        ahead = np.column_stack([np.interp(tj + half, tj, q[:, k]) for k in range(q.shape[1])])
        behind = np.column_stack([np.interp(tj - half, tj, q[:, k]) for k in range(q.shape[1])])
        speeds = np.abs(ahead - behind) / (2 * half)
    else:
        speeds = np.abs(np.gradient(q, tj, axis=0))
    d, c = estimate_delay(tj, np.linalg.norm(speeds, axis=1), tc, sc, max_lag)
    if speeds.shape[1] == 1:
        return d, c
    for _ in range(2):
        inside = (tj + d >= tc[0]) & (tj + d <= tc[-1])
        if inside.sum() < 10:
            break
        y = np.interp(tj[inside] + d, tc, sc)
        A = np.column_stack([speeds[inside], np.ones(inside.sum())])
        w, _ = nnls(A, y)
        if not np.any(w[:-1] > 0):
            break
        d, c = estimate_delay(tj, speeds @ w[:-1], tc, sc, max_lag)
    return d, c


def estimate_command_delay(cmd_t, cmd_q, joint_t, joint_q, max_lag: float = 0.5) -> tuple[float, float]:
    tc, vc = joint_velocity_signal(cmd_t, cmd_q)
    tj, vj = joint_velocity_signal(joint_t, joint_q)
    return estimate_delay(tc, vc, tj, vj, max_lag)


def estimate_from_npz(path: str | Path, max_lag: float = 0.5) -> dict:
    """Both delays from a recording: cam_t + cam_images (N,H,W[,3]) or cam_motion, joint_t + joint_q,
    optional cmd_t + cmd_q."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"streams file not found: {path}")
    try:
        z = np.load(path)
    except (ValueError, OSError) as exc:
        raise CalibrationError(f"{path}: not a .npz file ({exc})") from None
    for key in ("cam_t", "joint_t", "joint_q"):
        if key not in z.files:
            raise CalibrationError(f"{path}: missing array '{key}' (have: {', '.join(z.files)})")
    if "cam_motion" not in z.files and "cam_images" not in z.files:
        raise CalibrationError(f"{path}: needs 'cam_images' or 'cam_motion'")
    return estimate_from_arrays({k: z[k] for k in z.files}, max_lag)


def excitation(t: np.ndarray | float, center: np.ndarray, amplitude: float) -> np.ndarray:
    """Commanded joint motion for delay measurement: two incommensurate sines per joint, so the
    cross-correlation has one clear peak instead of one per period; starts at `center` with zero phase."""
    t = np.asarray(t, float)[..., None]
    n = len(center)
    k = np.arange(n)
    f1 = 0.5 + 0.13 * k
    f2 = 1.37 + 0.21 * k
    return np.asarray(center) + amplitude * (0.7 * np.sin(2 * np.pi * f1 * t) + 0.3 * np.sin(2 * np.pi * f2 * t))


def record_streams(bus, camera, center: Sequence[float], amplitude: float = 0.3, duration: float = 6.0,
                   rate_hz: float = 100.0, image_scale: float = 0.25, clock=None, sleep=None) -> dict:
    """Drive the arm through `excitation` with torque on and record what the delays need.

    Works on the ServoBus and Camera protocols (the real arm, or the emulator with the virtual
    camera). Frames are kept grey and downscaled (`image_scale`) to bound memory. The arm returns to
    `center` at the end; the caller switches torque off.
    """
    import time as _time

    import cv2

    from calibration.busio import read_state

    clock = clock or _time.monotonic
    sleep = sleep or _time.sleep
    center = np.asarray(center, float)
    bus.set_torque(True)
    bus.write_goal(center)
    sleep(0.5)
    cmd_t, cmd_q, joint_t, joint_q, cam_t, cam_img = [], [], [], [], [], []
    last_seq = None
    t0 = clock()
    period = 1.0 / rate_hz
    k = 0
    while True:
        now = clock()
        if now - t0 > duration:
            break
        goal = excitation(now - t0, center, amplitude)
        bus.write_goal(goal)
        cmd_t.append(now)
        cmd_q.append(goal)
        js = read_state(bus)
        joint_t.append(js.t)
        joint_q.append(np.asarray(js.q, float))
        f = camera.latest()
        if f is not None and f.seq != last_seq:
            last_seq = f.seq
            g = f.image if f.image.ndim == 2 else cv2.cvtColor(f.image, cv2.COLOR_RGB2GRAY)
            if image_scale != 1.0:
                g = cv2.resize(g, None, fx=image_scale, fy=image_scale, interpolation=cv2.INTER_AREA)
            cam_t.append(f.t)
            cam_img.append(g)
        k += 1
        sleep(max(0.0, t0 + k * period - clock()))
    bus.write_goal(center)
    if len(cam_t) < 3:
        raise CalibrationError(f"the camera delivered only {len(cam_t)} frames in {duration:g} s")
    return {
        "cmd_t": np.array(cmd_t), "cmd_q": np.array(cmd_q), "joint_t": np.array(joint_t),
        "joint_q": np.array(joint_q), "cam_t": np.array(cam_t), "cam_images": np.array(cam_img),
    }


def estimate_from_arrays(z: dict, max_lag: float = 0.5) -> dict:
    """Both delays from recorded arrays (the same keys as the .npz file)."""
    if "cam_motion" in z:
        tc, sc = np.asarray(z["cam_t"], float), np.asarray(z["cam_motion"], float)
    else:
        tc, sc = image_motion_signal(z["cam_t"], z["cam_images"])
    warnings = []
    cam_d, cam_c = _camera_delay_from_signal(tc, sc, z["joint_t"], z["joint_q"], max_lag)
    if cam_c < MIN_CORRELATION:
        warnings.append(f"weak camera/joint correlation ({cam_c:.2f}): is the arm in view and moving?")
    out = {"camera_delay_s": cam_d, "camera_correlation": cam_c, "command_delay_s": None, "command_correlation": None}
    if "cmd_t" in z and "cmd_q" in z:
        d, c = estimate_command_delay(z["cmd_t"], z["cmd_q"], z["joint_t"], z["joint_q"], max_lag)
        out["command_delay_s"], out["command_correlation"] = d, c
        if c < MIN_CORRELATION:
            warnings.append(f"weak command/motion correlation ({c:.2f})")
    out["warnings"] = warnings
    out["convention"] = "t_true = t_camera - camera_delay_s; motion follows a command after command_delay_s"
    return out
