"""`edgedp calibrate <what>`: intrinsics, hand-eye, joint zero/direction, camera/servo time offsets.

The math lives in the calibration package (which never imports edgedp); this module reads the
run config, builds the robot model from it, and turns CalibrationError into one-line user errors.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edgedp.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="camera intrinsics, hand-eye, joint zeros, time offsets")
    cs = p.add_subparsers(dest="calib_command", metavar="WHAT")

    h = cs.add_parser("handeye", help="hand-eye calibration from a samples directory")
    h.add_argument("samples_dir", help="folder with samples.yaml, camera.yaml, board.yaml and the images")
    h.add_argument("--mode", required=True, choices=["eye_in_hand", "eye_to_hand"])
    h.add_argument("--out", required=True, help="calibration YAML to write")
    h.add_argument("--robot", help="run config whose robot.dh gives forward kinematics (for samples with joints)")
    h.add_argument("--urdf", help="URDF for forward kinematics instead of robot.dh")
    h.add_argument("--tip", help="URDF tool link (default: the only leaf link)")
    h.add_argument("--method", default="park", choices=["tsai", "park", "horaud", "andreff", "daniilidis", "all"],
                   help="closed-form solver (refined afterwards); 'all' also reports every method's answer")
    h.add_argument("--backend", default="auto", choices=["auto", "opencv", "own"],
                   help="OpenCV's calibrateHandEye or our own Park/Tsai (auto: OpenCV when present)")
    h.add_argument("--no-refine", action="store_true", help="skip the reprojection refinement")
    h.add_argument("--no-loo", action="store_true", help="skip the leave-one-out consistency check")
    h.add_argument("--plot", help="PNG of per-sample residuals (default: next to --out)")
    h.set_defaults(func=_handeye)

    i = cs.add_parser("intrinsics", help="camera intrinsics from ChArUco images, or a RealSense's factory values")
    i.add_argument("images_dir", nargs="?", help="folder of board images")
    i.add_argument("--board", help="board.yaml")
    i.add_argument("--realsense", metavar="SERIAL", help="read the factory intrinsics of this RealSense instead")
    i.add_argument("--width", type=int, default=640)
    i.add_argument("--height", type=int, default=480)
    i.add_argument("--fps", type=int, default=30, help="stream mode whose intrinsics are read (with --realsense)")
    i.add_argument("--out", required=True, help="camera.yaml to write")
    i.add_argument("--plot", help="PNG of per-view errors and coverage (default: next to --out)")
    i.add_argument("--reject-factor", type=float, default=3.0, help="drop views above this × the median view error")
    i.set_defaults(func=_intrinsics)

    b = cs.add_parser("render-board", help="write a printable PNG of the ChArUco board in board.yaml")
    b.add_argument("board")
    b.add_argument("--out", required=True)
    b.add_argument("--px-per-square", type=int, default=200)
    b.set_defaults(func=_render_board)

    j = cs.add_parser("joints", help="joint zero offsets, directions and ranges (torque off, user moves the arm)")
    j.add_argument("config", help="run config (robot.bus and robot.joints)")
    j.add_argument("--out", required=True, help="joint calibration YAML to write")
    j.add_argument("--reference", help="YAML list of joint angles (rad) of the reference pose (default: all zero)")
    j.add_argument("--second", help="YAML list of joint angles (rad) of the second pose used to tell directions "
                                    "(default: reference + 0.5 rad on every joint)")
    j.add_argument("--range-seconds", type=float, default=0.0,
                   help="record range of motion for this long instead of until Enter (0: until Enter)")
    j.add_argument("--write-eeprom", action="store_true", help="not supported yet: the calibration stays in the file")
    j.set_defaults(func=_joints)

    t = cs.add_parser("time-offset", help="camera→joint and command→motion delays (live on a robot/sim, or recorded)")
    t.add_argument("streams", nargs="?", help=".npz with cam_t, cam_images (or cam_motion), joint_t, joint_q, "
                                             "and optionally cmd_t, cmd_q")
    t.add_argument("--record", metavar="CONFIG", help="record live instead: drive the robot of this run config "
                                                      "(emulator + virtual camera work) and watch its camera")
    t.add_argument("--camera", help="camera name in the config (default: the first)")
    t.add_argument("--duration", type=float, default=6.0, help="seconds of commanded motion (with --record)")
    t.add_argument("--amplitude", type=float, default=0.3, help="rad of motion around the joint-range middle")
    t.add_argument("--save", help="also write the recorded streams to this .npz (with --record)")
    t.add_argument("--out", required=True, help="YAML to write (camera_delay_s, command_delay_s)")
    t.add_argument("--max-lag", type=float, default=0.5, help="largest delay searched, seconds")
    t.set_defaults(func=_time_offset)

    c = cs.add_parser("collect-handeye", help="guided collection of hand-eye samples on a connected robot")
    c.add_argument("config", help="run config (robot and the camera)")
    c.add_argument("--out", required=True, help="samples directory to write")
    c.add_argument("--board", required=True, help="board.yaml")
    c.add_argument("--camera-yaml", help="camera.yaml (default: the camera's factory intrinsics)")
    c.add_argument("--poses", help="YAML list of joint poses (rad) to visit with torque on; without it, you move the arm")
    c.add_argument("--camera", help="camera name in the config (default: the first)")
    c.set_defaults(func=_collect)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


class _Wrap:
    """Run calibration code, turning its CalibrationError into the CLI's one-line UserError."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        from calibration.errors import CalibrationError

        if isinstance(exc, CalibrationError):
            raise UserError(str(exc)) from None
        return False


