"""Stream delays from cross-correlation, against streams with known delays (synthetic and the sim scene)."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from calibration.errors import CalibrationError
from calibration.time_offset import estimate_camera_delay, estimate_command_delay, estimate_delay


def q_of(t):
    t = np.asarray(t, float)
    return np.stack([0.6 * np.sin(2 * np.pi * 0.45 * t) + 0.25 * np.sin(2 * np.pi * 1.7 * t + 1.0),
                     0.5 * np.sin(2 * np.pi * 0.8 * t + 0.3)], axis=-1)


def _streams(cam_delay, cmd_delay, seed=0, duration=6.0):
    rng = np.random.default_rng(seed)
    jt = np.arange(0, duration, 0.004) + rng.uniform(0, 0.001, int(np.ceil(duration / 0.004)))  # jittery servo loop
    jq = q_of(jt) + rng.normal(0, 2e-4, (len(jt), 2))
    ct = np.arange(0, duration, 1 / 30)
    yy, xx = np.mgrid[0:48, 0:64]
    imgs = []
    for t in ct:  # a blob that follows the arm, seen cam_delay late
        q = q_of(t - cam_delay)
        x, y = 32 + 18 * q[0], 24 + 14 * q[1]
        imgs.append((255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 18) + rng.normal(0, 2, xx.shape)).astype(np.float32))
    cmd_t = jt
    cmd_q = q_of(jt + cmd_delay)  # the arm follows the command cmd_delay later
    return ct, np.array(imgs), jt, jq, cmd_t, cmd_q


@pytest.mark.parametrize("cam_delay,cmd_delay", [(0.0437, 0.021), (0.0, 0.0), (0.120, 0.008)])
def test_recovers_known_delays(cam_delay, cmd_delay):
    ct, imgs, jt, jq, cmd_t, cmd_q = _streams(cam_delay, cmd_delay)
    d, c = estimate_camera_delay(ct, imgs, jt, jq)
    print(f"\ncamera delay true {cam_delay * 1000:.1f} ms, estimated {d * 1000:.2f} ms (corr {c:.3f})")
    assert abs(d - cam_delay) < 0.004  # an eighth of a 30 fps frame
    assert c > 0.8
    d, c = estimate_command_delay(cmd_t, cmd_q, jt, jq)
    print(f"command delay true {cmd_delay * 1000:.1f} ms, estimated {d * 1000:.2f} ms (corr {c:.3f})")
    assert abs(d - cmd_delay) < 0.001


def test_negative_delay_and_errors():
    t = np.arange(0, 5, 0.01)
    s = np.sin(2 * np.pi * 0.9 * t) ** 2 + 0.3 * np.sin(2 * np.pi * 2.3 * t)
    late = np.interp(t + 0.05, t, s)  # "late" stream is actually 50 ms early
    d, _ = estimate_delay(t, s, t, late, max_lag=0.3)
    assert abs(d + 0.05) < 0.002
    with pytest.raises(CalibrationError, match="flat"):
        estimate_delay(t, s, t, np.ones_like(t), max_lag=0.3)
    with pytest.raises(CalibrationError, match="overlap"):
        estimate_delay(t, s, t[:50], s[:50], max_lag=0.3)
    with pytest.raises(CalibrationError, match="edge"):
        estimate_delay(t, s, t, np.interp(t - 0.25, t, s), max_lag=0.1)


def test_with_sim_scene_camera():
    """The simulated scene renders the arm; frames are stamped 66 ms after the pose they show."""
    from firmware_bridge.sim import Scene

    class Source:
        q = np.zeros(2)

        def __call__(self):
            return self.q

    src = Source()
    scene = Scene(src, width=96, height=96, workspace=0.5, task="none", depth=False)
    delay = 0.066
    ct = np.arange(0, 6, 1 / 30)
    imgs = []
    for t in ct:
        src.q = q_of(t - delay)
        imgs.append(scene.render(t)[0].mean(axis=2))
    jt = np.arange(0, 6, 0.005)
    d, c = estimate_camera_delay(ct, imgs, jt, q_of(jt))
    print(f"\nsim scene: true {delay * 1000:.1f} ms, estimated {d * 1000:.2f} ms (corr {c:.3f})")
    assert abs(d - delay) < 0.008 and c > 0.7


def test_cli_time_offset_from_npz(tmp_path):
    from edgedp import cli

    ct, imgs, jt, jq, cmd_t, cmd_q = _streams(0.05, 0.015, seed=3)
    f = tmp_path / "streams.npz"
    np.savez(f, cam_t=ct, cam_images=np.clip(imgs, 0, 255).astype(np.uint8), joint_t=jt, joint_q=jq, cmd_t=cmd_t, cmd_q=cmd_q)
    out = tmp_path / "offsets.yaml"
    assert cli.main(["calibrate", "time-offset", str(f), "--out", str(out)]) == 0
    d = yaml.safe_load(out.read_text())
    assert abs(d["camera_delay_s"] - 0.05) < 0.004 and abs(d["command_delay_s"] - 0.015) < 0.001
    np.savez(tmp_path / "bad.npz", cam_t=ct)
    assert cli.main(["calibrate", "time-offset", str(tmp_path / "bad.npz"), "--out", str(out)]) == 2
    assert cli.main(["calibrate", "time-offset", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2


def _sim_config(tmp_path):
    cfg = {"robot": {"bus": {"port": "emulator"}, "joints": [
        {"name": "shoulder", "id": 1, "model": "xm430-w350", "min": -1.5, "max": 1.5, "max_velocity": 3, "max_acceleration": 20},
        {"name": "elbow", "id": 2, "model": "xm430-w350", "min": -2.0, "max": 2.0, "max_velocity": 3, "max_acceleration": 20}]},
        "cameras": [{"name": "top", "kind": "virtual", "width": 96, "height": 96, "fps": 30}],
        "policy": {"checkpoint": "preset:small"}, "scene": {"task": "none", "workspace": 0.5}}
    p = tmp_path / "sim.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_cli_live_record_on_emulator_and_virtual_camera(tmp_path):
    """`--record` on the simulated robot: emulated servos driven through the real SDK, the scene rendered at
    capture time through a virtual RealSense, so the true camera delay is ~0 and the servos lag the command."""
    from edgedp import cli

    out, npz = tmp_path / "off.yaml", tmp_path / "streams.npz"
    assert cli.main(["calibrate", "time-offset", "--record", str(_sim_config(tmp_path)), "--duration", "4",
                     "--out", str(out), "--save", str(npz)]) == 0
    d = yaml.safe_load(out.read_text())
    print(f"\nlive sim: camera {d['camera_delay_s'] * 1000:.1f} ms (corr {d['camera_correlation']:.2f}), "
          f"command {d['command_delay_s'] * 1000:.1f} ms (corr {d['command_correlation']:.2f})")
    # The virtual device stamps a frame with its scheduled capture time but reads the arm when its feeder
    # thread actually runs (a few ms later on a busy CPU), so the measured delay is slightly negative.
    assert abs(d["camera_delay_s"]) < 0.017  # within half a frame at 30 fps
    assert 0.0 < d["command_delay_s"] < 0.2 and d["command_correlation"] > 0.6
    z = np.load(npz)
    assert {"cam_t", "cam_images", "joint_t", "joint_q", "cmd_t", "cmd_q"} <= set(z.files)
    assert cli.main(["calibrate", "time-offset", "--out", str(out)]) == 2


def test_recorded_live_with_injected_camera_delay():
    """record_streams on the emulator bus, with the scene showing the arm 50 ms late."""
    import time

    from calibration.time_offset import estimate_from_arrays, record_streams
    from firmware_bridge.dynamixel.bus import BusSpec, DynamixelBus, JointSpec
    from firmware_bridge.realsense import RealSenseCamera, RealSenseSettings
    from firmware_bridge.realsense.virtual import VirtualRealSense
    from firmware_bridge.sim import Scene

    bus = DynamixelBus(BusSpec("emulator", tick_budget_s=0.05), [JointSpec("a", 1, "xm430-w350"), JointSpec("b", 2, "xm430-w350")])
    bus.connect()
    emulator = bus.emulator
    hist_t, hist_q = [], []
    delay = 0.05

    def late_angles():
        now = time.monotonic()
        p = emulator.present_positions_rad()
        hist_t.append(now)
        hist_q.append([p[1], p[2]])
        q = np.array(hist_q)
        return np.array([np.interp(now - delay, hist_t, q[:, k]) for k in range(2)])

    scene = Scene(late_angles, width=96, height=96, workspace=0.5, task="none", depth=False)
    dev = VirtualRealSense(scene.render, scene.intrinsics, fps=30).start()
    cam = RealSenseCamera(RealSenseSettings(serial=dev.serial, width=96, height=96, fps=30))
    cam.start()
    try:
        z = record_streams(bus, cam, [0.3, 0.6], amplitude=0.4, duration=4.0, image_scale=1.0)
    finally:
        bus.set_torque(False)
        cam.stop()
        dev.close()
        bus.close()
    res = estimate_from_arrays(z)
    print(f"\ninjected {delay * 1000:.0f} ms: estimated {res['camera_delay_s'] * 1000:.1f} ms (corr {res['camera_correlation']:.2f})")
    assert abs(res["camera_delay_s"] - delay) < 0.017
