"""The one place that turns a validated RunConfig into concrete objects: bus, emulator, scene, cameras,
policy and sampler backend. Everything downstream receives these collaborators and never looks at the config.

Two stages, so that `edgedp check` and `edgedp run` cannot drift apart:

- `validate(cfg)` runs every check a run needs (ports, calibration and time-offset files, telemetry folder,
  checkpoint metadata against joints and cameras, state key, backend and device on this machine) and
  returns a `RunPlan`. It reads files but opens no port, starts no emulator or camera and loads no weights.
  `edgedp check` is exactly this call; `edgedp run` calls it first through `assemble`.
- `assemble(cfg)` = `validate` + load the policy, compile the sampler and construct the devices with explicit,
  typed constructors. Constructed objects open nothing: ports open, emulators and cameras start only when
  the runtime calls the `starters`, after everything above passed.

Where the config offers a choice, the concrete class is picked from a registry by name (`CAMERA_BUILDERS`
for camera kinds; the sampler backends live in edgedp.compile's registry); there is no guessing by class
name and no retrying constructors.
"""
from __future__ import annotations

import os
import secrets
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edgedp.calibration_files import (SOURCE_CONFIG, SOURCE_DEFAULT, SOURCE_FILE,  # noqa: F401 (re-exported)
                                      apply_joint_calibration, load_joint_calibration, load_time_offsets)
from edgedp.config import CameraConfig, JointConfig, RunConfig, check_against_policy
from edgedp.errors import UserError
from edgedp.runtime.lifecycle import RunParts
from edgedp.runtime.servo_loop import ServoParams
from firmware_bridge.dynamixel.bus import BusSpec, DynamixelBus, JointSpec


# ------------------------------------------------------------------------------------------------ plan
@dataclass
class RunSettings:
    """Run-level settings the runtime (not a device) uses: how long, where telemetry goes, what is shown."""

    duration: Optional[float]
    telemetry_path: Optional[Path]
    plot: bool
    live: bool


@dataclass
class RunPlan:
    """What `validate` decided: every value the devices and the runtime will use, nothing opened yet."""

    cfg: RunConfig
    joints: list[JointConfig]  # robot.joints with robot.calibration_file applied
    joint_sources: list[dict[str, str]]  # per joint: {"zero_offset": source, "direction": source}
    calibration_notes: list[str]
    horizon: int
    n_obs_steps: int
    n_action_steps: int
    action_period: float
    state_key: str
    image_keys: list[str]
    feature_shapes: dict[str, tuple]
    cameras: dict[str, CameraConfig]  # policy image key -> the camera that feeds it
    camera_delay: float
    command_delay: float
    settings: RunSettings
    notices: list[str] = field(default_factory=list)
    remote: Optional["RemoteServer"] = None  # policy.remote: the checked server, its token and spec


# ---------------------------------------------------------------------------------------------- checks
def _check_port(port: str) -> None:
    if port != "emulator" and not os.path.exists(port):
        import glob

        present = sorted(glob.glob("/dev/ttyUSB*") + glob.glob("/dev/ttyACM*"))
        raise UserError(f"robot.bus.port: {port} does not exist (serial ports present: {', '.join(present) or 'none'}; "
                        f"or 'emulator')")


def _check_telemetry(path: Optional[Path], name: str) -> None:
    if path is None:
        return
    if path.exists() and path.is_dir():
        raise UserError(f"{name}: {path} is a directory (give a .json file path)")
    if not path.parent.is_dir():
        raise UserError(f"{name}: folder {path.parent} does not exist")


def _realsense_unavailable() -> Optional[str]:
    """Why pyrealsense2 cannot be imported (None when it can). Asked by import, not by looking for files:
    the wheel may be installed while its libusb-1.0 is missing, which only the import reveals."""
    import importlib

    try:
        importlib.import_module("pyrealsense2")
    except (ImportError, OSError) as exc:  # a missing libusb-1.0 shows as ImportError naming the .so
        return str(exc) or type(exc).__name__
    return None