def _fk_from_args(args) -> tuple[Optional[Callable], Optional[int]]:
    from calibration.kinematics import DHChain, URDFChain

    if args.urdf:
        chain = URDFChain(args.urdf, tip=args.tip)
        return chain.fk, chain.n_joints
    if args.robot:
        from edgedp.config import load_config

        cfg = load_config(args.robot)
        if cfg.robot.dh is None:
            raise UserError(f"{args.robot}: robot.dh is not set (DH rows [a, alpha, d, theta_offset] per joint), or pass --urdf")
        if len(cfg.robot.dh) != len(cfg.robot.joints):
            raise UserError(f"{args.robot}: robot.dh has {len(cfg.robot.dh)} rows but robot.joints has {len(cfg.robot.joints)}")
        chain = DHChain(cfg.robot.dh)
        return chain.fk, chain.n_joints
    return None, None


def _print(msg: str) -> None:
    print(msg, file=sys.stderr if msg.startswith("warning") else sys.stdout)


def _handeye(args) -> int:
    from calibration.handeye_run import calibrate_handeye
    from calibration.report import plot_handeye
    from calibration.samples import load_samples, write_yaml_atomic

    with _Wrap():
        fk, n = _fk_from_args(args)
        samples, camera, board = load_samples(args.samples_dir, fk, n)
        res = calibrate_handeye(samples, camera, board, args.mode, args.method, args.backend,
                                refine=not args.no_refine, leave_one_out=not args.no_loo)
    out = Path(args.out)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    data = res.to_dict()
    data["plot"] = str(plot)
    plot_handeye(res, plot)
    write_yaml_atomic(out, data)
    t = res.X[:3, 3] * 1000
    r = data["residuals"]
    _print(f"{res.mode}: {res.method}, {len(res.names)} samples used, {len(res.skipped)} skipped")
    _print(f"  translation [mm]: {t[0]:.2f} {t[1]:.2f} {t[2]:.2f}   quaternion: " + " ".join(f"{v:.5f}" for v in data["quaternion"]))
    _print(f"  residuals: rotation {r['rotation_deg_mean']:.3f} deg (max {r['rotation_deg_max']:.3f}), "
           f"translation {r['translation_mm_mean']:.2f} mm (max {r['translation_mm_max']:.2f}), "
           f"reprojection {r['reprojection_rms_px']:.3f} px")
    if r["leave_one_out_translation_mm_max"] is not None:
        _print(f"  leave-one-out: X moves at most {r['leave_one_out_rotation_deg_max']:.3f} deg, "
               f"{r['leave_one_out_translation_mm_max']:.2f} mm")
    for m, e in res.methods_compared.items():
        _print(f"  {m:10s} differs from the result by {e['vs_result_deg']:.3f} deg, {e['vs_result_mm']:.2f} mm")
    for w in res.warnings:
        _print(f"warning: {w}")
    _print(f"wrote {out} and {plot}")
    return 0


