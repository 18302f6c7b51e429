"""`edgedp train DATA --preset small --out DIR`: train a policy on a recorded episode dataset (CPU)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from edgedp.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a Diffusion Policy (or the regression baseline) on an episode dataset")
    p.add_argument("data", help="dataset folder: LeRobot v3.0 (what `edgedp record` writes, or your own LeRobot "
                                "data) or an old edgedp .npz set")
    p.add_argument("--image-key", default=None, help="LeRobot dataset feature that feeds the policy's image "
                                                      "(default: the only camera feature)")
    p.add_argument("--state-key", default=None, help="feature for the policy's state (default observation.state)")
    p.add_argument("--action-key", default=None, help="feature for the policy's action (default action)")
    p.add_argument("--preset", default="small", help="architecture preset (default small)")
    p.add_argument("--out", required=True, help="native checkpoint folder to write (EMA weights, replaced atomically)")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate (default 1e-4, the paper's)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default min(500, steps/10))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=500, help="write a checkpoint every N steps (0: only at the end)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared machine 2 threads measured 10x slower; raise it on an idle one)")
    p.add_argument("--max-episodes", type=int, default=None, help="train on the first N episodes only")
    p.add_argument("--regression", action="store_true",
                   help="train the MSE-regression baseline (same network; run it with K=1) instead of diffusion")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field (dotted PolicySpec key, YAML value), e.g. "
                        "--set encoder.resize_shape=[48,48] --set encoder.crop_shape=[42,42]")
    p.add_argument("--log", help="also write the loss of every step as JSON lines to this file")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from edgedp.console import make_console
    from edgedp.datasets import DatasetError
    from edgedp.datasets.episodes import open_episodes
    from edgedp.sim_task.train import TrainConfig, train
    from models.native import is_native_dir
    from models.presets import UnknownPresetError, load_preset

    for name in ("steps", "batch", "threads"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not args.lr > 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    try:
        load_preset(args.preset)
    except UnknownPresetError as exc:
        raise UserError(str(exc)) from None
    try:
        ds = open_episodes(args.data, args.image_key, args.state_key, args.action_key)
    except DatasetError as exc:
        raise UserError(str(exc)) from None
    if len(ds) == 0:
        raise UserError(f"{args.data}: the dataset has no episodes")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not is_native_dir(out):
            raise UserError(f"{out}: exists and is not a native checkpoint; refusing to replace it")
        if not args.force:
            raise UserError(f"{out}: a checkpoint already exists (--force replaces it)")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. encoder.resize_shape=[48,48]")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UserError(f"--set {item!r}: value is not valid YAML ({str(exc).splitlines()[0]})") from None
    cfg = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup, seed=args.seed,
                      save_every=args.save_every, regression=args.regression, threads=args.threads,
                      max_episodes=args.max_episodes, spec_overrides=overrides, image_key=args.image_key,
                      state_key=args.state_key, action_key=args.action_key)
    console = make_console()
    log = open(args.log, "w") if args.log else None
    smooth = [None]
    with Progress(TextColumn("[bold]training[/]"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}"), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, refresh_per_second=2) as bar:
        job = bar.add_task("steps", total=cfg.steps, loss="-", lr="-")

        def on_step(step: int, loss: float, lr: float) -> None:
            smooth[0] = loss if smooth[0] is None else 0.95 * smooth[0] + 0.05 * loss
            bar.update(job, completed=step, loss=f"{smooth[0]:.4f}", lr=f"{lr:.2e}")
            if log is not None:
                log.write(json.dumps({"step": step, "loss": round(loss, 6), "lr": lr}) + "\n")
                if step % 50 == 0:
                    log.flush()
                    if not console.is_terminal:
                        console.print(f"step {step}/{cfg.steps} loss {smooth[0]:.4f} lr {lr:.2e}")

        try:
            result = train(args.data, args.preset, out, cfg, on_step=on_step,
                           provenance={"command": "edgedp train", "dataset_episodes": len(ds)})
        except ValueError as exc:
            raise UserError(str(exc)) from None
        finally:
            if log is not None:
                log.close()
    last = result.losses[-100:]
    console.print(f"{out}: {'regression' if cfg.regression else 'diffusion'} policy, {result.steps} steps in "
                  f"{result.seconds / 60:.1f} min ({result.seconds / result.steps:.2f} s/step); "
                  f"loss first {result.losses[0]:.4f}, mean of last {len(last)} {sum(last) / len(last):.4f}")
    return 0
