"""`edgedp compile CKPT --backend B --precision P --steps K --out DIR`: build (or find) a compiled sampler.

Everything that can be wrong with the request (unknown backend, precision the backend lacks, a
backend this machine cannot run, bad K) is checked before the checkpoint is even loaded, so the
answer is one line and exit 2, quickly.
"""
from __future__ import annotations

import argparse
import sys

from edgedp.errors import UserError

PROGRESS_STAGES = 7


def register(sub: argparse._SubParsersAction) -> None:
    from edgedp.config import BACKENDS, PRECISIONS, SAMPLERS

    p = sub.add_parser("compile", help="compile/quantize the denoiser for a backend and cache it",
                       description="Build a compiled sampler (backend x precision x K x device) and cache it; "
                                   "int8/fp16/bf16 builds must pass an accuracy gate against float32.")
    p.add_argument("checkpoint", help="checkpoint path (native, LeRobot pretrained_model/, original .ckpt) or preset:NAME")
    p.add_argument("--backend", required=True, help=f"one of: {', '.join(BACKENDS)}")
    p.add_argument("--precision", default="fp32", help=f"one of: {', '.join(PRECISIONS)} (default fp32)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps K (default: the checkpoint's)")
    p.add_argument("--sampler", default=None, metavar="{" + ",".join(SAMPLERS) + "}",
                   help="denoising method the loop is built for (policy.sampler; default: the checkpoint's). A run "
                        "config with policy.sampler finds this build in the cache only when it names the same one")
    p.add_argument("--timesteps", default=None, metavar="LIST|logsnr",
                   help="policy.timesteps for dpmsolver++/unipc: descending train timesteps such as 90,60,16,2, or "
                        "'logsnr' (K uniform in log-SNR)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", default=None, help="cache directory (default ~/.cache/edgedp/compiled or $EDGEDP_CACHE/compiled)")
    p.add_argument("--calib", default=None,
                   help="observations to calibrate on and gate with: an episode dataset folder (edgedp record; "
                        "episodes split into calibration and held-out halves), 'sim' (frames rendered by the "
                        "simulated scene), 'synthetic', or a .npz (feature key -> (N, n_obs, ...)); default: sim "
                        "for checkpoints whose features match the sim task, synthetic otherwise")
    p.add_argument("--max-rmse", type=float, default=None, help="gate: largest RMSE vs float32 actions (normalized units)")
    p.add_argument("--max-abs", type=float, default=None, help="gate: largest |error| vs float32 actions (normalized units)")
    p.add_argument("--gate-samples", type=int, default=4, help="held-out observations the gate compares on (default 4)")
    p.add_argument("--allow-inaccurate", action="store_true", help="cache the build even when it fails the accuracy gate")
    p.add_argument("--force", action="store_true", help="rebuild even when the cache holds a valid entry")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgedp.compile.api import check_request, compile_policy
    from edgedp.compile.quantize import DEFAULT_MAX_ABS, DEFAULT_MAX_RMSE
    from edgedp.console import make_console

    if args.gate_samples < 1:
        raise UserError(f"--gate-samples must be at least 1, got {args.gate_samples}")
    for name in ("max_rmse", "max_abs"):
        v = getattr(args, name)
        if v is not None and not v > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {v}")
    check_request(args.backend, args.precision, args.device, args.steps)
    timesteps = _check_sampler_flags(args.sampler, args.timesteps, args.steps)
    if args.sampler is not None or timesteps is not None:
        from edgedp.app import check_sampler_choice
        from edgedp.policy_loading import load_spec

        # The check edgedp run (validate) and edgedp serve make, on the checkpoint's spec: before any weights load.
        check_sampler_choice(load_spec(args.checkpoint), args.steps, args.sampler, None, None, label="--sampler",
                             timesteps=timesteps, timesteps_label="--timesteps")

    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from edgedp.policy_loading import load_policy

    console = make_console()
    policy = load_policy(args.checkpoint, steps=args.steps)
    if args.sampler is not None or timesteps is not None:
        policy.configure_sampler(args.sampler, timesteps=timesteps)  # as edgedp.app.configure_sampler does
    # transient: the bar is erased when done, so a refusal or the summary is all that stays on screen.
    with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=make_console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("starting", total=PROGRESS_STAGES)

        def progress(msg: str) -> None:
            bar.update(task, description=msg, advance=1)

        report = compile_policy(
            policy, args.backend, args.precision, args.steps, args.device, args.out, calib=args.calib,
            allow_inaccurate=args.allow_inaccurate,
            max_rmse=args.max_rmse if args.max_rmse is not None else DEFAULT_MAX_RMSE,
            max_abs=args.max_abs if args.max_abs is not None else DEFAULT_MAX_ABS,
            gate_samples=args.gate_samples, force=args.force, progress=progress)
        bar.update(task, description="done", completed=PROGRESS_STAGES)

    cs = report.sampler
    what = {"hit": "cache hit", "miss": "built", "stale": f"rebuilt (stale: {report.reason})"}[report.state]
    console.print(f"{what}: {args.backend}/{args.precision} K={cs.steps} on {cs.device} -> {report.path}")
    if report.build_s:
        console.print(f"build time {report.build_s:.1f} s; weights streamed per step {cs.weight_bytes / 1e6:.1f} MB")
    if cs.info.get("float_layers"):
        console.print(f"kept in float32 after calibration: {', '.join(cs.info['float_layers'])}")
    if report.calibration:
        console.print(f"observations: {describe_calibration(report.calibration)}")
    if report.gate is not None:
        console.print(report.gate.line())
        if not report.gate.passed:
            console.print("[yellow]accepted because of --allow-inaccurate[/]")
    return 0


def _check_sampler_flags(sampler, timesteps, steps):
    """The --sampler name and the --timesteps text, checked before the checkpoint loads; returns the parsed
    timesteps (a list, 'logsnr' or None). Whether they suit the checkpoint (its number of train steps, K) is
    edgedp.app.check_sampler_choice's question, on the checkpoint's spec."""
    from edgedp.commands.eval import _one_of, parse_timesteps
    from edgedp.config import SAMPLERS
    from models.timestep_list import descending_timesteps

    if sampler is not None:
        _one_of("sampler", sampler, SAMPLERS)
    if timesteps is None:
        return None
    parsed = parse_timesteps(timesteps)
    if isinstance(parsed, list):
        try:
            descending_timesteps(parsed)
        except ValueError as exc:
            raise UserError(f"--timesteps: {exc}") from None
        if steps is not None and steps != len(parsed):
            raise UserError(f"--timesteps: {len(parsed)} timesteps but --steps {steps} (a list sets K itself)")
    return parsed


def describe_calibration(c: dict) -> str:
    """One line saying which observations calibrated the build and which were held out for the gate."""
    src = c.get("source", "?")
    if c.get("kind") == "dataset":
        cal, held = c.get("calib_episodes", []), c.get("heldout_episodes", [])
        return (f"episode dataset {c.get('path')}: {c.get('n_calib')} windows from {len(cal)} calibration episodes, "
                f"{c.get('n_heldout')} held-out windows from {len(held)} other episodes")
    if "n_calib" in c:
        return f"{src}: {c['n_calib']} calibration, {c['n_heldout']} held-out"
    return str(src)