def _intrinsics(args) -> int:
    from calibration.samples import write_yaml_atomic

    out = Path(args.out)
    if args.realsense:
        from calibration.intrinsics import from_realsense

        intr = _realsense_intrinsics(args.realsense, args.width, args.height, args.fps)
        write_yaml_atomic(out, from_realsense(intr))
        _print(f"wrote {out} (factory intrinsics of RealSense {args.realsense}, {intr.width}x{intr.height})")
        return 0
    if not args.images_dir or not args.board:
        raise UserError("give IMAGES_DIR and --board board.yaml, or --realsense SERIAL")
    from calibration.charuco import load_board
    from calibration.intrinsics import calibrate_charuco, list_images
    from calibration.report import plot_intrinsics

    with _Wrap():
        board = load_board(args.board)
        res = calibrate_charuco(list_images(args.images_dir), board, reject_factor=args.reject_factor)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    plot_intrinsics(res.names, res.per_view_rms, res.rejected, plot, res.coverage)
    write_yaml_atomic(out, res.to_dict())
    K = res.camera.K
    _print(f"fx {K[0, 0]:.2f} fy {K[1, 1]:.2f} cx {K[0, 2]:.2f} cy {K[1, 2]:.2f}  dist " +
           " ".join(f"{v:.4f}" for v in res.camera.dist))
    _print(f"RMS {res.rms:.3f} px over {sum(not r for r in res.rejected)} views; "
           f"rejected: {', '.join(n for n, r in zip(res.names, res.rejected) if r) or 'none'}; "
           f"coverage {res.coverage_fraction:.0%}")
    for w in res.warnings:
        _print(f"warning: {w}")
    _print(f"wrote {out} and {plot}")
    return 0


def _realsense_intrinsics(serial: str, width: int, height: int, fps: int = 30):
    """Open the camera briefly with firmware_bridge.realsense and return its factory color intrinsics."""
    try:
        from firmware_bridge.realsense.camera import RealSenseCamera, RealSenseSettings
        from firmware_bridge.realsense.errors import CameraError
    except ImportError as exc:
        raise UserError(f"RealSense support is not available ({exc})") from None
    cam = RealSenseCamera(RealSenseSettings(serial=serial, width=width, height=height, fps=fps))
    try:
        cam.start()
        intr = cam.intrinsics
    except CameraError as exc:
        raise UserError(f"RealSense {serial}: {exc}") from None
    finally:
        try:
            cam.stop()
        except Exception:  # noqa: BLE001 - closing after a failed open must not hide the first error
            pass
    if intr is None:
        raise UserError(f"RealSense {serial} reported no color intrinsics")
    return intr


def _render_board(args) -> int:
    import cv2

    from calibration.charuco import load_board
    from calibration.synthetic import board_image

    with _Wrap():
        spec = load_board(args.board)
    img = board_image(spec, args.px_per_square, margin_px=args.px_per_square // 2)
    out = Path(args.out)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix or '.png'}")
    if not cv2.imwrite(str(tmp), img):
        raise UserError(f"cannot write {out} (unknown image extension?)")
    tmp.replace(out)
    _print(f"wrote {out}: print at {spec.square_length * 1000:g} mm per square ({args.px_per_square} px per square)")
    return 0