def _check_backend(cfg: RunConfig) -> None:
    from edgedp.compile.api import check_request

    p = cfg.policy
    try:
        check_request(p.backend, p.precision, p.device, p.steps)
    except UserError as exc:
        raise UserError(f"policy.backend: {exc}") from None


def _check_steps(spec, steps: Optional[int]) -> None:
    if steps is None:
        return
    from models.schedulers import SchedulerSpec, check_num_inference_steps

    try:
        check_num_inference_steps(SchedulerSpec.from_dict(spec.scheduler), int(steps))
    except ValueError as exc:
        raise UserError(f"policy.steps: {exc}") from None


def _check_sampler(spec, cfg: RunConfig):
    """policy.sampler / timesteps / warm_start / join: inpaint against K (see check_sampler_choice); the resolved
    models.schedulers.SchedulerSpec."""
    p, s = cfg.policy, cfg.safety
    return check_sampler_choice(spec, p.steps, p.sampler, p.warm_start_level if p.warm_start else None,
                         s.inpaint_form if s.join == "inpaint" else None, label="policy.sampler",
                         timesteps=p.timesteps, timesteps_label="policy.timesteps")


def check_sampler_choice(spec, steps: Optional[int], sampler: Optional[str], warm_start_level: Optional[float],
                         inpaint: Optional[str], label: str, timesteps: Any = None,
                         timesteps_label: str = "timesteps"):
    """A sampler kind, explicit timesteps, warm start and inpainting against K, by building the K-step loop the
    policy will build (configure_sampler at assembly) over no network: its tables are where an unsuitable choice
    shows. Shared by validate and edgedp serve, so both refuse the same choices with one line before anything
    starts. Returns the models.schedulers.SchedulerSpec the loop was built from (its ``timesteps``: those the run
    samples at, resolved)."""
    import dataclasses

    from torch import nn

    from models.sampler import Sampler
    from models.schedulers import SchedulerSpec, with_timesteps

    sched = SchedulerSpec.from_dict(spec.scheduler)
    given_steps = steps
    steps = steps or sched.resolved_steps()
    if sampler is not None and sampler != sched.kind:  # as DiffusionPolicy.configure_sampler does
        try:
            sched = dataclasses.replace(sched, kind=sampler, eta=sched.eta if sampler == "ddim" else 0.0,
                                        num_inference_steps=None)
        except ValueError as exc:
            raise UserError(f"{label}: {exc}") from None
    if timesteps is not None:
        if not isinstance(timesteps, str) and given_steps is not None and given_steps != len(timesteps):
            raise UserError(f"{timesteps_label}: {len(timesteps)} timesteps but {steps} steps asked for (they must "
                            f"agree, or leave the steps out)")
        try:
            sched = with_timesteps(sched, timesteps, steps)
        except ValueError as exc:
            raise UserError(f"{timesteps_label}: {exc}") from None
        steps = len(sched.timesteps)
    try:
        Sampler(nn.Identity(), sched, steps, warm_start_level=warm_start_level, inpaint=inpaint)
    except ValueError as exc:
        raise UserError(f"{label}: {exc}") from None
    return sched


@dataclass(frozen=True)
class RemoteServer:
    """policy.remote after validate: the server answered /health with this token, serving a matching policy."""

    url: str
    token: str = field(repr=False)
    timeout_s: float
    fallback: str
    spec: dict

    def client(self):
        from edgedp.serve.client import PolicyClient

        return PolicyClient(self.url, self.token, self.timeout_s)


