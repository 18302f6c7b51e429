"""The one place that turns a validated RunConfig into concrete objects: bus, emulator, scene, cameras,
policy and sampler backend. Everything downstream receives these collaborators and never looks at the config.

Order matters for safety: `build()` validates everything that can be wrong (config, checkpoint, shapes,
camera mapping, backend) and constructs objects that open nothing; ports open, emulators and cameras start
only when the runtime calls the `starters`, after all checks passed.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Optional

import numpy as np

from edgedp.config import RunConfig, check_against_policy
from edgedp.errors import UserError
from edgedp.runtime.lifecycle import RunParts
from edgedp.runtime.servo_loop import ServoParams


# ------------------------------------------------------------------------------------------------ bus
def _dxl():
    try:
        from firmware_bridge.dynamixel import bus as dxl_bus
    except ImportError as exc:  # the driver module is part of this package; missing means a broken install
        raise UserError(f"Dynamixel bus driver unavailable ({exc})") from None
    return dxl_bus


def _bus_class(mod):
    for name in ("DynamixelBus", "Bus", "ServoBusDriver", "DxlBus"):
        cls = getattr(mod, name, None)
        if cls is not None:
            return cls
    raise UserError("firmware_bridge.dynamixel.bus has no bus class")


def _fill(cls, values: dict) -> Any:
    """Build one of the driver's config dataclasses from the keys it actually has."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


class BusFactory:
    """Picklable recipe for the bus, so the servo process can build its own (ports don't cross processes)."""

    def __init__(self, bus_values: dict, joint_values: list[dict]):
        self.bus_values = dict(bus_values)
        self.joint_values = [dict(j) for j in joint_values]

    def __call__(self):
        mod = _dxl()
        joints = [_fill(mod.JointSpec, j) for j in self.joint_values]
        spec = _fill(mod.BusSpec, self.bus_values)
        cls = _bus_class(mod)
        try:
            return cls(spec, joints)
        except TypeError:
            return cls(spec=spec, joints=joints)


def bus_errors() -> tuple:
    from firmware_bridge.dynamixel import BusError

    return (BusError, OSError)


# --------------------------------------------------------------------------------------------- cameras
def _realsense_unavailable() -> Optional[str]:
    """Why pyrealsense2 cannot be imported (None when it can). Asked by import, not by looking for files:
    the wheel may be installed while its libusb-1.0 is missing, which only the import reveals."""
    import importlib

    try:
        importlib.import_module("pyrealsense2")
    except (ImportError, OSError) as exc:  # a missing libusb-1.0 shows as ImportError naming the .so
        return str(exc) or type(exc).__name__
    return None


# ----------------------------------------------------------------------------------------- time offsets
MAX_DELAY_S = 1.0  # a measured stream delay beyond a second is a wrong file or a failed calibration


def load_time_offsets(path) -> tuple[float, float]:
    """(camera_delay_s, command_delay_s) from the YAML `edgedp calibrate time-offset` writes.

    A missing command delay (the file came from a recording without commands) counts as 0; the camera
    delay is required, since it is the one thing such a file is for."""
    import math
    from pathlib import Path

    import yaml

    where = f"robot.time_offset_file: {path}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{where}: cannot read it ({first})") from None
    if not isinstance(data, dict) or "camera_delay_s" not in data:
        raise UserError(f"{where}: not a time-offset file (no camera_delay_s key; write one with "
                        f"edgedp calibrate time-offset)")
    out = []
    for key in ("camera_delay_s", "command_delay_s"):
        v = data.get(key)
        if v is None and key == "command_delay_s":
            v = 0.0
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise UserError(f"{where}: {key} must be a number of seconds, got {v!r}")
        if abs(v) > MAX_DELAY_S:
            raise UserError(f"{where}: {key} = {v:g} s is implausible (|delay| must be at most {MAX_DELAY_S:g} s)")
        out.append(float(v))
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------- policy
def _sampler(policy, cfg: RunConfig, steps: int):
    p = cfg.policy
    try:
        from edgedp.compile import get_compiled_sampler
    except ImportError:
        get_compiled_sampler = None
    if get_compiled_sampler is not None:
        return get_compiled_sampler(policy, p.backend, p.precision, steps, p.device, p.cache_dir)
    if p.backend != "eager":
        raise UserError(f"policy.backend: '{p.backend}' is not available in this installation (use eager)")
    return policy.sample


def _joint_angles_from_emulator(emulator, joints) -> callable:
    ids = [j.id for j in joints]
    direction = np.array([j.direction for j in joints], dtype=np.float64)
    zero = np.array([j.zero_offset for j in joints], dtype=np.float64)

    def angles() -> np.ndarray:
        pos = emulator.present_positions_rad()
        servo = np.array([pos[i] for i in ids])
        return direction * (servo - zero)

    return angles