def _read_pose_list(path: Optional[str], n: int, what: str) -> Optional[np.ndarray]:
    if path is None:
        return None
    from edgedp.calibration_files import read_small_yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} file not found: {p}")
    data = read_small_yaml(p, str(p), what)  # hardened reader: no aliases/bombs, one line when unreadable
    try:
        arr = np.asarray(data, dtype=float)
    except (TypeError, ValueError):
        raise UserError(f"{p}: expected a list of joint angles in radians") from None
    if arr.shape[-1] != n:
        raise UserError(f"{p}: poses need {n} joint values each (the robot config has {n} joints)")
    return arr


def _open_robot(cfg):
    """A ServoBus for the config's robot, from the assembly point (edgedp.app.calibration_bus): the
    calibration a run would use applied, torque off on close (a session always ends with a limp arm)."""
    from edgedp.app import calibration_bus

    return calibration_bus(cfg)


def _camera_config(cfg, name: Optional[str]):
    if not cfg.cameras:
        raise UserError("the config has no cameras")
    cams = [c for c in cfg.cameras if name is None or c.name == name]
    if not cams:
        raise UserError(f"no camera named '{name}' (allowed: {', '.join(c.name for c in cfg.cameras)})")
    return cams[0]


def _open_camera(cfg, name: Optional[str]):
    """The RealSense (or recorded file) named in the config; the virtual scene camera shows no board."""
    from edgedp.app import realsense_camera

    cam = _camera_config(cfg, name)
    if cam.kind == "virtual":
        raise UserError(f"camera '{cam.name}' is virtual: the simulated scene shows no ChArUco board to calibrate on")
    return realsense_camera(cam)


def _open_scene_camera(cfg, name: Optional[str], bus) -> tuple:
    """A camera that watches the arm: the configured RealSense, or for `kind: virtual` the simulated scene
    rendered from the emulated servos (bus.port: emulator), built by the assembly point like a run's.
    Returns the camera and the extra things to close afterwards."""
    from edgedp.app import Devices, apply_joint_calibration, joint_angles, virtual_camera

    cam = _camera_config(cfg, name)
    if cam.kind != "virtual":
        return _open_camera(cfg, name), []
    emulator = getattr(bus, "emulator", None)
    if emulator is None:
        raise UserError(f"camera '{cam.name}' is virtual and needs robot.bus.port: emulator")
    joints, _, _ = apply_joint_calibration(cfg, missing_ok=True)
    dev = Devices()
    camera = virtual_camera(cfg, joints, cam, joint_angles(emulator, joints), dev, depth=False)
    for start in dev.starters:
        start()
    return camera, list(reversed(dev.closers))


def _connect(bus) -> None:
    from edgedp.app import bus_errors

    try:
        bus.connect()
    except bus_errors() as exc:
        raise UserError(f"robot bus: {exc}") from None


def _start(camera) -> None:
    from firmware_bridge.realsense.errors import CameraError

    try:
        camera.start()
    except CameraError as exc:
        raise UserError(f"camera: {exc}") from None


def _joints(args) -> int:
    from calibration.joints import JointCalibrator, write_joint_calibration, verify_joint_calibration
    from edgedp.config import load_config

    if args.write_eeprom:
        raise UserError("--write-eeprom is not implemented: the calibration is written to the file only")
    cfg = load_config(args.config)
    n = len(cfg.robot.joints)
    ref = _read_pose_list(args.reference, n, "reference pose")
    second = _read_pose_list(args.second, n, "second pose")
    from edgedp.app import apply_joint_calibration

    js, _, _ = apply_joint_calibration(cfg, missing_ok=True)  # what the bus applies: robot.calibration_file over robot.joints
    bus = _open_robot(cfg)
    _connect(bus)
    try:
        with _Wrap():
            # The bus reports angles through the config's current direction/zero; the calibrator undoes them.
            cal = JointCalibrator(bus, [j.name for j in js], [j.id for j in js],
                                  current_direction=[j.direction for j in js], current_zero=[j.zero_offset for j in js])
            result = cal.run_interactive(ref, second, args.range_seconds, prompt=input, say=_print)
            write_joint_calibration(args.out, result)
            verify_joint_calibration(args.out, result)
    finally:
        try:
            bus.set_torque(False)
        finally:
            bus.close()
    _print(f"wrote and verified {args.out}")
    return 0


