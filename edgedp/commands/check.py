"""`edgedp check CONFIG`: every check `edgedp run` makes, then a summary; touches no hardware.

The checks are edgedp.app.validate, the same call `edgedp run` makes before anything opens, so a config
check passes is one run accepts (up to what only loading the weights or building the engine can reveal).
"""
from __future__ import annotations

import argparse

from rich.table import Table

from edgedp.config import load_config
from edgedp.console import make_console


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a run config (every check run makes) and print a summary")
    p.add_argument("config", help="run config YAML")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgedp.app import validate

    cfg = load_config(args.config)
    plan = validate(cfg)
    console = make_console()
    console.print(f"[bold green]OK[/] {args.config}")
    joints = Table(title=f"robot '{cfg.robot.name}' on {cfg.robot.bus.port} @ {cfg.robot.bus.baud} baud")
    for col in ("joint", "id", "model", "min rad", "max rad", "max vel", "max acc", "dir", "dir from", "zero",
                "zero from"):
        joints.add_column(col)
    for j, src in zip(plan.joints, plan.joint_sources):
        joints.add_row(j.name, str(j.id), j.model, f"{j.min:.3f}", f"{j.max:.3f}", f"{j.max_velocity:g}",
                       f"{j.max_acceleration:g}", str(j.direction), src["direction"], f"{j.zero_offset:.4f}",
                       src["zero_offset"])
    console.print(joints)
    if cfg.robot.calibration_file is not None:
        console.print(f"joint calibration: {cfg.robot.calibration_file}", highlight=False)
    for note in plan.calibration_notes + plan.notices:
        console.print(f"notice: {note}", highlight=False)
    if cfg.cameras:
        cams = Table(title="cameras")
        for col in ("name", "kind", "source", "resolution", "fps", "depth", "feeds"):
            cams.add_column(col)
        feeds = {c.name: k for k, c in plan.cameras.items()}
        for c in cfg.cameras:
            src = c.serial or (str(c.file) if c.file else "-")
            cams.add_row(c.name, c.kind, src, f"{c.width}x{c.height}", str(c.fps), str(c.depth),
                         feeds.get(c.name, "- (unused)"))
        console.print(cams)
    p = cfg.policy
    console.print(
        f"policy: {p.checkpoint}  backend={p.backend} precision={p.precision} device={p.device} "
        f"K={p.steps or 'checkpoint'} T_a={plan.n_action_steps} action period={plan.action_period:g} s",
        highlight=False)
    console.print(
        f"        horizon={plan.horizon} n_obs_steps={plan.n_obs_steps} state={plan.state_key} "
        f"images={', '.join(plan.image_keys) or 'none'}", highlight=False)
    if plan.remote is not None:
        r = plan.remote.spec
        console.print(f"        remote: {plan.remote.url} answers (token accepted): {r.get('backend')}/"
                      f"{r.get('precision')} K={r.get('steps')} batch {r.get('batch_mode')}; "
                      f"timeout {plan.remote.timeout_s * 1e3:g} ms, fallback {plan.remote.fallback}", highlight=False)
    s = cfg.safety
    console.print(
        f"loops: servo {cfg.rates.servo_hz:g} Hz ({'process' if cfg.rates.servo_in_process else 'thread'}), "
        f"max observation age {cfg.rates.max_observation_age:g} s", highlight=False)
    console.print(
        f"safety: on stop {s.on_stop}, watchdog {s.watchdog_failed_ticks} failed ticks, ramp {s.start_ramp_time:g} s, "
        f"{s.interpolation} interpolation, join {s.join}", highlight=False)
    if plan.camera_delay or plan.command_delay:
        console.print(f"time offsets: camera {plan.camera_delay * 1e3:.1f} ms, command {plan.command_delay * 1e3:.1f} ms",
                      highlight=False)
    st = plan.settings
    console.print(f"telemetry: {st.telemetry_path or 'summary only'}; duration: {st.duration or 'until Ctrl-C'}",
                  highlight=False)
    return 0
