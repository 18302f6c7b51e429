"""`edgedp run CONFIG`: run the policy on the robot (or its simulated twin) until the duration or Ctrl-C."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgedp.config import load_config
from edgedp.console import make_console
from edgedp.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a policy on the robot (or the simulated one) at a fixed rate",
                       description="Run the planner and the servo loop described by CONFIG. Stops at --duration "
                                   "(or the config's duration), on Ctrl-C or SIGTERM, or on an error; the arm is "
                                   "held (or torque switched off, per safety.on_stop) before exit.")
    p.add_argument("config", help="run config YAML (see examples/sim.yaml)")
    p.add_argument("--duration", type=float, default=None, help="seconds to run (overrides the config)")
    p.add_argument("--telemetry", type=Path, default=None,
                   help="write the telemetry JSON here (and a PNG timeline beside it)")
    p.add_argument("--servo-process", action="store_true", help="run the servo loop in its own process")
    p.add_argument("--no-live", action="store_true", help="no live status line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.duration is not None and not args.duration > 0:
        raise UserError(f"--duration: must be a positive number of seconds, got {args.duration}")
    cfg = load_config(args.config)
    if args.servo_process:
        cfg.rates.servo_in_process = True
    tel_path = args.telemetry if args.telemetry is not None else cfg.telemetry.path
    if tel_path is not None:
        tel_path = Path(tel_path)
        if tel_path.exists() and tel_path.is_dir():
            raise UserError(f"--telemetry: {tel_path} is a directory (give a .json file path)")
        if not tel_path.parent.exists():
            raise UserError(f"--telemetry: folder {tel_path.parent} does not exist")
    duration = args.duration if args.duration is not None else cfg.duration

    from edgedp.app import build
    from edgedp.runtime.lifecycle import Runtime

    parts = build(cfg)  # every check that can fail happens here, before any port opens
    console = make_console()
    rt = Runtime(parts, duration, tel_path, plot=cfg.telemetry.plot, live=cfg.telemetry.live and not args.no_live,
                 console=console)
    code = rt.run()
    if tel_path is not None:
        console.print(f"telemetry: {tel_path}" + (f" and {tel_path.with_suffix('.png')}" if cfg.telemetry.plot else ""))
    return code