def _time_offset(args) -> int:
    from calibration.samples import write_yaml_atomic
    from calibration.time_offset import estimate_from_arrays, estimate_from_npz

    if (args.streams is None) == (args.record is None):
        raise UserError("give a recorded STREAMS .npz, or --record CONFIG to measure live")
    if args.record:
        streams = _record_live(args)
        if args.save:
            _save_npz(args.save, streams)
        with _Wrap():
            res = estimate_from_arrays(streams, max_lag=args.max_lag)
    else:
        with _Wrap():
            res = estimate_from_npz(args.streams, max_lag=args.max_lag)
    write_yaml_atomic(args.out, res)
    _print(f"camera delay {res['camera_delay_s'] * 1000:.1f} ms (correlation {res['camera_correlation']:.2f})")
    if res.get("command_delay_s") is not None:
        _print(f"command→motion delay {res['command_delay_s'] * 1000:.1f} ms (correlation {res['command_correlation']:.2f})")
    for w in res.get("warnings", []):
        _print(f"warning: {w}")
    _print(f"wrote {args.out}")
    return 0


def _record_live(args) -> dict:
    """Drive the arm around the middle of its joint ranges and record commands, joints and frames."""
    from calibration.time_offset import record_streams
    from edgedp.config import load_config

    from edgedp.app import apply_joint_calibration

    cfg = load_config(args.record)
    js, _, _ = apply_joint_calibration(cfg, missing_ok=True)  # the calibration the bus applies
    center = np.array([0.5 * (j.min + j.max) for j in js])
    half = np.array([0.5 * (j.max - j.min) for j in js])
    if np.any(args.amplitude > half):
        raise UserError(f"--amplitude {args.amplitude} rad leaves a joint range (smallest half-range {half.min():.3f} rad)")
    bus = _open_robot(cfg)
    _connect(bus)
    closers: list = []
    try:
        if getattr(bus, "emulator", None) is not None:
            # A fresh emulator starts at servo zero; put the arm where the motion is centred, gently.
            for j, c in zip(js, center):
                bus.emulator.servo(j.id).set_external_position(angle_rad=float(j.zero_offset + j.direction * c))
        camera, closers = _open_scene_camera(cfg, args.camera, bus)
        _start(camera)
        closers.insert(0, camera.stop)
        _print(f"moving the arm for {args.duration:g} s (±{args.amplitude:g} rad around the range middle)...")
        with _Wrap():
            return record_streams(bus, camera, center, amplitude=args.amplitude, duration=args.duration)
    finally:
        try:
            bus.set_torque(False)
        finally:
            for close in closers:
                close()
            bus.close()


def _save_npz(path: str, arrays: dict) -> None:
    from firmware_bridge.atomic_file import atomic_path

    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def _collect(args) -> int:
    from calibration.charuco import load_board
    from calibration.collect import HandEyeCollector
    from calibration.samples import CameraModel, load_camera
    from edgedp.config import load_config

    cfg = load_config(args.config)
    n = len(cfg.robot.joints)
    poses = _read_pose_list(args.poses, n, "poses")
    with _Wrap():
        board = load_board(args.board)
        cam_model = load_camera(args.camera_yaml) if args.camera_yaml else None
    camera = _open_camera(cfg, args.camera)
    bus = _open_robot(cfg)
    _connect(bus)
    try:
        _start(camera)
    except BaseException:
        bus.close()
        raise
    try:
        if cam_model is None:
            intr = camera.intrinsics
            cam_model = CameraModel(intr.width, intr.height, intr.matrix(), np.asarray(intr.coeffs, float))
        with _Wrap():
            col = HandEyeCollector(bus, camera, board, cam_model, args.out)
            if poses is None:
                col.run_manual(prompt=input, say=_print)
            else:
                col.run_poses(poses, say=_print)
    finally:
        try:
            bus.set_torque(False)
        finally:
            camera.stop()
            bus.close()
    return 0