def _check_remote(cfg: RunConfig, spec, sched) -> Optional[RemoteServer]:
    """policy.remote: token present, server reachable, token accepted, and the served policy fits the checkpoint
    this config was checked against (shapes, sampler options, ``sched``'s timesteps and kind). One line and exit 2 otherwise, before any port
    opens (a run never powers the arm without a policy that answers)."""
    r = cfg.policy.remote
    if r is None:
        return None
    try:
        from edgedp.serve.client import PolicyClient, RemoteRefused, RemoteUnavailable, read_token
    except ImportError as exc:  # msgpack missing
        raise UserError(f"policy.remote: {exc}; pip install 'edgedp[serve]'") from None
    token = read_token(r.token, r.token_file, r.token_env)
    client = PolicyClient(r.url, token, r.timeout_ms / 1000.0)
    try:
        served = client.health(timeout=max(2.0, r.timeout_ms / 1000.0))
    except RemoteUnavailable as exc:
        raise UserError(f"policy.remote.url: policy server unreachable: {exc} (start it with "
                        f"`edgedp serve CHECKPOINT`; nothing was powered)") from None
    except RemoteRefused as exc:
        raise UserError(f"policy.remote: the server refused us: {exc}") from None
    finally:
        client.close()
    mine = {"horizon": spec.horizon, "n_obs_steps": spec.n_obs_steps, "action_dim": spec.action_dim,
            "features": {k: list(v) for k, v in {**spec.image_features, **spec.state_features}.items()}}
    for key, want in mine.items():
        if served.get(key) != want:
            raise UserError(f"policy.remote: the server's policy has {key} {served.get(key)}, policy.checkpoint has "
                            f"{want} (serve the same checkpoint)")
    p, s = cfg.policy, cfg.safety
    asked = {k: v for k, v in (("warm_start_level", p.warm_start_level if p.warm_start else None),
                               ("inpaint", s.inpaint_form if s.join == "inpaint" else None)) if v is not None}
    if (served.get("sampler_options") or {}) != asked:
        raise UserError(f"policy.remote: the server samples with {served.get('sampler_options') or 'no options'}, "
                        f"this config needs {asked or 'none'} (edgedp serve --warm-start-level / --inpaint)")
    want_ts = None if sched.timesteps is None else list(sched.timesteps)
    if served.get("timesteps") != want_ts:
        raise UserError(f"policy.remote: the server samples at timesteps {served.get('timesteps') or 'of its spacing'}, "
                        f"this config needs {want_ts or 'the spacing (no policy.timesteps)'} (edgedp serve --timesteps)")
    if served.get("sampler") != sched.kind:  # policy.sampler (or the checkpoint's own) must be what the server runs
        raise UserError(f"policy.remote: the server samples with {served.get('sampler') or 'an unnamed sampler'}, this "
                        f"config needs {sched.kind} (edgedp serve --sampler)")
    return RemoteServer(r.url, token, r.timeout_ms / 1000.0, r.fallback, served)


def _check_scene(cfg: RunConfig, n_joints: int, shapes: dict[str, tuple]) -> None:
    """What the simulated scene needs from the rest of the config (Push-T: gym-pusht, a 2-joint gantry, its
    keypoint feature's shape); the scene itself is built by build_devices."""
    if cfg.scene is None or cfg.scene.task != "pusht" or cfg.robot.bus.port != "emulator":
        return
    try:
        from firmware_bridge.sim.pusht import KEYPOINT_KEY
    except ImportError as exc:
        raise UserError(f"scene.task: pusht needs gym-pusht: {exc}") from None
    if n_joints != 2:
        raise UserError(f"robot.joints: the Push-T gantry has 2 joints (x, y), the config has {n_joints}")
    if KEYPOINT_KEY in shapes and tuple(shapes[KEYPOINT_KEY]) != (16,):
        raise UserError(f"policy.checkpoint: feature '{KEYPOINT_KEY}' has shape {shapes[KEYPOINT_KEY]}, "
                        f"the Push-T keypoints are (16,)")


def _map_cameras(cfg: RunConfig, image_keys: list[str]) -> dict[str, CameraConfig]:
    """Cameras feed image features: by policy_key, or in order."""
    mapping: dict[str, CameraConfig] = {}
    unassigned = [k for k in image_keys if k not in {c.policy_key for c in cfg.cameras}]
    for cam in cfg.cameras:
        key = cam.policy_key or (unassigned.pop(0) if unassigned else None)
        if key is not None:
            mapping[key] = cam
    missing = [k for k in image_keys if k not in mapping]
    if missing:
        raise UserError(f"cameras: the checkpoint needs images for {', '.join(missing)} but no camera feeds them "
                        f"(add a camera or set cameras[i].policy_key)")
    return mapping


