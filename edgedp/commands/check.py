"""`edgedp check CONFIG`: validate a run config and print what it describes, without touching hardware."""
from __future__ import annotations

import argparse

from edgedp.console import make_console
from rich.table import Table

from edgedp.config import PRESET_PREFIX, RunConfig, check_against_policy, load_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="validate a run config and print a summary")
    p.add_argument("config", help="run config YAML")
    p.set_defaults(func=run)


def _policy_shapes(cfg: RunConfig):
    """Shapes of the configured checkpoint, or None when the policy package cannot tell yet."""
    try:
        from edgedp.policy_loading import describe_checkpoint
    except ImportError:
        return None
    return describe_checkpoint(cfg.policy.checkpoint)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    shapes = _policy_shapes(cfg)
    if shapes is not None:
        check_against_policy(cfg, shapes["horizon"], shapes["n_obs_steps"], list(shapes.get("image_keys", [])))
    console = make_console()
    console.print(f"[bold green]OK[/] {args.config}")
    joints = Table(title=f"robot '{cfg.robot.name}' on {cfg.robot.bus.port} @ {cfg.robot.bus.baud} baud")
    for col in ("joint", "id", "model", "min rad", "max rad", "max vel", "max acc", "dir", "zero"):
        joints.add_column(col)
    for j in cfg.robot.joints:
        joints.add_row(j.name, str(j.id), j.model, f"{j.min:.3f}", f"{j.max:.3f}", f"{j.max_velocity:g}",
                       f"{j.max_acceleration:g}", str(j.direction), f"{j.zero_offset:.3f}")
    console.print(joints)
    if cfg.cameras:
        cams = Table(title="cameras")
        for col in ("name", "kind", "source", "resolution", "fps", "depth", "feeds"):
            cams.add_column(col)
        for c in cfg.cameras:
            src = c.serial or (str(c.file) if c.file else "-")
            cams.add_row(c.name, c.kind, src, f"{c.width}x{c.height}", str(c.fps), str(c.depth), c.policy_key or "-")
        console.print(cams)
    p = cfg.policy
    ck = p.checkpoint if p.checkpoint.startswith(PRESET_PREFIX) else p.checkpoint
    console.print(
        f"policy: {ck}  backend={p.backend} precision={p.precision} device={p.device} "
        f"K={p.steps or 'checkpoint'} T_a={p.n_action_steps or 'checkpoint'}"
    )
    if shapes is not None:
        console.print(
            f"        horizon={shapes['horizon']} n_obs_steps={shapes['n_obs_steps']} "
            f"images={', '.join(shapes.get('image_keys', [])) or 'none'}"
        )
    s = cfg.safety
    console.print(
        f"loops: servo {cfg.rates.servo_hz:g} Hz ({'process' if cfg.rates.servo_in_process else 'thread'}), "
        f"max observation age {cfg.rates.max_observation_age:g} s"
    )
    console.print(
        f"safety: on stop {s.on_stop}, watchdog {s.watchdog_failed_ticks} failed ticks, ramp {s.start_ramp_time:g} s, "
        f"{s.interpolation} interpolation, join {s.join}"
    )
    console.print(f"telemetry: {cfg.telemetry.path or 'summary only'}; duration: {cfg.duration or 'until Ctrl-C'}")
    return 0
