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
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--servo-process", action="store_true",
                      help="run the servo loop in its own process (the default: rates.servo_in_process: true)")
    mode.add_argument("--servo-thread", action="store_true",
                      help="run the servo loop as a thread of this process (shares the GIL with the planner: "
                           "more jitter; for debugging)")
    p.add_argument("--no-live", action="store_true", help="no live status line")
    p.add_argument("--record", type=Path, default=None, metavar="DIR",
                   help="log the run as one episode of a LeRobot v3.0 dataset in DIR (new, or one earlier runs of "
                        "the same config wrote): observations as the policy saw them, every chunk with its times, "
                        "the servo loop's commands (docs/datasets.md)")
    p.add_argument("--view", nargs="?", const="serve", default=None, metavar="TARGET",
                   help="stream camera, measured/commanded joints and chunks to rerun: 'serve' (default), a .rrd "
                        "file to save, or a rerun+http:// URL of a running viewer (needs edgedp[view])")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.duration is not None and not args.duration > 0:
        raise UserError(f"--duration: must be a positive number of seconds, got {args.duration}")
    cfg = load_config(args.config)
    if args.servo_process or args.servo_thread:
        cfg.rates.servo_in_process = bool(args.servo_process)
    if args.duration is not None:
        cfg.duration = args.duration

    from edgedp.app import assemble
    from edgedp.runtime.lifecycle import Runtime

    # every check that can fail happens here (the same edgedp.app.validate that `edgedp check` runs),
    # before any port opens
    built = assemble(cfg, telemetry_override=args.telemetry)
    st = built.settings
    console = make_console()
    from edgedp.view.observers import attach_observers

    observers = attach_observers(built.parts, cfg, args.config, args.record, args.view, console)
    rt = Runtime(built.parts, st.duration, st.telemetry_path, plot=st.plot, live=st.live and not args.no_live,
                 console=console)
    code = rt.run()
    code = observers.finish(rt.tel.servo, code)
    if st.telemetry_path is not None:
        console.print(f"telemetry: {st.telemetry_path}" + (f" and {st.telemetry_path.with_suffix('.png')}" if st.plot else ""))
    return code
