"""`edgedp import SRC --out DIR`: convert a LeRobot or original Diffusion Policy checkpoint to native.

The format is detected from SRC; the result is a native checkpoint directory (policy.yaml +
model.safetensors) written atomically, which loads without unpickling anything. Nothing from
SRC is executed: `.ckpt` files go through a restricted unpickler.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from edgedp.console import make_console
from edgedp.errors import UserError, one_line


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="convert a LeRobot pretrained_model/ dir or an original .ckpt to native",
                       description="Detect the checkpoint format of SRC and write it as a native checkpoint.")
    p.add_argument("src", help="LeRobot pretrained_model/ directory (or a folder holding one), or an original .ckpt")
    p.add_argument("--out", required=True, type=Path, help="native checkpoint directory to write")
    p.add_argument("--scheduler", choices=("ddpm", "ddim"), default=None,
                   help="sample with this scheduler instead of the trained one (DDIM needs no retraining)")
    p.add_argument("--steps", type=int, default=None, metavar="K", help="inference steps K (default: the checkpoint's)")
    p.add_argument("--force", action="store_true", help="replace an existing native checkpoint at --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from models.checkpoint_import import api
    from models.checkpoint_import.errors import CheckpointError
    from models.native import NativeCheckpointError

    src = Path(args.src).expanduser()
    if not src.exists():
        raise UserError(f"SRC {src}: no such file or directory")
    if api.detect(src) is None:
        raise UserError(f"SRC {src}: not a LeRobot pretrained_model directory (config.json + model.safetensors) "
                        "nor an original Diffusion Policy .ckpt file")
    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps {args.steps}: must be >= 1")
    out: Path = args.out.expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    t0 = time.perf_counter()
    try:
        dest = api.import_checkpoint(src, out, scheduler=args.scheduler, num_inference_steps=args.steps,
                                     overwrite=args.force)
    except (CheckpointError, NativeCheckpointError) as exc:
        raise UserError(one_line(exc)) from None
    except OSError as exc:  # --out cannot be written (no such folder, read-only, disk full); as init-policy says it
        raise UserError(f"--out {out}: {exc}") from None
    make_console().print(f"[bold green]imported[/] {src} -> {dest} ({api.detect(src)}, "
                         f"{time.perf_counter() - t0:.1f} s); see `edgedp info {dest}`")
    return 0