def build(cfg: RunConfig, duration: Optional[float] = None) -> RunParts:
    """Validate and assemble a run; nothing is opened or powered here."""
    import torch

    from edgedp.policy_loading import load_policy

    port = cfg.robot.bus.port
    if port != "emulator" and not os.path.exists(port):
        import glob

        present = sorted(glob.glob("/dev/ttyUSB*") + glob.glob("/dev/ttyACM*"))
        raise UserError(f"robot.bus.port: {port} does not exist (serial ports present: {', '.join(present) or 'none'}; "
                        f"or 'emulator')")
    camera_delay = command_delay = 0.0
    if cfg.robot.time_offset_file is not None:
        camera_delay, command_delay = load_time_offsets(cfg.robot.time_offset_file)

    p = cfg.policy
    policy = load_policy(p.checkpoint, p.device, p.steps, p.seed)
    check_against_policy(cfg, policy.horizon, policy.n_obs_steps, list(policy.image_keys))
    n_joints = len(cfg.robot.joints)
    if policy.action_dim != n_joints:
        raise UserError(f"policy.checkpoint: actions have {policy.action_dim} dimensions but robot.joints has "
                        f"{n_joints} joints (actions must be joint targets, one per joint)")
    state_key = p.state_key or (policy.state_keys[0] if policy.state_keys else None)
    if state_key is None or state_key not in policy.state_keys:
        raise UserError(f"policy.state_key: '{state_key}' is not a state feature of the checkpoint "
                        f"(allowed: {', '.join(policy.state_keys) or 'none'})")
    shapes = policy.feature_shapes
    if tuple(shapes[state_key]) != (n_joints,):
        raise UserError(f"policy.state_key: feature '{state_key}' has shape {tuple(shapes[state_key])}, "
                        f"the robot has {n_joints} joints")
    steps = p.steps or policy.num_inference_steps
    spec_period = getattr(policy.spec, "action_period", None)
    action_period = p.action_period or spec_period or 0.1
    ta = p.n_action_steps or policy.n_action_steps
    servo_hz = cfg.rates.servo_hz
    if action_period < 2.0 / servo_hz:
        raise UserError(f"policy.action_period: {action_period} s is shorter than two servo periods at "
                        f"{servo_hz:g} Hz (raise rates.servo_hz or the action period)")

    # Cameras feed image features: by policy_key, or in order.
    image_keys = list(policy.image_keys)
    mapping: dict[str, Any] = {}
    unassigned = [k for k in image_keys if k not in {c.policy_key for c in cfg.cameras}]
    for cam in cfg.cameras:
        key = cam.policy_key or (unassigned.pop(0) if unassigned else None)
        if key is not None:
            mapping[key] = cam
    missing = [k for k in image_keys if k not in mapping]
    if missing:
        raise UserError(f"cameras: the checkpoint needs images for {', '.join(missing)} but no camera feeds them "
                        f"(add a camera or set cameras[i].policy_key)")

    sampler = _sampler(policy, cfg, steps)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # leave a core to the servo loop

    starters: list = []
    closers: list = []
    bus_values = {"port": cfg.robot.bus.port, "baud": cfg.robot.bus.baud, "low_latency": cfg.robot.bus.low_latency,
                  "fast_sync_read": cfg.robot.bus.fast_sync_read,
                  # The servo loop applies safety.on_stop itself; closing the port must not override "hold".
                  "torque_off_on_close": cfg.safety.on_stop == "torque_off"}
    joint_values = [j.model_dump() for j in cfg.robot.joints]
    factory = BusFactory(bus_values, joint_values)

    emulator = None
    if cfg.robot.bus.port == "emulator":
        from edgedp.runtime.sim_emulator import EmulatorProcess

        # The emulated arm starts at the middle of its joint range, like a robot parked at home. It is served
        # from its own process: real servos answer on time whatever our process does (see sim_emulator.py).
        initial = {j.id: j.zero_offset + j.direction * 0.5 * (j.min + j.max) for j in cfg.robot.joints}
        emulator = EmulatorProcess({j.id: j.model for j in cfg.robot.joints}, baud=cfg.robot.bus.baud,
                                   initial=initial)

        def start_emulator() -> None:
            emulator.start()
            factory.bus_values["port"] = emulator.port_name

        starters.append(start_emulator)
        closers.append(emulator.stop)

    cameras: dict[str, Any] = {}
    scene = None
    realsense_missing = _realsense_unavailable() if mapping else None
    if realsense_missing is not None:
        needs_driver = [c.name for c in mapping.values() if c.kind != "virtual"]
        if needs_driver:
            raise UserError(f"cameras: pyrealsense2 is not importable ({realsense_missing}); camera "
                            f"'{needs_driver[0]}' needs it: install it with pip install 'edgedp[realsense]' "
                            f"(it also needs libusb-1.0)")
        print(f"notice: virtual RealSense unavailable (pyrealsense2: {realsense_missing}); virtual cameras render "
              f"the scene directly (for the RealSense path: pip install 'edgedp[realsense]', needs libusb-1.0)",
              file=sys.stderr)
    for key, cam in mapping.items():
        if cam.kind == "virtual":
            if emulator is None:
                raise UserError(f"cameras: virtual camera '{cam.name}' renders the simulated arm and needs "
                                f"robot.bus.port: emulator")
            from firmware_bridge.sim import Scene

            sc = cfg.scene
            scene = Scene(_joint_angles_from_emulator(emulator, cfg.robot.joints), link_lengths=sc.link_lengths,
                          task=sc.task, workspace=sc.workspace, width=cam.width, height=cam.height, seed=sc.seed,
                          depth=cam.depth, joint_limits=[(j.min, j.max) for j in cfg.robot.joints])
            if realsense_missing is not None:
                from firmware_bridge.sim.scene_camera import SceneCamera

                cameras[key] = SceneCamera(scene.render, scene.intrinsics, fps=cam.fps, depth=cam.depth,
                                           name=cam.name)
                continue
            from firmware_bridge.realsense import RealSenseCamera, RealSenseSettings
            from firmware_bridge.realsense.virtual import VirtualRealSense

            dev = VirtualRealSense(scene.render, scene.intrinsics, fps=cam.fps, depth=cam.depth)
            starters.append(dev.start)
            closers.append(dev.close)
            cameras[key] = RealSenseCamera(RealSenseSettings(serial=dev.serial, width=cam.width, height=cam.height,
                                                             fps=cam.fps, depth=cam.depth, name=cam.name))
        else:
            from firmware_bridge.realsense import RealSenseCamera, RealSenseSettings

            cameras[key] = RealSenseCamera(RealSenseSettings(
                serial=cam.serial, width=cam.width, height=cam.height, fps=cam.fps, depth=cam.depth,
                exposure=cam.exposure, white_balance=cam.white_balance,
                file=str(cam.file) if cam.file else None, name=cam.name))

    s = cfg.safety
    joints = cfg.robot.joints
    params = ServoParams(
        servo_hz=servo_hz,
        lower=[j.min for j in joints], upper=[j.max for j in joints],
        max_velocity=[j.max_velocity for j in joints], max_acceleration=[j.max_acceleration for j in joints],
        interpolation=s.interpolation, join=s.join, crossfade_steps=s.crossfade_steps,
        ensemble_decay=s.ensemble_decay, start_ramp_time=s.start_ramp_time,
        watchdog_failed_ticks=s.watchdog_failed_ticks, on_stop=s.on_stop,
        spin_us=150.0 if cfg.rates.servo_in_process else 0.0,
    )
    summary = {
        "checkpoint": p.checkpoint, "backend": p.backend, "precision": p.precision, "device": p.device,
        "steps": steps, "horizon": policy.horizon, "n_obs_steps": policy.n_obs_steps, "n_action_steps": ta,
        "action_period": action_period, "servo_hz": servo_hz, "servo_in_process": cfg.rates.servo_in_process,
        "interpolation": s.interpolation, "join": s.join, "crossfade_steps": s.crossfade_steps,
        "on_stop": s.on_stop, "bus": cfg.robot.bus.port, "joints": [j.name for j in joints],
        "cameras": {k: c.name for k, c in mapping.items()},
        "camera_delay_s": camera_delay, "command_delay_s": command_delay,
    }
    parts = RunParts(
        policy=policy, sampler=sampler, steps=steps, action_period=action_period, n_action_steps=ta,
        state_key=state_key, cameras=cameras,
        image_shapes={k: tuple(shapes[k]) for k in image_keys},
        make_bus=factory, bus_errors=bus_errors(), servo=params, servo_in_process=cfg.rates.servo_in_process,
        max_observation_age=cfg.rates.max_observation_age, extra_latency=p.extra_latency_ms / 1000.0,
        camera_delay=camera_delay, command_delay=command_delay, sync=p.sync,
        closers=closers, starters=starters, config_summary=summary,
    )
    parts.scene = scene  # type: ignore[attr-defined]  # for tests and the summary (sim runs)
    parts.emulator = emulator  # type: ignore[attr-defined]
    return parts
