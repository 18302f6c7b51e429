"""`edgedp serve CHECKPOINT`: run the policy on this machine for robots on the network (Ray Serve).

Everything that can be wrong with the request (backend, precision, K, checkpoint, sampler options, token) is
checked before Ray starts, so a mistake is one line and exit 2 within seconds. The server binds to loopback
unless --host says otherwise; every request must carry the shared token (docs/serve.md).
"""
from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from edgedp.errors import UserError
from edgedp.serve.client import DEFAULT_TOKEN_ENV as TOKEN_ENV  # the same variable the robot side reads


def register(sub: argparse._SubParsersAction) -> None:
    from edgedp.config import BACKENDS, PRECISIONS

    p = sub.add_parser("serve", help="serve a policy to robots over the network (Ray Serve)",
                       description="Deploy CHECKPOINT as a Ray Serve application with the same compiled sampler a "
                                   "local run uses; requests from several robots arriving within --batch-wait-ms "
                                   "are answered together. Robots point policy.remote.url at it (docs/serve.md).")
    p.add_argument("checkpoint", help="checkpoint path (native, LeRobot pretrained_model/, original .ckpt) or preset:NAME")
    p.add_argument("--backend", default="eager", help=f"one of: {', '.join(BACKENDS)} (default eager)")
    p.add_argument("--precision", default="fp32", help=f"one of: {', '.join(PRECISIONS)} (default fp32)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps K (default: the checkpoint's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--sampler", default=None, help="denoising method over the same weights (default: the checkpoint's)")
    p.add_argument("--warm-start-level", type=float, default=None,
                   help="serve robots whose config has policy.warm_start (same level as their policy.warm_start_level)")
    p.add_argument("--inpaint", choices=("replace", "guided"), default=None,
                   help="serve robots whose config has safety.join: inpaint (same as their safety.inpaint_form)")
    p.add_argument("--timesteps", default=None, metavar="LIST|logsnr",
                   help="serve robots whose config has policy.timesteps (the same list, or logsnr at the same K)")
    p.add_argument("--replicas", type=int, default=1, help="copies of the policy (default 1)")
    p.add_argument("--max-batch", type=int, default=16, help="largest batch of requests answered together (1 = no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill (default 5 ms)")
    p.add_argument("--batch-mode", choices=("auto", "stack", "loop"), default="auto",
                   help="stack: one batched sampler call; loop: one call per request; auto: stack when the compiled "
                        "sampler takes a batch (checked at start)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token-file", type=Path, default=None,
                   help=f"file whose first line is the shared token (default: the {TOKEN_ENV} environment variable, "
                        f"also read as EDGEDP_REMOTE_TOKEN)")
    p.add_argument("--cache-dir", default=None, help="compiled-sampler cache directory")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> str:
    """Every user mistake as one UserError line; returns the token."""
    from edgedp.app import check_sampler_choice
    from edgedp.compile.api import check_request
    from edgedp.policy_loading import load_spec
    from edgedp.serve.client import read_token

    for name, low in (("replicas", 1), ("max_batch", 1), ("port", 1)):
        if getattr(args, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(args, name)}")
    if args.port > 65535:
        raise UserError(f"--port must be at most 65535, got {args.port}")
    if not args.batch_wait_ms >= 0:
        raise UserError(f"--batch-wait-ms must be zero or more, got {args.batch_wait_ms}")
    if args.warm_start_level is not None and not 0 < args.warm_start_level <= 1:
        raise UserError(f"--warm-start-level must be in (0, 1], got {args.warm_start_level}")
    token = read_token(None, args.token_file, TOKEN_ENV, field="serve")
    if len(token) < 16:
        raise UserError("serve: the shared token must be at least 16 characters (e.g. python -c "
                        "\"import secrets; print(secrets.token_urlsafe(32))\")")
    check_request(args.backend, args.precision, args.device, args.steps)
    spec = load_spec(args.checkpoint)  # a missing or unreadable checkpoint is one line, before Ray starts
    if args.timesteps is not None:
        from edgedp.commands.eval import parse_timesteps

        args.timesteps = parse_timesteps(args.timesteps)
    check_sampler_choice(spec, args.steps, args.sampler, args.warm_start_level, args.inpaint, label="serve",
                         timesteps=args.timesteps, timesteps_label="--timesteps")
    from edgedp.serve.server import require_ray

    require_ray()
    return token


def run(args: argparse.Namespace) -> int:
    token = _check(args)
    from edgedp.console import make_console
    from edgedp.serve import server
    from edgedp.serve.service import ServeOptions

    console = make_console()
    opts = ServeOptions(checkpoint=args.checkpoint, backend=args.backend, precision=args.precision,
                        steps=args.steps, device=args.device, cache_dir=args.cache_dir, sampler=args.sampler,
                        warm_start_level=args.warm_start_level, inpaint=args.inpaint, timesteps=args.timesteps,
                        batch_mode=args.batch_mode)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        console.print(f"starting Ray Serve ({args.replicas} replica(s), {args.backend}/{args.precision}) ...")
        try:
            url = server.start(opts, token, host=args.host, port=args.port, replicas=args.replicas,
                               max_batch_size=args.max_batch, batch_wait_timeout_s=args.batch_wait_ms / 1000.0)
        except Exception as exc:  # a replica that cannot load the policy, a port in use
            raise UserError(f"serve: could not start: {str(exc).strip().splitlines()[-1][:300]}", exit_code=1) from None
        console.print(f"serving {args.checkpoint} at {url} (POST /predict, GET /health; token required)"
                      + ("" if args.host in ("127.0.0.1", "localhost", "::1") else " [reachable from the network]"),
                      highlight=False)
        console.print("robots: policy.remote.url: " + url + "   stop: Ctrl-C (or SIGTERM)", highlight=False)
        while not stop.wait(0.5):
            pass
        console.print("stopping: serve.shutdown, ray.shutdown ...")
    finally:
        try:
            server.stop()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
    console.print("stopped")
    return 0