def validate(cfg: RunConfig, telemetry_override: Optional[Path] = None) -> RunPlan:
    """Every check a run makes, in the order a run makes them; opens, starts and loads nothing.

    `edgedp check` is this call; `edgedp run` makes it (through `assemble`) before anything opens."""
    from edgedp.policy_loading import load_spec

    _check_port(cfg.robot.bus.port)
    camera_delay = command_delay = 0.0
    if cfg.robot.time_offset_file is not None:
        camera_delay, command_delay = load_time_offsets(cfg.robot.time_offset_file)
    joints, sources, notes = apply_joint_calibration(cfg)
    tel_path = telemetry_override if telemetry_override is not None else cfg.telemetry.path
    _check_telemetry(Path(tel_path) if tel_path is not None else None,
                     "--telemetry" if telemetry_override is not None else "telemetry.path")

    p = cfg.policy
    spec = load_spec(p.checkpoint)
    image_keys = list(spec.image_keys)
    check_against_policy(cfg, spec.horizon, spec.n_obs_steps, image_keys)
    n_joints = len(joints)
    if spec.action_dim != n_joints:
        raise UserError(f"policy.checkpoint: actions have {spec.action_dim} dimensions but robot.joints has "
                        f"{n_joints} joints (actions must be joint targets, one per joint)")
    state_keys = list(spec.state_keys)
    state_key = p.state_key or (state_keys[0] if state_keys else None)
    if state_key is None or state_key not in state_keys:
        raise UserError(f"policy.state_key: '{state_key}' is not a state feature of the checkpoint "
                        f"(allowed: {', '.join(state_keys) or 'none'})")
    shapes = {k: tuple(v) for k, v in spec.image_features.items()}
    shapes.update({k: tuple(v) for k, v in spec.state_features.items()})
    if shapes[state_key] != (n_joints,):
        raise UserError(f"policy.state_key: feature '{state_key}' has shape {shapes[state_key]}, "
                        f"the robot has {n_joints} joints")
    action_period = p.action_period or spec.action_period or 0.1
    servo_hz = cfg.rates.servo_hz
    if action_period < 2.0 / servo_hz:
        raise UserError(f"policy.action_period: {action_period} s is shorter than two servo periods at "
                        f"{servo_hz:g} Hz (raise rates.servo_hz or the action period)")
    mapping = _map_cameras(cfg, image_keys)
    notices: list[str] = []
    for cam in mapping.values():
        if cam.kind == "virtual" and cfg.robot.bus.port != "emulator":
            raise UserError(f"cameras: virtual camera '{cam.name}' renders the simulated arm and needs "
                            f"robot.bus.port: emulator")
    realsense_missing = _realsense_unavailable() if mapping else None
    if realsense_missing is not None:
        needs_driver = [c.name for c in mapping.values() if CAMERA_BUILDERS[c.kind].needs_realsense]
        if needs_driver:
            raise UserError(f"cameras: pyrealsense2 is not importable ({realsense_missing}); camera "
                            f"'{needs_driver[0]}' needs it: install it with pip install 'edgedp[realsense]' "
                            f"(it also needs libusb-1.0)")
        notices.append(f"virtual RealSense unavailable (pyrealsense2: {realsense_missing}); virtual cameras render "
                       f"the scene directly (for the RealSense path: pip install 'edgedp[realsense]', needs libusb-1.0)")
    _check_scene(cfg, n_joints, shapes)
    _check_backend(cfg)
    _check_steps(spec, p.steps)
    sched = _check_sampler(spec, cfg)
    remote = _check_remote(cfg, spec, sched)
    settings = RunSettings(duration=cfg.duration, telemetry_path=Path(tel_path) if tel_path is not None else None,
                           plot=cfg.telemetry.plot, live=cfg.telemetry.live)
    return RunPlan(cfg=cfg, joints=joints, joint_sources=sources, calibration_notes=notes, horizon=spec.horizon,
                   n_obs_steps=spec.n_obs_steps, n_action_steps=p.n_action_steps or spec.n_action_steps,
                   action_period=action_period, state_key=state_key, image_keys=image_keys, feature_shapes=shapes,
                   cameras=mapping, camera_delay=camera_delay, command_delay=command_delay, settings=settings,
                   notices=notices, remote=remote)


