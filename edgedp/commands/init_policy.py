"""`edgedp init-policy --preset NAME --out DIR`: write a randomly initialised native checkpoint.

Useful to exercise the whole runtime (compile, loops, latency) before any training, and as the
starting point of a training run. The same seed gives the same weights.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from edgedp.console import make_console
from edgedp.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init-policy", help="write a randomly initialised native checkpoint from a preset")
    p.add_argument("--preset", required=True, help="architecture preset (see models/presets/)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint directory to create")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgedp.policy_loading import load_policy
    from models.native import NativeCheckpointError, is_native_dir, save_native

    out: Path = args.out
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a directory")
        if any(out.iterdir()) and not (args.force and is_native_dir(out)):
            hint = " (use --force to replace it)" if is_native_dir(out) else ""
            raise UserError(f"--out {out}: directory exists and is not empty{hint}")
    policy = load_policy(f"preset:{args.preset}", seed=args.seed)
    try:
        save_native(policy, out, provenance={"created_by": "edgedp init-policy", "preset": args.preset,
                                             "seed": args.seed, "weights": "random initialisation"})
    except (NativeCheckpointError, OSError) as exc:
        raise UserError(f"--out {out}: {exc}") from None

    counts = policy.parameter_counts()
    console = make_console()
    table = Table(title=f"preset '{args.preset}' (seed {args.seed}) -> {out}")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    table.add_column("MB (fp32)", justify="right")
    for part in ("obs_encoder", policy.spec.denoiser, "total"):
        table.add_row(part, f"{counts[part]:,}", f"{counts[part] * 4 / 1e6:.1f}")
    console.print(table)
    s = policy.spec
    console.print(f"images: {', '.join(f'{k} {tuple(v)}' for k, v in s.image_features.items()) or 'none'}; "
                  f"state: {', '.join(f'{k} {tuple(v)}' for k, v in s.state_features.items())}; action_dim {s.action_dim}")
    console.print(f"n_obs_steps {s.n_obs_steps}, horizon {s.horizon}, n_action_steps {s.n_action_steps}, "
                  f"K {policy.num_inference_steps} ({policy.scheduler_spec.kind})")
    return 0