# ------------------------------------------------------------------------------------------------- bus
@dataclass(frozen=True)
class BusTuning:
    """Driver settings that are not in the run config: they depend on who uses the bus (a run, a calibration
    session, a benchmark), so each caller states them instead of patching the bus afterwards."""

    torque_off_on_close: bool
    tick_budget_s: float = 0.004
    max_retries: int = 3
    timeout_margin_ms: Optional[float] = None
    read_velocity: bool = False
    read_current: bool = False


@dataclass(frozen=True)
class BusFactory:
    """Picklable recipe for the bus, so the servo process can build its own (ports don't cross processes)."""

    spec: BusSpec
    joints: tuple[JointSpec, ...]

    def __call__(self) -> DynamixelBus:
        return DynamixelBus(self.spec, self.joints)


def joint_spec(j: JointConfig) -> JointSpec:
    return JointSpec(name=j.name, id=j.id, model=j.model, direction=j.direction, zero_offset=j.zero_offset,
                     operating_mode=j.operating_mode, min=j.min, max=j.max, max_velocity=j.max_velocity,
                     max_acceleration=j.max_acceleration)


def bus_factory(cfg: RunConfig, joints: list[JointConfig], tuning: BusTuning, port: Optional[str] = None) -> BusFactory:
    """The bus of robot.bus with these joints; `port` replaces robot.bus.port (the emulator's link)."""
    b = cfg.robot.bus
    spec = BusSpec(port=port if port is not None else b.port, baud=b.baud, low_latency=b.low_latency,
                   fast_sync_read=b.fast_sync_read, read_velocity=tuning.read_velocity,
                   read_current=tuning.read_current, tick_budget_s=tuning.tick_budget_s,
                   max_retries=tuning.max_retries, timeout_margin_ms=tuning.timeout_margin_ms,
                   torque_off_on_close=tuning.torque_off_on_close)
    return BusFactory(spec, tuple(joint_spec(j) for j in joints))


def bus_errors() -> tuple:
    from firmware_bridge.dynamixel import BusError

    return (BusError, OSError)


def calibration_bus(cfg: RunConfig) -> DynamixelBus:
    """The bus for `edgedp calibrate`: the config's robot with robot.calibration_file applied (the bus
    reports angles through the calibration a run would use), torque off on close (a session ends with a
    limp arm), and a slower tick budget (calibration is not a control loop). `port: emulator` runs the
    driver's in-process emulator, which calibration drives directly (bus.emulator)."""
    joints, _, _ = apply_joint_calibration(cfg, missing_ok=True)
    return bus_factory(cfg, joints, BusTuning(torque_off_on_close=True, tick_budget_s=0.02))()


def emulator_link_path() -> str:
    """Where the emulated bus will appear: a fixed name chosen now, linked to the pty once the emulator runs,
    so the bus recipe is complete at build time and nothing is patched afterwards."""
    return os.path.join(tempfile.gettempdir(), f"edgedp-dxl-{os.getpid()}-{secrets.token_hex(4)}")


class EmulatedBus:
    """The Protocol 2.0 emulator process (sim runs) and its port link; start/stop for the runtime."""

    def __init__(self, joints: list[JointConfig], baud: int, link: str):
        from edgedp.runtime.sim_emulator import EmulatorProcess

        # The emulated arm starts at the middle of its joint range, like a robot parked at home. It is served
        # from its own process: real servos answer on time whatever our process does (see sim_emulator.py).
        initial = {j.id: j.zero_offset + j.direction * 0.5 * (j.min + j.max) for j in joints}
        self.process = EmulatorProcess({j.id: j.model for j in joints}, baud=baud, initial=initial)
        self.link = link

    def start(self) -> None:
        self.process.start()
        os.symlink(self.process.port_name, self.link)

    def stop(self) -> None:
        try:
            os.unlink(self.link)
        except FileNotFoundError:
            pass
        self.process.stop()


def joint_angles(emulator, joints: list[JointConfig]) -> Callable[[], np.ndarray]:
    """Joint angles of the emulated arm through the run's calibration (what a scene camera renders)."""
    ids = [j.id for j in joints]
    direction = np.array([j.direction for j in joints], dtype=np.float64)
    zero = np.array([j.zero_offset for j in joints], dtype=np.float64)

    def angles() -> np.ndarray:
        pos = emulator.present_positions_rad()
        servo = np.array([pos[i] for i in ids])
        return direction * (servo - zero)

    return angles


# --------------------------------------------------------------------------------------------- cameras
@dataclass
class Devices:
    """Constructed devices (nothing opened) and how to start and stop what is not a camera or the bus."""

    make_bus: Optional[BusFactory] = None
    cameras: dict[str, Any] = field(default_factory=dict)
    scene: Any = None
    emulator: Any = None  # EmulatorProcess for sim runs
    starters: list[Callable[[], None]] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)


def _scene(cfg: RunConfig, joints: list[JointConfig], cam: CameraConfig, angles: Callable[[], np.ndarray],
           depth: bool):
    from firmware_bridge.sim import Scene

    sc = cfg.scene
    return Scene(angles, link_lengths=sc.link_lengths, task=sc.task, workspace=sc.workspace, width=cam.width,
                 height=cam.height, seed=sc.seed, depth=depth, joint_limits=[(j.min, j.max) for j in joints])


def virtual_camera(cfg: RunConfig, joints: list[JointConfig], cam: CameraConfig, angles: Callable[[], np.ndarray],
                   dev: Devices, depth: Optional[bool] = None):
    """A camera of kind virtual: the simulated scene (driven by `angles`) through a virtual RealSense, or
    rendered directly when pyrealsense2 is missing. Sets dev.scene; adds the virtual device's start/close.
    Used by runs (angles from the emulator process) and by calibration (angles from the in-process one)."""
    depth = cam.depth if depth is None else depth
    # Push-T's scene is built before the cameras (build_devices); the others are built per camera here.
    scene = dev.scene if getattr(dev.scene, "task", None) == "pusht" else _scene(cfg, joints, cam, angles, depth)
    dev.scene = scene
    if _realsense_unavailable() is not None:
        from firmware_bridge.sim.scene_camera import SceneCamera

        return SceneCamera(scene.render, scene.intrinsics, fps=cam.fps, depth=depth, name=cam.name)
    from firmware_bridge.realsense import RealSenseCamera, RealSenseSettings
    from firmware_bridge.realsense.virtual import VirtualRealSense

    vdev = VirtualRealSense(scene.render, scene.intrinsics, fps=cam.fps, depth=depth)
    dev.starters.append(vdev.start)
    dev.closers.append(vdev.close)
    return RealSenseCamera(RealSenseSettings(serial=vdev.serial, width=cam.width, height=cam.height, fps=cam.fps,
                                             depth=depth, name=cam.name))


def realsense_camera(cam: CameraConfig):
    """A camera of kind realsense (by serial) or file (a recorded .bag/.db3 played back)."""
    from firmware_bridge.realsense import RealSenseCamera, RealSenseSettings

    return RealSenseCamera(RealSenseSettings(
        serial=cam.serial, width=cam.width, height=cam.height, fps=cam.fps, depth=cam.depth,
        exposure=cam.exposure, white_balance=cam.white_balance,
        file=str(cam.file) if cam.file else None, name=cam.name))


@dataclass(frozen=True)
class CameraBuilder:
    needs_realsense: bool  # the kind cannot work without pyrealsense2
    build: Callable[[RunPlan, CameraConfig, Devices], Any]


def _build_virtual(plan: RunPlan, cam: CameraConfig, dev: Devices):
    return virtual_camera(plan.cfg, plan.joints, cam, joint_angles(dev.emulator, plan.joints), dev)


CAMERA_BUILDERS: dict[str, CameraBuilder] = {
    "virtual": CameraBuilder(needs_realsense=False, build=_build_virtual),
    "realsense": CameraBuilder(needs_realsense=True, build=lambda plan, cam, dev: realsense_camera(cam)),
    "file": CameraBuilder(needs_realsense=True, build=lambda plan, cam, dev: realsense_camera(cam)),
}


def robot_devices(cfg: RunConfig, joints: list[JointConfig], tuning: BusTuning) -> Devices:
    """The bus recipe (and, for port: emulator, the emulator process it talks to); nothing started.

    Runs get it through build_devices; benchmarks that need only the arm call it directly."""
    emulated: Optional[EmulatedBus] = None
    port = None
    if cfg.robot.bus.port == "emulator":
        emulated = EmulatedBus(joints, cfg.robot.bus.baud, emulator_link_path())
        port = emulated.link
    dev = Devices(make_bus=bus_factory(cfg, joints, tuning, port=port))
    if emulated is not None:
        dev.emulator = emulated.process
        dev.starters.append(emulated.start)
        dev.closers.append(emulated.stop)
    return dev


def build_devices(plan: RunPlan, tuning: BusTuning) -> Devices:
    """Bus (and its emulator for port: emulator), scene and cameras; constructed, none started."""
    cfg = plan.cfg
    dev = robot_devices(cfg, plan.joints, tuning)
    emulated = dev.emulator
    if emulated is not None and cfg.scene is not None and cfg.scene.task == "pusht":  # scene + keypoint sensor
        from edgedp.sim_task.pusht_runtime import add_pusht_scene

        add_pusht_scene(plan, dev, joint_angles(dev.emulator, plan.joints))
    for key, cam in plan.cameras.items():
        dev.cameras[key] = CAMERA_BUILDERS[cam.kind].build(plan, cam, dev)
    return dev


# ----------------------------------------------------------------------------------------- servo loop
def servo_params(cfg: RunConfig, joints: list[JointConfig]) -> ServoParams:
    s = cfg.safety
    return ServoParams(
        servo_hz=cfg.rates.servo_hz,
        lower=[j.min for j in joints], upper=[j.max for j in joints],
        max_velocity=[j.max_velocity for j in joints], max_acceleration=[j.max_acceleration for j in joints],
        interpolation=s.interpolation, join=s.join, crossfade_steps=s.crossfade_steps,
        ensemble_decay=s.ensemble_decay, start_ramp_time=s.start_ramp_time,
        watchdog_failed_ticks=s.watchdog_failed_ticks, on_stop=s.on_stop,
        spin_us=150.0 if cfg.rates.servo_in_process else 0.0,
    )


def run_bus_tuning(cfg: RunConfig) -> BusTuning:
    # The servo loop applies safety.on_stop itself; closing the port must not override "hold".
    return BusTuning(torque_off_on_close=cfg.safety.on_stop == "torque_off")


def summary(plan: RunPlan, steps: int, timesteps: Optional[list[int]] = None) -> dict:
    """The configuration a run used, for the summary table and the telemetry file (``timesteps``: the explicit
    ones the policy samples at, policy.timesteps resolved; None = the spacing rule)."""
    cfg, p, s = plan.cfg, plan.cfg.policy, plan.cfg.safety
    return {
        "checkpoint": p.checkpoint, "backend": p.backend, "precision": p.precision, "device": p.device,
        "cache_dir": str(p.cache_dir) if p.cache_dir else None, "seed": p.seed,
        "steps": steps, "horizon": plan.horizon, "n_obs_steps": plan.n_obs_steps, "n_action_steps": plan.n_action_steps,
        "action_period": plan.action_period, "servo_hz": cfg.rates.servo_hz, "servo_in_process": cfg.rates.servo_in_process,
        "interpolation": s.interpolation, "join": s.join, "crossfade_steps": s.crossfade_steps,
        "sampler": p.sampler or "checkpoint", "warm_start_level": p.warm_start_level if p.warm_start else None,
        "inpaint_form": s.inpaint_form if s.join == "inpaint" else None,
        "inpaint_overlap": s.inpaint_overlap if s.join == "inpaint" else None, "timesteps": timesteps,
        "on_stop": s.on_stop, "robot": cfg.robot.name, "bus": cfg.robot.bus.port, "joints": [j.name for j in plan.joints],
        "joint_calibration": {j.name: {"zero_offset": j.zero_offset, "zero_offset_from": src["zero_offset"],
                                        "direction": j.direction, "direction_from": src["direction"]}
                              for j, src in zip(plan.joints, plan.joint_sources)},
        "cameras": {k: c.name for k, c in plan.cameras.items()},
        "camera_delay_s": plan.camera_delay, "command_delay_s": plan.command_delay,
        "remote": None if plan.remote is None else {"url": plan.remote.url, "timeout_ms": p.remote.timeout_ms,
                                                    "fallback": plan.remote.fallback,
                                                    "server": {k: plan.remote.spec.get(k) for k in (
                                                        "backend", "precision", "steps", "batch_mode")}},
    }


# ------------------------------------------------------------------------------------------- assembly
def configure_sampler(policy: Any, cfg: RunConfig) -> None:
    """policy.sampler, policy.timesteps, policy.warm_start(_level) and safety.join: inpaint (+ inpaint_form) onto
    the policy's K-step loop; every backend's loop and the planner read them from there (docs/samplers.md)."""
    p, s = cfg.policy, cfg.safety
    try:
        policy.configure_sampler(p.sampler, p.warm_start_level if p.warm_start else None,
                                 s.inpaint_form if s.join == "inpaint" else None, timesteps=p.timesteps)
    except ValueError as exc:
        raise UserError(f"{'policy.timesteps' if 'timesteps' in str(exc) else 'policy.sampler'}: {exc}") from None


@dataclass
class Assembly:
    plan: RunPlan
    parts: RunParts
    devices: Devices

    @property
    def settings(self) -> RunSettings:
        return self.plan.settings


def assemble(cfg: RunConfig, telemetry_override: Optional[Path] = None) -> Assembly:
    """Validate, load the policy and compile its sampler, construct the devices; nothing opened or powered."""
    import torch

    from edgedp.compile import get_compiled_sampler
    from edgedp.policy_loading import load_policy

    plan = validate(cfg, telemetry_override)
    for line in plan.notices:
        print(f"notice: {line}", file=sys.stderr)
    p = cfg.policy
    policy = load_policy(p.checkpoint, p.device, p.steps, p.seed)
    configure_sampler(policy, cfg)
    steps = p.steps or policy.num_inference_steps
    sampler = None
    if plan.remote is None or plan.remote.fallback == "local":
        sampler = get_compiled_sampler(policy, p.backend, p.precision, steps, p.device, p.cache_dir)
    if plan.remote is not None:
        from edgedp.runtime.remote_policy import RemotePolicy

        # The server's K is what the chunks are denoised with (telemetry's per-step time is sample / K).
        steps = int(plan.remote.spec.get("steps") or steps)
        policy = RemotePolicy(plan.remote.client(), policy, plan.remote.fallback, local_sampler=sampler)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # leave a core to the servo loop
    dev = build_devices(plan, run_bus_tuning(cfg))
    parts = RunParts(
        policy=policy, sampler=sampler, steps=steps, action_period=plan.action_period,
        n_action_steps=plan.n_action_steps, state_key=plan.state_key, cameras=dev.cameras,
        image_shapes={k: plan.feature_shapes[k] for k in plan.image_keys},
        make_bus=dev.make_bus, bus_errors=bus_errors(), servo=servo_params(cfg, plan.joints),
        servo_in_process=cfg.rates.servo_in_process,
        max_observation_age=cfg.rates.max_observation_age, extra_latency=p.extra_latency_ms / 1000.0,
        camera_delay=plan.camera_delay, command_delay=plan.command_delay, sync=p.sync,
        action_lead=p.action_lead_periods * plan.action_period, inpaint_overlap=cfg.safety.inpaint_overlap,
        closers=dev.closers, starters=dev.starters, config_summary=summary(plan, steps, policy.explicit_timesteps),
    )
    parts.scene = dev.scene  # type: ignore[attr-defined]  # for tests and the summary (sim runs)
    parts.emulator = dev.emulator  # type: ignore[attr-defined]
    return Assembly(plan, parts, dev)


def build(cfg: RunConfig) -> RunParts:
    """The runtime's parts for `cfg` (see `assemble`); kept for callers that need only the parts."""
    return assemble(cfg).parts
